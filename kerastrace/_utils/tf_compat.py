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
- `silenced_deprecations`, `has_flops_stat`, `freeze`: the TF1 profiler's
  deprecation logging, op-statistics registry and graph freezing
  (`tensorflow.python.util.deprecation`, `tensorflow.python.framework`).
- `profiler_session_active`, `step_trace`, `xplane_pb2`: the state of the
  `tf.profiler.experimental` session (`profiler_v2._profiler`), the step
  marker of a trace (`Trace(..., _r=1)`) and the protobuf module that reads
  a trace file.
- `philox_key_counter`, `philox_normal`: the counter-based Philox stream
  behind `tf.random.stateless_normal`, addressed directly
  (`tf.raw_ops.StatelessRandomGetKeyCounterAlg`, `StatelessRandomNormalV2`),
  so a block of a long stream is drawn without drawing what precedes it.

Each behaviour relied on here has a test in `tests/utils/test_tf_compat.py`.
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
    """Whether TensorFlow's op-statistics registry counts FLOPs for `op_type` (private API).

    The registry is filled as modules load; the TF1 profiler's own additions
    (`MatMul`, `Conv2DBackpropInput`, ...) are loaded first, so the answer
    does not depend on whether the profiler ran before.
    """
    from tensorflow.python.framework import ops as tf_ops
    from tensorflow.python.profiler.internal import flops_registry  # noqa: F401

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


# ----------------------------------------------------------------- profiler


def profiler_session_active() -> bool:
    """Whether a `tf.profiler.experimental` session is running in this process (private API).

    TensorFlow keeps the running session in `profiler_v2._profiler` (None when
    stopped) and offers no public way to ask.
    """
    try:
        from tensorflow.python.profiler import profiler_v2
    except ImportError:  # pragma: no cover - other TensorFlow versions
        return False
    return getattr(profiler_v2, "_profiler", None) is not None


def step_trace(name: str, step_num: int):
    """A `tf.profiler.experimental.Trace` context that marks one step of a trace.

    `_r=1` (an underscore argument, shown only in TensorFlow's own example)
    makes the event a root "step" event, the unit of the profile plugin's step
    view; the event is recorded in the trace under `name`.
    """
    return tf.profiler.experimental.Trace(name, step_num=step_num, _r=1)


def xplane_pb2():
    """The protobuf module that parses a trace's `.xplane.pb` file (not a public module)."""
    try:
        from tensorflow.tsl.profiler.protobuf import xplane_pb2 as module
    except ImportError:  # pragma: no cover - older layouts
        from tensorflow.core.profiler.protobuf import xplane_pb2 as module
    return module


# ------------------------------------------------------------------ random


def philox_key_counter(seed):
    """`(key, counter, alg)` of the Philox stream of `tf.random.stateless_normal(..., seed)`.

    Args:
        seed: An int64 tensor of shape `(2,)`.

    Returns:
        The key `(1,)` and counter `(2,)` (uint64) and the algorithm id that
        `philox_normal` continues from; adding `n` to the counter's first word
        skips `4 * n` numbers of the stream.
    """
    return tf.raw_ops.StatelessRandomGetKeyCounterAlg(seed=seed)


def philox_normal(shape, key, counter, alg, dtype=tf.float32):
    """Standard normal numbers of the Philox stream at `(key, counter)`, of `shape` (int64 `(R,)`).

    With the key and counter of `philox_key_counter(seed)` this is exactly
    `tf.random.stateless_normal(shape, seed)`.
    """
    return tf.raw_ops.StatelessRandomNormalV2(
        shape=shape, key=key, counter=counter, alg=alg, dtype=dtype
    )
