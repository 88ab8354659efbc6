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


def silenced_deprecations():
    """A context in which TensorFlow logs no deprecation warnings (private API).

    `tf.compat.v1.profiler` calls TF1 graph utilities that log "is deprecated"
    on every use; profiling is not the user's TF1 code, so those lines are noise.
    """
    import contextlib

    try:
        from tensorflow.python.util import deprecation
    except ImportError:  # pragma: no cover - other TensorFlow versions
        return contextlib.nullcontext()
    silence = getattr(deprecation, "silence", None)
    return silence() if silence is not None else contextlib.nullcontext()


def has_flops_stat(op_type: str) -> bool:
    """Whether TensorFlow's op-statistics registry counts FLOPs for `op_type` (private API)."""
    from tensorflow.python.framework import ops as tf_ops

    try:
        tf_ops._stats_registry.lookup(op_type + ",flops")
    except LookupError:
        return False
    return True


def freeze(concrete_function):
    """Freeze a concrete function: variables become constants, op names kept (private API)."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    return convert_variables_to_constants_v2(concrete_function)
