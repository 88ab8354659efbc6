"""`profile_model`: per-layer parameters, FLOPs, memory and measured time."""

from __future__ import annotations

import collections
import logging
import numbers
import tempfile
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from kerastrace._utils import validation as v
from kerastrace.profiling import _flops, _scopes, _trace
from kerastrace.profiling.result import LayerProfile, ModelProfile

logger = logging.getLogger("kerastrace.profiling")

__all__ = ["profile_model"]


def _is_shape(x) -> bool:
    return isinstance(x, (list, tuple)) and all(
        d is None or (isinstance(d, numbers.Integral) and not isinstance(d, bool)) for d in x
    )


def _model_input_specs(model):
    """`[(shape, dtype)]` of the model's symbolic inputs, or `None` if it has none."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs:
        return None
    return [(tuple(t.shape), t.dtype) for t in tf.nest.flatten(inputs)]


def _random_input(shape, dtype, seed):
    dtype = tf.as_dtype(dtype or "float32")
    if dtype.is_floating:
        return tf.cast(tf.random.stateless_normal(shape, seed=[seed, 0]), dtype)
    if dtype.is_bool:
        return tf.ones(shape, dtype)
    return tf.zeros(shape, dtype)  # token ids / indices: 0 is always valid


def _make_inputs(model, inputs, input_shape, batch_size, seed):
    """Concrete input tensors (and their nest structure) for the profiled pass."""
    if inputs is not None:
        try:
            tensors = tf.nest.map_structure(tf.convert_to_tensor, inputs)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                "Received an invalid value for argument `inputs`, expected tensors or numpy "
                f"arrays (or a list/dict of them). Received: inputs={type(inputs).__name__} "
                f"({exc})"
            ) from exc
        flat = tf.nest.flatten(tensors)
        if not flat:
            raise v.invalid("inputs", "at least one tensor", inputs)
        if flat[0].shape.rank == 0:
            raise v.invalid("inputs", "tensors with a batch dimension", tuple(flat[0].shape))
        return tensors
    specs = _model_input_specs(model)
    if input_shape is None:
        if specs is None:
            raise ValueError(
                f"Model {model.name!r} is not built and has no known input shape. Pass "
                "`inputs=` (example tensors) or `input_shape=` (e.g. `input_shape=(128,)` "
                "for one example, or `input_shape=(1, 128)` with the batch dimension)."
            )
        shapes = [s for s, _ in specs]
        dtypes = [d for _, d in specs]
        full = []
        for s in shapes:
            rest = s[1:]
            if any(d is None for d in rest):
                raise ValueError(
                    f"Model {model.name!r} has an input of shape {s} with unknown "
                    "non-batch dimensions. Pass `input_shape=` with every dimension, e.g. "
                    f"input_shape={tuple(8 if d is None else d for d in rest)}."
                )
            full.append((batch_size, *rest) if s[0] is None else s)
    else:
        given = [tuple(input_shape)] if _is_shape(input_shape) else None
        if given is None:
            if isinstance(input_shape, (list, tuple)) and all(_is_shape(s) for s in input_shape):
                given = [tuple(s) for s in input_shape]
            else:
                raise v.invalid(
                    "input_shape", "a tuple of integers or a list of such tuples", input_shape
                )
        dtypes = [d for _, d in specs] if specs else ["float32"] * len(given)
        if specs is not None and len(specs) != len(given):
            raise ValueError(
                f"Received an invalid value for argument `input_shape`: model {model.name!r} "
                f"has {len(specs)} inputs but {len(given)} shape(s) were given. Received: "
                f"input_shape={input_shape!r}"
            )
        full = []
        for i, g in enumerate(given):
            if specs is not None:
                rank = len(specs[i][0])
                if len(g) == rank:
                    shape = g
                elif len(g) == rank - 1:
                    shape = (batch_size, *g)
                else:
                    raise ValueError(
                        f"Received an invalid value for argument `input_shape`: it does not "
                        f"fit model {model.name!r}, whose input {i} has shape "
                        f"{specs[i][0]} (rank {rank}). Received: input_shape={input_shape!r}"
                    )
            else:
                shape = (batch_size, *g)
            if shape[0] is None:
                raise ValueError(
                    "Received an invalid value for argument `input_shape`: the batch "
                    "dimension is unknown (None). Give a number, or leave the batch out and "
                    f"set `batch_size=`. Received: input_shape={input_shape!r}"
                )
            if any(d is None or d < 1 for d in shape):
                raise v.invalid("input_shape", "positive dimensions (None only for batch)",
                                input_shape)  # fmt: skip
            full.append(tuple(int(d) for d in shape))
    tensors = [_random_input(s, d, seed + i) for i, (s, d) in enumerate(zip(full, dtypes))]
    return tensors[0] if len(tensors) == 1 else tensors


def _param_stats(layer):
    seen = {}
    for w in layer.weights:
        seen.setdefault(id(w), w)
    trainable_ids = {id(w) for w in layer.trainable_weights}
    train = non = nbytes = 0
    for key, w in seen.items():
        n = int(np.prod(w.shape, dtype=np.int64))
        nbytes += n * tf.as_dtype(w.dtype).size
        if key in trainable_ids:
            train += n
        else:
            non += n
    return train, non, nbytes, set(seen)


def _reset_memory(device_name) -> bool:
    try:
        tf.config.experimental.reset_memory_stats(device_name)
    except (ValueError, tf.errors.OpError, RuntimeError):
        return False
    return True


def _peak_memory(device_name, was_reset):
    try:
        info = tf.config.experimental.get_memory_info(device_name)
    except (ValueError, tf.errors.OpError, RuntimeError) as exc:
        return None, f"not reported by {device_name}: {str(exc).splitlines()[0][:120]}"
    peak = int(info.get("peak", 0))
    if peak == 0:
        return None, f"{device_name} reported no allocation (its allocator does not track memory)"
    when = "during the profiled steps" if was_reset else "since the process started"
    return peak, f"peak allocator memory on {device_name} {when}"


def profile_model(
    model,
    inputs=None,
    input_shape: Sequence[int | None] | Sequence[Sequence[int | None]] | None = None,
    batch_size: int = 1,
    depth: int | None = None,
    trace: bool = True,
    logdir: str | None = None,
    warmup: int = 2,
    steps: int = 3,
    seed: int = 0,
) -> ModelProfile:
    """Per-layer parameters, FLOPs, activation memory and measured time of a Keras model.

    The forward pass (`training=False`) is traced into one concrete function
    while every layer's `call` records the TensorFlow name scope it opens.

    - **FLOPs**: the function is frozen and `tf.compat.v1.profiler` counts
      `float_operation` over it; ops the profiler leaves at zero are counted
      here (`Einsum` - the attention products of `keras.layers.MultiHeadAttention`
      -, activations, fused batch norm) and any compute op still without a
      count is listed in `ModelProfile.uncounted_ops`. Each op goes to the
      innermost layer whose scope holds it.
    - **Time**: `warmup` runs, then `steps` runs under a real
      `tf.profiler.experimental` trace written to `logdir/plugins/profile/`
      (TensorBoard's profile plugin opens it); op events are mapped to layers
      by their op names. If the trace fails the FLOPs/params table is still
      returned and `time_available` is False (a warning is logged).
    - **Memory**: output bytes of every layer at this batch size, parameter
      bytes, and the device's peak memory when the device reports it.

    Args:
        model: A Keras model (functional, Sequential or subclassed) or layer.
        inputs: Example inputs (array, tensor, or list/dict of them). Their
            first dimension is the batch size. Defaults to random inputs of
            `input_shape` (token-id inputs get zeros).
        input_shape: Input shape, with the batch dimension (`(1, 128)`) or
            without (`(128,)`, then `batch_size` is prepended); a list of shapes
            for multi-input models. Needed when the model has no known input.
        batch_size: Batch size used when the batch dimension is not given.
        depth: Fold layers deeper than `depth` into their ancestor (`1`: the
            model's own layers only). `None` keeps every level.
        trace: Measure time with `tf.profiler`; False skips it.
        logdir: Where the trace goes; a new temporary folder when `None`.
        warmup: Untraced runs before the trace (first-call graph optimization).
        steps: Traced runs; times are per step (mean).
        seed: Seed of the random inputs.

    Returns:
        A `ModelProfile`; `profile.layers[0]` is the model itself.

    Raises:
        ValueError: unbuilt model without `inputs`/`input_shape`, unknown batch
            dimension, a shape that does not fit the model, invalid arguments.
        TypeError: `model` is not a Keras layer/model.
        RuntimeError: a TensorFlow profiler session is already running (with
            `trace=True`).

    Example:

    >>> import keras
    >>> from kerastrace.profiling import profile_model
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="fc")])
    >>> p = profile_model(model, trace=False)
    >>> p["fc"].flops  # 2 * 1 * 8 * 4 + 1 * 4
    68
    >>> p["fc"].params, p.total_params
    (36, 36)

    References:
        - [TensorFlow profiler guide](https://www.tensorflow.org/guide/profiler)
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            "Received an invalid value for argument `model`, expected a Keras model or "
            f"layer. Received: model={type(model).__name__}"
        )
    batch_size = v.check_positive_int("batch_size", batch_size)
    depth = None if depth is None else v.check_non_negative_int("depth", depth)
    trace = v.check_bool("trace", trace)
    warmup = v.check_non_negative_int("warmup", warmup)
    steps = v.check_positive_int("steps", steps)
    if logdir is not None and not isinstance(logdir, str):
        logdir = str(logdir)
    if trace and _trace.profiler_running():
        raise _trace.busy_error()

    tensors = _make_inputs(model, inputs, input_shape, batch_size, seed)
    flat = tf.nest.flatten(tensors)
    batch = int(flat[0].shape[0])

    def forward(*flat_args):
        args = tf.nest.pack_sequence_as(tensors, list(flat_args))
        return model(args, training=False)

    # Build first (outside the recorded trace) so that the tree is complete.
    if not model.built:
        try:
            model(tensors, training=False)
        except Exception as exc:
            raise ValueError(_misfit(model, flat, exc)) from exc
    root, nodes = _scopes.build_tree(model)
    with _scopes.record_scopes(nodes):
        try:
            concrete = tf.function(forward).get_concrete_function(
                *[tf.TensorSpec(t.shape, t.dtype) for t in flat]
            )
        except Exception as exc:
            raise ValueError(_misfit(model, flat, exc)) from exc
    index = _scopes.ScopeIndex(nodes)

    # ---------------------------------------------------------------- FLOPs
    frozen = _flops.freeze(concrete)
    op_flops, uncounted, ours = _flops.graph_flops(frozen.graph)
    self_flops = collections.Counter()
    unassigned_flops = 0
    for name, f in op_flops.items():
        node = index.lookup(name)
        if node is None:
            unassigned_flops += f
        else:
            self_flops[id(node)] += f

    # ---------------------------------------------------------------- time
    self_time = collections.Counter()
    unassigned_ps = 0
    time_note = "trace=False"
    time_ok = False
    total_ps = 0
    step_ms = None
    trace_dir = None
    peak, mem_note = None, "not measured (trace=False)"
    if trace:
        logdir = logdir or tempfile.mkdtemp(prefix="kerastrace_profile_")
        op_names = {op.name for op in concrete.graph.get_operations()}
        gpus = tf.config.list_logical_devices("GPU")
        device = "GPU:0" if gpus else "CPU:0"

        def run_step():
            out = concrete(*flat)
            first = tf.nest.flatten(out)[0]
            _ = first.numpy() if hasattr(first, "numpy") else first

        try:
            for _ in range(warmup):
                run_step()
            was_reset = _reset_memory(device)
            result = _trace.capture(run_step, logdir, op_names, 0, steps)
            peak, mem_note = _peak_memory(device, was_reset)
        except _trace.ProfilerBusyError:
            raise
        except Exception as exc:  # the FLOPs/params table must survive
            logger.warning("kerastrace: the profiler trace failed, time is unavailable: %s", exc)
            time_note = f"trace failed: {type(exc).__name__}: {exc}"
        else:
            time_ok = True
            trace_dir = result.run_dir
            time_note = f"{result.source} op events, {steps} traced steps after {warmup} warm-up"
            for name, ps in result.op_time_ps.items():
                total_ps += ps
                node = index.lookup(name)
                if node is None:
                    unassigned_ps += ps
                else:
                    self_time[id(node)] += ps
            if result.step_time_ps:
                step_ms = float(np.mean(result.step_time_ps)) / 1e9

    per_step = 1e9 * steps  # ps -> ms per step

    # ---------------------------------------------------------------- rows
    total_flops = int(sum(op_flops.values()))
    total_time_ms = total_ps / per_step if time_ok else None
    rows = []
    stats = {id(n): _param_stats(n.layer) for n in nodes}

    def subtree(n):
        yield n
        for c in n.children:
            yield from subtree(c)

    for n in nodes:
        train, non, nbytes, ids = stats[id(n)]
        child_ids = set()
        for c in n.children:
            child_ids |= stats[id(c)][3]
        own = ids - child_ids
        own_count = 0
        for w in n.layer.weights:
            if id(w) in own:
                own_count += int(np.prod(w.shape, dtype=np.int64))
                own.discard(id(w))
        sub = list(subtree(n))
        t_total = sum(self_time[id(s)] for s in sub) / per_step if time_ok else None
        shape = n.output_shapes[0] if n.output_shapes else None
        rows.append(
            LayerProfile(
                path=n.path,
                class_name=type(n.layer).__name__,
                depth=n.depth,
                output_shape=shape,
                trainable_params=train,
                non_trainable_params=non,
                self_params=own_count,
                param_bytes=nbytes,
                flops=int(sum(self_flops[id(s)] for s in sub)),
                self_flops=int(self_flops[id(n)]),
                output_bytes=int(n.output_bytes),
                calls=len(n.scopes),
                time_ms=t_total,
                self_time_ms=self_time[id(n)] / per_step if time_ok else None,
                time_share=(t_total / total_time_ms) if time_ok and total_time_ms else None,
            )
        )
    root_train, root_non, root_bytes, _ = stats[id(root)]
    leaves = [n for n in nodes if not n.children]
    profile = ModelProfile(
        model_name=model.name,
        batch_size=batch,
        input_shapes=[tuple(t.shape) for t in flat],
        layers=rows,
        total_flops=total_flops,
        unassigned_flops=int(unassigned_flops),
        total_params=root_train + root_non,
        trainable_params=root_train,
        non_trainable_params=root_non,
        param_bytes=root_bytes,
        activation_bytes=int(sum(n.output_bytes for n in leaves)),
        uncounted_ops={k: len(names) for k, names in uncounted.items()},
        counted_by_kerastrace=ours,
        time_available=time_ok,
        time_note=time_note,
        total_time_ms=total_time_ms,
        unassigned_time_ms=unassigned_ps / per_step if time_ok else None,
        assigned_time_share=(1 - unassigned_ps / total_ps) if time_ok and total_ps else None,
        step_time_ms=step_ms,
        trace_dir=trace_dir,
        peak_memory_bytes=peak,
        memory_note=mem_note,
    )
    if depth is not None:
        profile = profile.fold(depth)
    return profile


def _misfit(model, flat, exc) -> str:
    shapes = [tuple(t.shape) for t in flat]
    return (
        f"The input shape(s) {shapes} do not fit model {model.name!r}: calling it failed with "
        f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}. Check `input_shape=` "
        "(with or without the batch dimension) or `inputs=`."
    )
