"""Per-op forward FLOPs of a traced Keras model.

The concrete function of the forward pass is frozen
(`convert_variables_to_constants_v2`) and `tf.compat.v1.profiler` runs its
`float_operation` view over the frozen graph. The profiler's registry leaves
some compute ops at zero; the ones listed in `_EXTRA` are counted here, and
every op of another type that still has no count is reported.

Convention (the profiler's): one multiply-add = 2 FLOPs (MatMul, Conv2D,
BatchMatMul, Einsum), one FLOP per output element for element-wise ops
(softmax: 5 per element, as the profiler counts it).
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging

import numpy as np
import tensorflow as tf

from kerastrace._utils import tf_compat

logger = logging.getLogger("kerastrace.profiling")

#: Ops that move, reshape or read data: zero FLOPs by convention, never "uncounted".
ZERO_COST_OPS = frozenset(
    """Const Identity IdentityN Placeholder PlaceholderWithDefault NoOp Reshape Transpose
    ConjugateTranspose StridedSlice Slice Shape ShapeN Size Rank Pack Unpack ConcatV2 Concat
    Split SplitV ExpandDims Squeeze StopGradient Fill ZerosLike OnesLike Range GatherV2 Gather
    GatherNd ResourceGather Cast ReadVariableOp VarHandleOp Pad PadV2 MirrorPad Tile BroadcastTo
    BroadcastArgs BroadcastGradientArgs Enter Exit Merge Switch NextIteration LoopCond
    LogicalAnd LogicalOr LogicalNot PreventGradient Snapshot EnsureShape CheckNumerics Assert
    DepthToSpace SpaceToDepth SpaceToBatchND BatchToSpaceND OneHot Bitcast Reverse ReverseV2
    TensorScatterUpdate ScatterNd MatrixBandPart Unique Where Cumsum""".split()
)

#: Element-wise ops the profiler registry leaves at zero: counted as 1 FLOP per output element.
ELEMENTWISE_OPS = frozenset(
    """Relu Relu6 Elu Selu LeakyRelu Sigmoid Tanh Exp Expm1 Log1p Sqrt Erf Erfc Softplus
    Softsign Abs Sign Floor Ceil Round Cos Sin Tan Atan Select SelectV2 FloorDiv FloorMod
    DivNoNan Div TruncateDiv Mod SquaredDifference Inv Rint ClipByValue Gelu Swish
    Silu HardSwish""".split()
)

#: Reductions the registry leaves at zero: one FLOP per input element.
REDUCE_OPS = frozenset("Max Min Prod All Any EuclideanNorm".split())


def _registered(op_type: str) -> bool:
    return tf_compat.has_flops_stat(op_type)


def _num_elements(shape) -> int | None:
    dims = shape.as_list() if hasattr(shape, "as_list") else list(shape)
    if dims is None or any(d is None for d in dims):
        return None
    return int(np.prod(dims, dtype=np.int64))


def einsum_flops(equation: str, shapes) -> int | None:
    """FLOPs of an `Einsum`: 2 * product of all index sizes when something is summed.

    Returns `None` when the equation or the shapes cannot be resolved (ellipsis
    with unknown rank, unknown dimensions), so that the op is reported as
    uncounted rather than silently zero.

    Example:

    >>> einsum_flops("aecd,abcd->acbe", [(1, 16, 2, 8), (1, 16, 2, 8)])  # QK^T, T=16
    8192
    """
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
    total = int(np.prod(list(sizes.values()), dtype=np.int64))
    # A contraction costs one multiply-add (2 FLOPs) per term; a pure
    # element-wise/outer product one multiply per output element.
    return 2 * total if summed else total


def _extra_flops(op) -> int | None:
    """Our count for an op the profiler leaves at zero, or None when we do not count it."""
    t = op.type
    if t == "Einsum":
        shapes = []
        for x in op.inputs:
            if x.shape.rank is None:
                return None
            shapes.append(x.shape.as_list())
        return einsum_flops(op.get_attr("equation").decode(), shapes)
    if t in ELEMENTWISE_OPS and op.outputs:
        return _num_elements(op.outputs[0].shape)
    if t in REDUCE_OPS and op.inputs:
        return _num_elements(op.inputs[0].shape)
    if t in ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3") and op.outputs:
        n = _num_elements(op.outputs[0].shape)
        return None if n is None else 2 * n  # inference: x * scale' + offset'
    return None


def freeze(concrete_function):
    """Freeze a concrete function: variables become constants (names are kept)."""
    return tf_compat.freeze(concrete_function)


def profiler_flops(graph) -> dict[str, int]:
    """Run `tf.compat.v1.profiler` float_operation over `graph`: op name -> FLOPs."""
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    # The profiler logs a deprecation warning per call and prints parsing notes.
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), tf_compat.silenced_deprecations():
        result = tf.compat.v1.profiler.profile(graph, options=opts, cmd="scope")
    flops = {}
    stack = [result]
    while stack:
        node = stack.pop()
        if node.float_ops:
            flops[node.name] = flops.get(node.name, 0) + int(node.float_ops)
        stack.extend(node.children)
    return flops


def graph_flops(graph):
    """Per-op FLOPs of a frozen graph.

    Returns:
        `(flops, uncounted, counted_by_us)`: op name -> FLOPs for every op with a
        count; op type -> list of op names for compute ops without a count;
        op type -> number of ops we counted ourselves.
    """
    flops = profiler_flops(graph)
    uncounted = collections.defaultdict(list)
    ours = collections.Counter()
    for op in graph.get_operations():
        if op.name in flops or op.type in ZERO_COST_OPS:
            continue
        extra = _extra_flops(op)
        if extra is not None:
            flops[op.name] = int(extra)
            ours[op.type] += 1
        elif not _registered(op.type) or op.type in ("Einsum",):
            uncounted[op.type].append(op.name)
        # else: registered op whose count is legitimately 0 (e.g. unknown shape) -> report
        elif op.outputs and _num_elements(op.outputs[0].shape) is None:
            uncounted[op.type].append(op.name)
    return flops, dict(uncounted), dict(ours)
