"""Every use of TensorFlow behaviour that is private or easy to trip over, in one place.

- `function`: `tf.function` keyed per instance for TensorFlow's retracing
  detector. TensorFlow counts traces by the Python function's code object,
  so the compiled functions that kerastrace builds per model (one closure
  per model, same code) look like one function retracing, and TensorFlow
  logs "N out of the last N calls ... triggered tf.function retracing" after
  a handful of models. Wrapping the closure in `functools.partial` (no
  `__code__`) makes the detector key on the instance instead.
- `call_compiled`: calls a concrete function through its private
  `_call_flat` entry point (skips Python argument binding), with a public
  fallback.
"""

from __future__ import annotations

import functools
import weakref

import tensorflow as tf


def function(fn, **kwargs):
    """`tf.function(fn, **kwargs)` that TensorFlow's retracing detector counts per instance."""
    return tf.function(functools.partial(fn), **kwargs)


_CONCRETE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def concrete(fn):
    """The single concrete function of a `tf.function` that has an input signature."""
    cf = _CONCRETE.get(fn)
    if cf is None:
        cf = _CONCRETE[fn] = fn.get_concrete_function()
    return cf


def call_compiled(fn, tensors):
    """Call the compiled `fn` (a `tf.function` with an input signature) on a flat list.

    The concrete function is called with its flat arguments, which skips the
    Python argument binding of a regular call: about 0.3 ms for the dozen
    arguments of the gradient engine, which is several percent of a small
    model's whole attribution. Falls back to a regular call where TensorFlow
    has no such entry point (private API: `ConcreteFunction._call_flat`).
    """
    cf = concrete(fn)
    call_flat = getattr(cf, "_call_flat", None)
    if call_flat is None:  # pragma: no cover - other TensorFlow versions
        return cf(*tensors)
    return call_flat(list(tensors), cf.captured_inputs)
