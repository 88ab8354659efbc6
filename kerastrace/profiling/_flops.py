"""Per-op forward FLOPs and multiply-accumulates of a traced Keras model.

The concrete function of the forward pass is frozen
(`kerastrace._utils.tf_compat.freeze`: variables become constants, control
flow is lowered to `Enter`/`Switch`/`Merge`/`Exit` frames) and
`tf.compat.v1.profiler` runs its `float_operation` view over the frozen
graph. The profiler's registry leaves some compute ops at zero; the ones
listed here (`Einsum`, element-wise ops, fused batch norm, ...) are counted by
kerastrace, and every floating-point op that still has no count is reported
with the reason, never counted as a silent zero.

Ops inside a `tf.while_loop` (an `LSTM`, a `GRU`, a loop in a custom layer)
or in a branch of a `tf.cond` appear once in the graph but run any number of
times: the frozen graph is run once on the profiled inputs
(`tf.compat.v1.Session` collecting step statistics) and each such op counts
`FLOPs per run x number of runs`. The same run fills in shapes that were
unknown when the model was traced.

Convention (the profiler's): one multiply-accumulate (MAC) = 2 FLOPs
(MatMul, BatchMatMul, convolutions, Einsum contractions: the `macs`), one FLOP
per output element for element-wise ops (softmax: 5 per element, as the
profiler counts it). Integer and boolean ops (index arithmetic, loop
counters, comparisons of integers) are not floating-point operations and
count 0.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import re

import numpy as np
import tensorflow as tf

from kerastrace._utils import tf_compat

#: Ops that move, reshape or read data: zero FLOPs by convention, never "uncounted".
ZERO_COST_OPS = frozenset(
    """Const Identity IdentityN Placeholder PlaceholderWithDefault NoOp Reshape Transpose
    ConjugateTranspose StridedSlice Slice Shape ShapeN Size Rank Pack Unpack ConcatV2 Concat
    Split SplitV ExpandDims Squeeze StopGradient Fill ZerosLike OnesLike Range GatherV2 Gather
    GatherNd ResourceGather Cast ReadVariableOp VarHandleOp Pad PadV2 MirrorPad Tile BroadcastTo
    BroadcastArgs BroadcastGradientArgs Enter RefEnter Exit RefExit Merge RefMerge Switch
    RefSwitch NextIteration RefNextIteration LoopCond ControlTrigger LogicalAnd LogicalOr
    LogicalNot PreventGradient Snapshot EnsureShape CheckNumerics Assert Print PrintV2
    DepthToSpace SpaceToDepth SpaceToBatchND BatchToSpaceND OneHot Bitcast Reverse ReverseV2
    TensorScatterUpdate ScatterNd MatrixBandPart Unique Where
    TensorListFromTensor TensorListGetItem TensorListSetItem TensorListReserve TensorListStack
    TensorListLength TensorListElementShape TensorListPushBack TensorListPopBack
    TensorListConcatV2 TensorListSplit TensorListGather TensorListScatterIntoExistingList
    TensorListResize TensorArrayV3 TensorArrayReadV3 TensorArrayWriteV3 TensorArrayGatherV3
    TensorArrayScatterV3 TensorArraySizeV3 TensorArrayConcatV3 TensorArraySplitV3""".split()
)

#: Element-wise ops the profiler registry leaves at zero: counted as 1 FLOP per output element.
ELEMENTWISE_OPS = frozenset(
    """Relu Relu6 Elu Selu LeakyRelu Sigmoid Tanh Exp Expm1 Log1p Sqrt Erf Erfc Softplus
    Softsign Abs Sign Floor Ceil Round Cos Sin Tan Atan Select SelectV2 FloorDiv FloorMod
    DivNoNan Div TruncateDiv Mod SquaredDifference Inv Rint ClipByValue Gelu Swish
    Silu HardSwish Cumsum Cumprod""".split()
)

#: Reductions the registry leaves at zero: one FLOP per input element.
REDUCE_OPS = frozenset("Max Min Prod All Any EuclideanNorm".split())

#: Multiply-accumulate ops: their FLOPs are 2 per MAC (Einsum: when it sums an index).
MAC_OPS = frozenset(
    """MatMul BatchMatMul BatchMatMulV2 BatchMatMulV3 Conv2D Conv3D DepthwiseConv2dNative
    Conv2DBackpropInput Conv3DBackpropInputV2 DepthwiseConv2dNativeBackpropInput""".split()
)

#: Op types `_extra_flops` counts (when their shapes are known).
_OURS = ELEMENTWISE_OPS | REDUCE_OPS | {"Einsum", "FusedBatchNorm", "FusedBatchNormV2",
                                        "FusedBatchNormV3"}

#: A device the graph executor runs ops on (`.../device:GPU:0`, not `.../GPU:0/stream:7`).
_EXECUTOR_DEVICE = re.compile(r"/device:[A-Za-z_]+:\d+$")

_LOOP_ENTRY = frozenset({"Enter", "RefEnter"})
_LOOP_EXIT = frozenset({"Exit", "RefExit"})
_BRANCH = frozenset({"Switch", "RefSwitch"})
_BRANCH_END = frozenset({"Merge", "RefMerge"})


@dataclasses.dataclass
class OpCount:
    """FLOPs and MACs of one op over the profiled forward pass (all its runs)."""

    flops: int
    macs: int


@dataclasses.dataclass
class Uncounted:
    """An op with floating-point work but no FLOP count, and why."""

    name: str
    type: str
    reason: str


@dataclasses.dataclass
class GraphCount:
    counts: dict  # op name -> OpCount
    uncounted: list  # Uncounted
    ours: dict  # op type -> number of ops kerastrace counted (no TF registry count)


def _registered(op_type: str) -> bool:
    return tf_compat.has_flops_stat(op_type)


def _dims(shape):
    """The dimensions of a shape as a list, or None when the rank is unknown."""
    if hasattr(shape, "rank") and shape.rank is None:
        return None
    return shape.as_list() if hasattr(shape, "as_list") else list(shape)


def _num_elements(shape) -> int | None:
    dims = _dims(shape)
    if dims is None or any(d is None for d in dims):
        return None
    return int(np.prod(dims, dtype=np.int64))


def _fully_known(op) -> bool:
    return all(_num_elements(t.shape) is not None for t in (*op.inputs, *op.outputs))


def _is_floating(op) -> bool:
    return any(t.dtype.is_floating or t.dtype.is_complex for t in (*op.inputs, *op.outputs))


def _einsum_sizes(equation: str, shapes):
    """`(sizes, summed)` of an einsum's indices, or None when they cannot be resolved."""
    if "->" not in equation:
        return None
    lhs, out = equation.replace(" ", "").split("->")
    operands = lhs.split(",")
    if len(operands) != len(shapes):
        return None
    sizes = {}
    for spec, shape in zip(operands, shapes):
        dims = list(shape)
        if "..." in spec:
            head, tail = spec.split("...")
            n_ell = len(dims) - len(head) - len(tail)
            if n_ell < 0:
                return None
            spec = head + "".join(chr(0x100 + i) for i in range(n_ell)) + tail
        if len(spec) != len(dims):
            return None
        for letter, dim in zip(spec, dims):
            if dim is None:
                return None
            sizes[letter] = max(sizes.get(letter, 1), int(dim))
    out_letters = set(out.replace("...", ""))
    summed = [c for c in sizes if c not in out_letters and ord(c[0]) < 0x100]
    return sizes, bool(summed)


def einsum_flops(equation: str, shapes) -> int | None:
    """FLOPs of an `Einsum`: 2 * product of all index sizes when something is summed.

    A contraction costs one multiply-accumulate (2 FLOPs) per term; a pure
    element-wise or outer product one multiply per output element. Returns
    `None` when the equation or the shapes cannot be resolved (ellipsis with
    unknown rank, unknown dimensions), so that the op is reported as
    uncounted rather than silently zero.

    Example:

    >>> einsum_flops("aecd,abcd->acbe", [(1, 16, 2, 8), (1, 16, 2, 8)])  # QK^T, T=16
    8192
    """
    resolved = _einsum_sizes(equation, shapes)
    if resolved is None:
        return None
    sizes, summed = resolved
    total = int(np.prod(list(sizes.values()), dtype=np.int64))
    return 2 * total if summed else total


def _einsum_shapes(op):
    shapes = []
    for x in op.inputs:
        if x.shape.rank is None:
            return None
        shapes.append(x.shape.as_list())
    return shapes


def _extra_flops(op) -> int | None:
    """Our count for an op the profiler leaves at zero, or None when we do not count it."""
    t = op.type
    if t == "Einsum":
        shapes = _einsum_shapes(op)
        return None if shapes is None else einsum_flops(op.get_attr("equation").decode(), shapes)
    if t in ELEMENTWISE_OPS and op.outputs:
        return _num_elements(op.outputs[0].shape)
    if t in REDUCE_OPS and op.inputs:
        return _num_elements(op.inputs[0].shape)
    if t in ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3") and op.outputs:
        n = _num_elements(op.outputs[0].shape)
        return None if n is None else 2 * n  # inference: x * scale' + offset'
    return None


def _is_mac(op) -> bool:
    if op.type in MAC_OPS:
        return True
    if op.type == "Einsum":
        shapes = _einsum_shapes(op)
        resolved = shapes and _einsum_sizes(op.get_attr("equation").decode(), shapes)
        return bool(resolved and resolved[1])
    return False


def freeze(concrete_function):
    """Freeze a concrete function: variables become constants (names are kept)."""
    return tf_compat.freeze(concrete_function)


def profiler_flops(graph) -> dict[str, int]:
    """Run `tf.compat.v1.profiler` float_operation over `graph`: op name -> FLOPs."""
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    # The profiler logs a deprecation warning per call, prints parsing notes
    # and writes "N ops no flops stats due to incomplete shapes" to stderr
    # (those ops are reported here, with the reason).
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), \
            tf_compat.silenced_deprecations():  # fmt: skip
        result = tf.compat.v1.profiler.profile(graph, options=opts, cmd="scope")
    flops = {}
    stack = [result]
    while stack:
        node = stack.pop()
        if node.float_ops:
            flops[node.name] = flops.get(node.name, 0) + int(node.float_ops)
        stack.extend(node.children)
    return flops


# ------------------------------------------------------------- control flow


def control_flow_ops(graph) -> set[str]:
    """Names of the ops inside a lowered `while` loop frame or `cond` branch.

    A loop frame is everything reachable from an `Enter` op before its `Exit`;
    a branch everything reachable from a `Switch` before its `Merge` (data
    and control edges both).
    """
    consumers = collections.defaultdict(list)
    for op in graph.get_operations():
        for t in op.inputs:
            consumers[t.op.name].append(op)
        for c in op.control_inputs:
            consumers[c.name].append(op)
    inside: set[str] = set()

    def spread(starts, stop):
        stack = list(starts)
        while stack:
            op = stack.pop()
            if op.name in inside:
                continue
            inside.add(op.name)
            stack.extend(c for c in consumers[op.name] if c.type not in stop)

    ops = graph.get_operations()
    spread([op for op in ops if op.type in _LOOP_ENTRY], _LOOP_EXIT)
    spread([op for op in ops if op.type in _BRANCH and op.name not in inside], _BRANCH_END)
    return inside


@dataclasses.dataclass
class _Run:
    counts: collections.Counter
    shapes: dict  # op name -> set of output-shape tuples over its runs
    error: str | None = None


def run_graph(graph, feeds: dict, fetches: list) -> _Run:
    """Run `graph` once with step statistics: how many times each op ran, with what shapes.

    Graph rewrites are switched off so that the recorded node names are the
    graph's own. Only the executors' own devices are read (one record per
    op run), not the per-stream records a GPU tracer may add.
    """
    config = tf.compat.v1.ConfigProto()
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    opt = config.graph_options.optimizer_options
    opt.opt_level = tf.compat.v1.OptimizerOptions.L0
    opt.do_constant_folding = False
    opt.do_common_subexpression_elimination = False
    opt.do_function_inlining = False
    options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.SOFTWARE_TRACE)
    meta = tf.compat.v1.RunMetadata()
    with tf.compat.v1.Session(graph=graph, config=config) as session:
        session.run(fetches, feed_dict=feeds, options=options, run_metadata=meta)
    counts = collections.Counter()
    shapes = collections.defaultdict(set)
    for dev in meta.step_stats.dev_stats:
        if not _EXECUTOR_DEVICE.search(dev.device):
            continue
        for node in dev.node_stats:
            counts[node.node_name] += 1
            if node.output:
                shapes[node.node_name].add(
                    tuple(tuple(d.size for d in o.tensor_description.shape.dim)
                          for o in node.output)  # fmt: skip
                )
    return _Run(counts, dict(shapes))


def _fill_shapes(graph, shapes) -> set[str]:
    """Set the run-time shape of outputs unknown in the graph; names of ops whose shape varied."""
    varying = set()
    for op in graph.get_operations():
        if all(_num_elements(t.shape) is not None for t in op.outputs):
            continue
        seen = shapes.get(op.name)
        if not seen:
            continue
        if len(seen) > 1:
            varying.add(op.name)
            continue
        (observed,) = seen
        if len(observed) != len(op.outputs):
            continue
        for t, dims in zip(op.outputs, observed):
            with contextlib.suppress(ValueError):
                t.set_shape(t.shape.merge_with(tf.TensorShape(list(dims))))
    return varying


# ------------------------------------------------------------------ count


def _import(frozen):
    """The frozen function's graph as a plain `tf.Graph` (names kept), inputs, outputs."""
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(frozen.graph.as_graph_def(), name="")
    inputs = [graph.get_tensor_by_name(t.name) for t in frozen.inputs]
    outputs = [graph.get_tensor_by_name(t.name) for t in frozen.outputs]
    return graph, inputs, outputs


def _needs_run(graph, in_flow) -> bool:
    if in_flow:
        return True
    return any(
        op.type not in ZERO_COST_OPS and _is_floating(op) and not _fully_known(op)
        for op in graph.get_operations()
    )


def _per_run(op, static):
    """`(flops per run, ours, reason)`: reason is set when there is no count."""
    if op.name in static:
        return static[op.name], False, None
    extra = _extra_flops(op)
    if extra is not None:
        return int(extra), True, None
    registered = _registered(op.type)
    if registered and _fully_known(op):
        return 0, False, None  # a legitimate 0 (e.g. an empty tensor)
    if registered or op.type in _OURS:
        return None, False, "a shape is unknown in the traced graph (dynamic shape)"
    return None, False, (
        f"no FLOP formula for {op.type} (neither TensorFlow's op registry nor kerastrace "
        "counts it)"
    )


def count_graph(frozen, feeds) -> GraphCount:
    """FLOPs and MACs of every op of a frozen forward function, fed `feeds` (flat tensors).

    Returns:
        A `GraphCount`: op name -> `OpCount` for every op with a count, the
        floating-point ops without one (`Uncounted`, with the reason), and op
        type -> number of ops counted by kerastrace rather than the registry.
    """
    graph, inputs, outputs = _import(frozen)
    in_flow = control_flow_ops(graph)
    run, varying = None, set()
    if _needs_run(graph, in_flow):
        try:
            run = run_graph(
                graph,
                {t: np.asarray(x) for t, x in zip(inputs, feeds)},
                outputs,
            )
        except Exception as exc:  # counting must never break the profile
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            run = _Run(collections.Counter(), {}, f"{type(exc).__name__}: {first}")
        if run.error is None:
            varying = _fill_shapes(graph, run.shapes)
    static = profiler_flops(graph)
    counts, uncounted, ours = {}, [], collections.Counter()
    for op in graph.get_operations():
        if op.type in ZERO_COST_OPS or not _is_floating(op):
            continue
        per_run, is_ours, reason = _per_run(op, static)
        failed = run is not None and run.error is not None
        if op.name in in_flow and failed:
            reason = (
                "inside a while loop or cond, and running the graph to count how often it "
                f"runs failed ({run.error})"
            )
        elif op.name in varying:
            reason = "inside a loop, its shape changes from one iteration to the next"
        elif reason is not None and failed:
            reason += f", and running the graph to find it failed ({run.error})"
        elif reason is not None and run is not None and op.name not in run.counts:
            reason += "; it did not run on the profiled inputs"
        if reason is not None:
            uncounted.append(Uncounted(op.name, op.type, reason))
            continue
        runs = run.counts.get(op.name, 0) if op.name in in_flow else 1
        flops = per_run * runs
        counts[op.name] = OpCount(flops, flops // 2 if _is_mac(op) else 0)
        if is_ours:
            ours[op.type] += 1
    return GraphCount(counts, uncounted, dict(ours))
