"""`profile_model`: per-layer parameters, FLOPs, memory and measured time."""

from __future__ import annotations

import collections
import dataclasses
import logging
import numbers
import re
import tempfile
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from kerastrace._utils import instrument, tf_compat
from kerastrace._utils import validation as v
from kerastrace.profiling import _flops, _scopes, _trace
from kerastrace.profiling.result import LayerProfile, ModelProfile

logger = logging.getLogger("kerastrace.profiling")

__all__ = ["profile_model"]


def _is_shape(x) -> bool:
    return isinstance(x, (list, tuple)) and all(
        d is None or (isinstance(d, numbers.Integral) and not isinstance(d, bool)) for d in x
    )


@dataclasses.dataclass
class _Spec:
    """One model input: its name, shape (batch included) and dtype."""

    name: str | None
    shape: tuple
    dtype: tf.DType | None = None


def _model_specs(model):
    """`(specs, is_dict)`: one `_Spec` per symbolic input, or `(None, False)` if none.

    A dict of inputs (keras-hub) keeps the model's own key order
    (`instrument.input_specs`); other models list `model.inputs` in order.
    """
    specs = instrument.input_specs(model)
    if isinstance(specs, dict):
        return [_Spec(k, tuple(t.shape), t.dtype) for k, t in specs.items()], True
    try:
        flat = tf.nest.flatten(model.inputs)
        if not flat:
            return None, False
        return [_Spec(getattr(t, "name", None), tuple(t.shape), tf.as_dtype(t.dtype))
                for t in flat], False  # fmt: skip
    except (AttributeError, TypeError, ValueError):
        return None, False


def _random_input(spec: _Spec, seed: int):
    """Gaussian floats; ones for booleans and `*mask*` inputs; zeros for other integers."""
    dtype = spec.dtype or tf.float32
    if dtype.is_floating:
        return tf.cast(tf.random.stateless_normal(spec.shape, seed=[seed, 0]), dtype)
    if dtype.is_bool or "mask" in (spec.name or ""):
        return tf.ones(spec.shape, dtype)  # keras-hub `padding_mask`: every token is real
    return tf.zeros(spec.shape, dtype)  # token ids / indices: 0 is always valid


def _convert_inputs(inputs):
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


def _given_shapes(model, specs, input_shape):
    """`input_shape` as a list aligned with `specs` (None: not given), plus the names."""
    if _is_shape(input_shape):
        given, names = [tuple(input_shape)], None
    elif isinstance(input_shape, dict) and input_shape:
        bad = {k: s for k, s in input_shape.items() if not _is_shape(s)}
        if bad or not all(isinstance(k, str) for k in input_shape):
            raise v.invalid(
                "input_shape", "a dict of input names to tuples of integers", input_shape
            )
        if specs is None:
            return [tuple(s) for s in input_shape.values()], list(input_shape)
        names = [s.name for s in specs]
        unknown = [k for k in input_shape if k not in names]
        if unknown:
            raise ValueError(
                f"Received an invalid value for argument `input_shape`: model {model.name!r} "
                f"has no input named {unknown[0]!r}; its inputs are {names}. Received: "
                f"input_shape={input_shape!r}"
            )
        given = [tuple(input_shape[n]) if n in input_shape else None for n in names]
    elif (isinstance(input_shape, (list, tuple)) and input_shape
          and all(_is_shape(s) for s in input_shape)):  # fmt: skip
        given, names = [tuple(s) for s in input_shape], None
    else:
        raise v.invalid(
            "input_shape",
            "a tuple of integers, a list of such tuples (one per input) or a dict of input "
            "names to tuples",
            input_shape,
        )
    if specs is not None and len(given) != len(specs):
        raise ValueError(
            f"Received an invalid value for argument `input_shape`: model {model.name!r} "
            f"has {len(specs)} inputs ({[s.name for s in specs]}) but {len(given)} shape(s) "
            f"were given. Received: input_shape={input_shape!r}"
        )
    return given, names


def _full_shape(model, spec, given, batch_size, input_shape):
    """The concrete shape (batch included) of one input."""
    label = f"input {spec.name!r}" if spec.name else "its input"
    if given is None:  # not given: the model's own shape, batch filled in
        shape = spec.shape
        if shape[0] is None:
            shape = (batch_size, *shape[1:])
        if any(d is None for d in shape):
            example = tuple(8 if d is None else d for d in spec.shape[1:])
            hint = (f"input_shape={{{spec.name!r}: {example}, ...}}" if spec.name
                    else f"input_shape={example}")  # fmt: skip
            raise ValueError(
                f"Model {model.name!r} has {label} of shape {spec.shape} with unknown "
                f"non-batch dimensions. Pass `input_shape=` with every dimension, e.g. {hint}."
            )
        return tuple(int(d) for d in shape)
    if spec.shape is None:
        shape = (batch_size, *given)
    else:
        rank = len(spec.shape)
        if len(given) == rank:
            shape = given
        elif len(given) == rank - 1:
            shape = (batch_size, *given)
        else:
            raise ValueError(
                f"Received an invalid value for argument `input_shape`: it does not fit "
                f"model {model.name!r}, whose {label} has shape {spec.shape} (rank {rank}). "
                f"Received: input_shape={input_shape!r}"
            )
    if shape[0] is None:
        raise ValueError(
            "Received an invalid value for argument `input_shape`: the batch dimension is "
            "unknown (None). Give a number, or leave the batch out and set `batch_size=`. "
            f"Received: input_shape={input_shape!r}"
        )
    if any(d is None or d < 1 for d in shape):
        raise v.invalid("input_shape", "positive dimensions (None only for batch)", input_shape)
    return tuple(int(d) for d in shape)


def _as_dtype(value, input_dtype):
    try:
        return tf.as_dtype(value)
    except TypeError:
        raise v.invalid(
            "input_dtype", "a dtype such as 'float32' or 'int32' (or a list/dict of them)",
            input_dtype,
        ) from None


def _given_dtypes(model, specs, input_dtype):
    """One dtype per spec (None: the model's own, else float32)."""
    if input_dtype is None:
        return [s.dtype for s in specs]
    if isinstance(input_dtype, dict):
        names = [s.name for s in specs]
        unknown = [k for k in input_dtype if k not in names]
        if unknown:
            raise ValueError(
                f"Received an invalid value for argument `input_dtype`: model {model.name!r} "
                f"has no input named {unknown[0]!r}; its inputs are {names}. Received: "
                f"input_dtype={input_dtype!r}"
            )
        return [_as_dtype(input_dtype[s.name], input_dtype) if s.name in input_dtype
                else s.dtype for s in specs]  # fmt: skip
    if isinstance(input_dtype, (list, tuple)):
        if len(input_dtype) != len(specs):
            raise ValueError(
                f"Received an invalid value for argument `input_dtype`: model {model.name!r} "
                f"has {len(specs)} inputs but {len(input_dtype)} dtype(s) were given. "
                f"Received: input_dtype={input_dtype!r}"
            )
        return [_as_dtype(d, input_dtype) for d in input_dtype]
    return [_as_dtype(input_dtype, input_dtype)] * len(specs)


def _make_inputs(model, inputs, input_shape, input_dtype, batch_size, seed):
    """Concrete input tensors (in the structure the model takes) for the profiled pass."""
    if inputs is not None:
        if input_shape is not None or input_dtype is not None:
            raise ValueError(
                "Received incompatible arguments: `inputs` already fixes the shapes and "
                "dtypes; pass either `inputs` or `input_shape`/`input_dtype`. Received: "
                f"input_shape={input_shape!r}, input_dtype={input_dtype!r}"
            )
        return _convert_inputs(inputs)
    specs, is_dict = _model_specs(model)
    if input_shape is None:
        if specs is None:
            raise ValueError(
                f"Model {model.name!r} is not built and has no known input shape. Pass "
                "`inputs=` (example tensors) or `input_shape=` (e.g. `input_shape=(128,)` "
                "for one example, or `input_shape=(1, 128)` with the batch dimension)."
            )
        given = [None] * len(specs)
    else:
        given, names = _given_shapes(model, specs, input_shape)
        if specs is None:  # an unbuilt model: the structure of `input_shape` decides
            is_dict = names is not None
            specs = [_Spec(n, None) for n in (names or [None] * len(given))]
    dtypes = _given_dtypes(model, specs, input_dtype)
    full = [
        _Spec(s.name, _full_shape(model, s, g, batch_size, input_shape), d)
        for s, g, d in zip(specs, given, dtypes)
    ]
    tensors = [_random_input(s, seed + i) for i, s in enumerate(full)]
    if is_dict:
        return {s.name: t for s, t in zip(full, tensors)}
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
    return train, non, nbytes


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
    input_shape: Sequence[int | None] | Sequence[Sequence[int | None]] | dict | None = None,
    batch_size: int = 1,
    depth: int | None = None,
    trace: bool = True,
    logdir: str | None = None,
    warmup: int = 2,
    steps: int = 3,
    seed: int = 0,
    input_dtype=None,
) -> ModelProfile:
    """Per-layer parameters, FLOPs, activation memory and measured time of a Keras model.

    The forward pass (`training=False`) is traced into one concrete function
    while every layer's calls are intercepted (`kerastrace._utils.instrument`)
    to record the TensorFlow name scope each one opens.

    - **Rows**: one per layer, named by the package's one path scheme (layer
      names joined by `/`, without the model's name, e.g. `"blk/attention"`);
      a layer shared by several parents is one row, at its first path. The
      first row is the model itself, with path `""` (its `name` is the
      model's name).
    - **FLOPs and MACs**: the function is frozen and `tf.compat.v1.profiler`
      counts `float_operation` over it; ops the profiler leaves at zero are
      counted here (`Einsum` - the attention products of
      `keras.layers.MultiHeadAttention` -, activations, fused batch norm,
      `cumsum`). `flops` counts every floating-point operation, one
      multiply-accumulate = 2 FLOPs; `macs` counts the multiply-accumulates
      of MatMul, BatchMatMul, convolutions and Einsum contractions only (the
      "multiply-adds" of published model figures); `elementwise_flops` is
      the rest (`flops = 2 * macs + elementwise_flops`). Each op goes to the
      innermost layer whose scope holds it.
    - **Loops and uncounted ops**: ops inside a `tf.while_loop` (`LSTM`,
      `GRU`, loops of custom layers) or a `tf.cond` branch count once per
      run: the frozen graph is run once on the inputs to count the runs
      (which also resolves shapes unknown at trace time). Every
      floating-point op still without a count (no FLOP formula, a shape
      that changes between loop iterations, ...) is left out of the totals
      and listed in `ModelProfile.uncounted_details` with the reason; the
      rows that hold one are marked in the table. Parameters and time do
      not depend on FLOP counting and are always reported.
    - **Time**: `warmup` runs, then `steps` runs under a real
      `tf.profiler.experimental` trace written to `logdir/plugins/profile/`
      (TensorBoard's profile plugin opens it); op events are mapped to layers
      by their op names. If the trace fails the FLOPs/params table is still
      returned and `time_available` is False (a warning is logged).
    - **Memory**: output bytes of every layer at this batch size, parameter
      bytes, and the device's peak memory when the device reports it.

    Args:
        model: A Keras model (functional, Sequential or subclassed) or layer.
        inputs: Example inputs (array, tensor, or list/dict of them, e.g. a
            keras-hub `{"token_ids": ..., "padding_mask": ...}` dict). Their
            first dimension is the batch size. Defaults to random inputs of
            `input_shape`: Gaussian floats, ones for boolean inputs and for
            integer inputs named like a mask (`padding_mask`), zeros for
            other integer inputs (token ids).
        input_shape: Input shape, with the batch dimension (`(1, 128)`) or
            without (`(128,)`, then `batch_size` is prepended). For models
            with several inputs, a list of shapes (one per input, in the
            model's order) or a dict `{input_name: shape}` (keras-hub models:
            `{"token_ids": (1, 128), ...}`; inputs left out keep the model's
            own shape, which must then be fully known). Needed when the model
            has no known input or an input with unknown non-batch dimensions.
        batch_size: Batch size used when the batch dimension is not given.
        depth: Fold layers deeper than `depth` into their ancestor (`1`: the
            model's own layers only). `None` keeps every level.
        trace: Measure time with `tf.profiler`; False skips it.
        logdir: Where the trace goes; a new temporary folder when `None`.
        warmup: Untraced runs before the trace (first-call graph optimization).
        steps: Traced runs; times are per step (mean).
        seed: Seed of the random inputs.
        input_dtype: Dtype(s) of the generated inputs: one dtype for every
            input, a list (one per input) or a dict by input name. Defaults to
            the model's input dtypes (`"float32"` for a model without inputs).

    Returns:
        A `ModelProfile`; `profile.layers[0]` is the model itself.

    Raises:
        ValueError: unbuilt model without `inputs`/`input_shape`, unknown batch
            dimension, a shape that does not fit the model, `inputs` together
            with `input_shape`, invalid arguments.
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
    >>> p["fc"].macs, p["fc"].elementwise_flops  # the matmul; the bias add
    (32, 4)
    >>> p["fc"].params, p.total_params
    (36, 36)
    >>> [row.path for row in p.layers], p.layers[0].name == model.name
    (['', 'fc'], True)

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

    tensors = _make_inputs(model, inputs, input_shape, input_dtype, batch_size, seed)
    root, nodes, concrete = _trace_forward(model, tensors)
    index = _scopes.ScopeIndex(nodes)
    flops = _count_flops(concrete, index, root, tensors)
    timing = _measure_time(concrete, tensors, index, logdir, warmup, steps) if trace else None
    profile = _assemble(model, tensors, root, nodes, flops, timing, steps)
    if depth is not None:
        profile = profile.fold(depth)
    return profile


# ------------------------------------------------------------------ trace


def _trace_forward(model, tensors):
    """Trace the forward pass once while recording every layer call's name scope."""
    flat = tf.nest.flatten(tensors)

    def forward(*flat_args):
        args = tf.nest.pack_sequence_as(tensors, list(flat_args))
        return model(args, training=False)

    # Build first (outside the recorded trace) so that the tree is complete.
    if not model.built:
        try:
            model(tensors, training=False)
        except Exception as exc:
            raise ValueError(_misfit(model, tensors, exc)) from exc
    root, nodes = _scopes.build_tree(model)
    with _scopes.record_scopes(nodes):
        try:
            concrete = tf_compat.function(forward).get_concrete_function(
                *[tf.TensorSpec(t.shape, t.dtype) for t in flat]
            )
        except Exception as exc:
            raise ValueError(_misfit(model, tensors, exc)) from exc
    return root, nodes, concrete


@dataclasses.dataclass
class _Flops:
    total: int
    total_macs: int
    unassigned: int
    unassigned_macs: int
    per_node: collections.Counter
    macs_per_node: collections.Counter
    uncounted_per_node: collections.Counter
    uncounted: list  # dicts: name, type, layer, reason
    ours: dict


def _count_flops(concrete, index, root, tensors) -> _Flops:
    """FLOPs and MACs per layer; when counting fails, none, and the reason in `uncounted`."""
    out = _Flops(0, 0, 0, 0, collections.Counter(), collections.Counter(),
                 collections.Counter(), [], {})  # fmt: skip
    try:
        counted = _flops.count_graph(_flops.freeze(concrete), tf.nest.flatten(tensors))
    except Exception as exc:  # parameters, memory and time must survive
        reason = f"counting FLOPs failed: {_reason(exc)}"
        logger.warning("kerastrace: %s; FLOPs and MACs are unavailable", reason)
        out.uncounted.append({"name": None, "type": "(all ops)", "layer": "", "reason": reason})
        out.uncounted_per_node[id(root)] += 1
        return out
    out.ours = counted.ours
    for name, c in counted.counts.items():
        out.total += c.flops
        out.total_macs += c.macs
        node = index.lookup(name)
        if node is None:
            out.unassigned += c.flops
            out.unassigned_macs += c.macs
        else:
            out.per_node[id(node)] += c.flops
            out.macs_per_node[id(node)] += c.macs
    for u in counted.uncounted:
        node = index.lookup(u.name)
        if node is not None:
            out.uncounted_per_node[id(node)] += 1
        layer = None if node is None else node.path
        out.uncounted.append({"name": u.name, "type": u.type, "layer": layer, "reason": u.reason})
    return out


@dataclasses.dataclass
class _Timing:
    ok: bool = False
    note: str = "trace=False"
    total_ps: int = 0
    unassigned_ps: int = 0
    per_node: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    step_ms: float | None = None
    trace_dir: str | None = None
    peak: int | None = None
    mem_note: str = "not measured (trace=False)"


def _measure_time(concrete, tensors, index, logdir, warmup, steps) -> _Timing:
    """Warm up, then trace `steps` runs and assign op time to layers."""
    timing = _Timing()
    flat = tf.nest.flatten(tensors)
    logdir = logdir or tempfile.mkdtemp(prefix="kerastrace_profile_")
    op_names = {op.name for op in concrete.graph.get_operations()}
    device = "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"

    def run_step():
        out = concrete(*flat)
        first = tf.nest.flatten(out)[0]
        _ = first.numpy() if hasattr(first, "numpy") else first

    try:
        for _ in range(warmup):
            run_step()
        was_reset = _reset_memory(device)
        result = _trace.capture(run_step, logdir, op_names, 0, steps)
        timing.peak, timing.mem_note = _peak_memory(device, was_reset)
    except _trace.ProfilerBusyError:
        raise
    except Exception as exc:  # the FLOPs/params table must survive
        logger.warning("kerastrace: the profiler trace failed, time is unavailable: %s", exc)
        timing.note = f"trace failed: {type(exc).__name__}: {exc}"
        return timing
    timing.ok = True
    timing.trace_dir = result.run_dir
    timing.note = f"{result.source} op events, {steps} traced steps after {warmup} warm-up"
    for name, ps in result.op_time_ps.items():
        timing.total_ps += ps
        node = index.lookup(name)
        if node is None:
            timing.unassigned_ps += ps
        else:
            timing.per_node[id(node)] += ps
    if result.step_time_ps:
        timing.step_ms = float(np.mean(result.step_time_ps)) / 1e9
    return timing


# ------------------------------------------------------------------- rows


def _own_params(nodes) -> dict:
    """`{id(node): parameters owned by the node's layer itself}`, each weight counted once.

    A weight is owned by the deepest layer that holds it (`instrument.own_weights`:
    a layer's weights minus its sublayers'), and a weight reachable from two
    layers (a shared layer under two parents, a tied variable) is counted at
    the first of them in model order.
    """
    counted: set = set()
    out = {}
    for n in nodes:
        own = 0
        for w in instrument.own_weights(n.layer):
            if id(w) not in counted:
                counted.add(id(w))
                own += int(np.prod(w.shape, dtype=np.int64))
        out[id(n)] = own
    return out


def _subtree(n):
    yield n
    for c in n.children:
        yield from _subtree(c)


def _assemble(model, tensors, root, nodes, flops, timing, steps) -> ModelProfile:
    timing = timing or _Timing()
    time_ok = timing.ok
    per_step = 1e9 * steps  # ps -> ms per step
    total_time_ms = timing.total_ps / per_step if time_ok else None
    stats = {id(n): _param_stats(n.layer) for n in nodes}
    own = _own_params(nodes)
    rows = []
    for n in nodes:
        train, non, nbytes = stats[id(n)]
        sub = list(_subtree(n))
        t_total = sum(timing.per_node[id(s)] for s in sub) / per_step if time_ok else None
        rows.append(
            LayerProfile(
                path=n.path,
                name=n.layer.name,
                class_name=type(n.layer).__name__,
                depth=n.depth,
                output_shape=n.output_shapes[0] if n.output_shapes else None,
                trainable_params=train,
                non_trainable_params=non,
                self_params=own[id(n)],
                param_bytes=nbytes,
                flops=int(sum(flops.per_node[id(s)] for s in sub)),
                self_flops=int(flops.per_node[id(n)]),
                macs=int(sum(flops.macs_per_node[id(s)] for s in sub)),
                self_macs=int(flops.macs_per_node[id(n)]),
                uncounted_ops=int(sum(flops.uncounted_per_node[id(s)] for s in sub)),
                output_bytes=int(n.output_bytes),
                calls=len(n.scopes),
                time_ms=t_total,
                self_time_ms=timing.per_node[id(n)] / per_step if time_ok else None,
                time_share=(t_total / total_time_ms) if time_ok and total_time_ms else None,
            )
        )
    root_train, root_non, root_bytes = stats[id(root)]
    leaves = [n for n in nodes if not n.children]
    shapes = tf.nest.map_structure(lambda t: tuple(t.shape), tensors)
    if not isinstance(tensors, dict):
        shapes = list(shapes) if isinstance(tensors, (list, tuple)) else [shapes]
    return ModelProfile(
        model_name=model.name,
        batch_size=int(tf.nest.flatten(tensors)[0].shape[0]),
        input_shapes=shapes,
        layers=rows,
        total_flops=flops.total,
        unassigned_flops=flops.unassigned,
        total_macs=flops.total_macs,
        unassigned_macs=flops.unassigned_macs,
        total_params=root_train + root_non,
        trainable_params=root_train,
        non_trainable_params=root_non,
        param_bytes=root_bytes,
        activation_bytes=int(sum(n.output_bytes for n in leaves)),
        uncounted_ops=dict(collections.Counter(u["type"] for u in flops.uncounted)),
        uncounted_details=flops.uncounted,
        counted_by_kerastrace=flops.ours,
        time_available=time_ok,
        time_note=timing.note,
        total_time_ms=total_time_ms,
        unassigned_time_ms=timing.unassigned_ps / per_step if time_ok else None,
        assigned_time_share=(1 - timing.unassigned_ps / timing.total_ps)
        if time_ok and timing.total_ps else None,
        step_time_ms=timing.step_ms,
        trace_dir=timing.trace_dir,
        peak_memory_bytes=timing.peak,
        memory_note=timing.mem_note,
    )


def _reason(exc) -> str:
    """The informative line of an error (a `tf.function` error ends with the real one)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0] == "in user code:":
        raised = [line for line in lines if re.match(r"^\w+(Error|Exception): ", line)]
        if raised:
            return raised[-1][:300]
    return f"{type(exc).__name__}: {lines[0][:300]}"


def _misfit(model, tensors, exc) -> str:
    shapes = tf.nest.map_structure(lambda t: tuple(t.shape), tensors)
    reason = _reason(exc).rstrip(".")
    return (
        f"The input shape(s) {shapes} do not fit model {model.name!r}: calling it failed with "
        f"{reason}. Check `input_shape=` (with or without the batch dimension) or "
        "`inputs=`."
    )
