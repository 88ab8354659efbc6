"""Perturbation attribution: feature masks, the shared compiled forward engine, the base class.

Private module. The perturbation methods (`FeatureAblation`,
`ShapleyValueSampling`, `ShapleyValues`, `KernelShap`, `Lime`) all reduce to
the same work: evaluate the model on many *coalitions* of an example's
features (a feature present keeps its input value, an absent one takes the
baseline value) and combine the scores on the host. `PerturbationEngine`
does the evaluation in one `tf.function` per model and input layout: it
takes the original inputs, the baselines, the `(B, ...)` feature-mask ids and
an `(N, F)` boolean coalition matrix whose row `r` belongs to example
`owner[r]`, builds the perturbed rows inside the graph (so only the
coalition bits cross from the host), and runs the model in fixed-size chunks
of rows in a `tf.while_loop`. Every argument has a free leading axis in the
input signature and the chunk size is a tensor: new values, targets, feature
masks, coalitions, batch sizes or numbers of features do not retrace.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from kerastrace._utils import tf_compat
from kerastrace._utils import validation as v
from kerastrace.attribution import _core
from kerastrace.attribution._base import Attribution

#: Rows per model call when `perturbations_per_eval` is not given.
DEFAULT_ROWS = 256
#: Feature id of elements that are never perturbed (kept at their input value).
KEEP = -1


# ------------------------------------------------------------------ results
@dataclasses.dataclass
class PerturbationInfo:
    """What a perturbation method did, returned by `attribute(..., return_info=True)`.

    Attributes:
        method: The method's class name.
        evaluations: `(B,)` int, model evaluations (rows through the model)
            spent on each example, the unperturbed input and the baseline
            included when the method needs them. Never more than the
            budget (`n_samples` / `max_evals`).
        n_features: `(B,)` int, number of features `F_b` of each example.
        n_samples: `(B,)` int, the method's own sample count: permutations
            for `ShapleyValueSampling`, coalitions for `KernelShap`/`Lime`,
            features for `FeatureAblation`, `2**F` for `ShapleyValues`.
        feature_attributions: `(B, F_max)` float32 score of every feature
            (0 past an example's `F_b`). With word masks from
            `kerastrace.text.word_feature_mask`, one score per word.
        f_inputs: `(B,)` float32 target score of the unperturbed input, or
            None when the method does not evaluate it (`Lime`).
        f_baselines: `(B,)` float32 target score with every feature removed,
            or None when not evaluated (`FeatureAblation`, `Lime`).
        delta: `(B,)` float32 efficiency residual
            `sum(feature_attributions) - (f_inputs - f_baselines)`, or None
            when the method does not evaluate both ends. Zero up to
            rounding for `ShapleyValueSampling`, `ShapleyValues` and
            `KernelShap` (efficiency holds by construction).
    """

    method: str
    evaluations: np.ndarray
    n_features: np.ndarray
    n_samples: np.ndarray
    feature_attributions: np.ndarray
    f_inputs: np.ndarray | None = None
    f_baselines: np.ndarray | None = None
    delta: np.ndarray | None = None

    @property
    def total_evaluations(self) -> int:
        """Model rows evaluated by the whole call (all examples)."""
        return int(np.sum(self.evaluations))


# ------------------------------------------------------------- feature masks
def _per_entry(value, xs, layout, name):
    """One value per attributed entry from an array, a tuple or a dict (None stays None)."""
    if value is None:
        return [None] * len(xs)
    if layout.kind == "dict":
        keys = [layout.keys[i] for i in layout.diff]
        if isinstance(value, dict):
            unknown = [k for k in value if k not in keys]
            if unknown:
                raise ValueError(
                    f"Received an invalid value for argument `{name}`: keys {unknown} are not "
                    f"perturbed inputs; expected some of {keys}. Received: {name} keys "
                    f"{list(value)}"
                )
            return [value.get(k) for k in keys]
        if len(xs) == 1:
            return [value]
        raise ValueError(
            f"Received an invalid value for argument `{name}`: the inputs have several "
            f"perturbed entries {keys}, so give a dict by key. Received: {name} of type "
            f"{type(value).__name__}"
        )
    if isinstance(value, dict):
        raise TypeError(
            f"Received an invalid value for argument `{name}`: a dict needs dict inputs. "
            "Received: a dict"
        )
    if len(xs) == 1 and not (isinstance(value, (tuple, list)) and len(value) == 1
                             and hasattr(value[0], "shape")):
        return [value]
    if not isinstance(value, (tuple, list)) or len(value) != len(xs):
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected one mask per "
            f"input ({len(xs)}). Received: {name} of type {type(value).__name__}"
        )
    return list(value)


def feature_masks(feature_mask, xs, layout):
    """Validated `(B, ...)` int32 feature ids per input and `F_b` per example.

    `feature_mask` is None (every scalar element of every perturbed input is
    its own feature, numbered across the inputs), or one integer array per
    perturbed input (an array, a tuple, or a dict by key for dict inputs;
    entries left out of a dict get one feature per element after the given
    ids), each broadcastable to its input's shape. The same id in several
    places (or inputs) is one feature. Per example, the ids `>= 0` must be
    exactly `0 .. F_b - 1`; `-1` marks elements that are never perturbed.

    Raises:
        ValueError: for masks that do not broadcast, non-integer masks,
            ids below -1, gaps in the ids, or an example without features.
    """
    given = _per_entry(feature_mask, xs, layout, "feature_mask")
    batch = xs[0].shape[0]
    masks = []
    for j, (m, x) in enumerate(zip(given, xs)):
        if m is None:
            masks.append(None)
            continue
        arr = np.asarray(m.numpy() if hasattr(m, "numpy") else m)
        label = layout.label(layout.diff[j])
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                "Received an invalid value for argument `feature_mask`, expected integer "
                f"feature ids. Received: feature_mask for {label} with dtype {arr.dtype}"
            )
        try:
            arr = np.broadcast_to(arr, x.shape)
        except ValueError:
            raise ValueError(
                "Received an invalid value for argument `feature_mask`: the mask for "
                f"{label} cannot be broadcast to the input shape {x.shape}; use the "
                f"per-example shape {x.shape[1:]}, the full shape, or a shape that "
                f"broadcasts. Received: feature_mask with shape {arr.shape}"
            ) from None
        if arr.size and arr.min() < KEEP:
            raise ValueError(
                "Received an invalid value for argument `feature_mask`, expected ids >= 0 "
                f"(and -1 for elements never perturbed). Received: feature_mask for {label} "
                f"with min {int(arr.min())}"
            )
        masks.append(arr.astype(np.int32))
    # Entries without a mask: one feature per element, after each example's largest id.
    offset = np.zeros(batch, np.int64)
    for m in masks:
        if m is not None and m.size:
            offset = np.maximum(offset, m.reshape(batch, -1).max(axis=1) + 1)
    for j, x in enumerate(xs):
        if masks[j] is None:
            size = int(np.prod(x.shape[1:], dtype=np.int64))
            lead = offset.reshape((batch,) + (1,) * (x.ndim - 1))
            masks[j] = (lead + np.arange(size).reshape((1, *x.shape[1:]))).astype(np.int32)
            offset = offset + size
    n_features = np.zeros(batch, np.int64)
    for b in range(batch):
        ids = np.unique(np.concatenate([m[b].ravel() for m in masks]))
        ids = ids[ids >= 0]
        if ids.size == 0:
            raise ValueError(
                "Received an invalid value for argument `feature_mask`: example "
                f"{b} has no feature to perturb (every id is -1)."
            )
        n = int(ids[-1]) + 1
        if ids.size != n:
            missing = np.setdiff1d(np.arange(n), ids)[:5].tolist()
            raise ValueError(
                "Received an invalid value for argument `feature_mask`, expected the ids of "
                f"each example to be 0 .. F-1 without gaps. Received: feature_mask with ids "
                f"up to {n - 1} for example {b} but without {missing}"
            )
        n_features[b] = n
    return tuple(np.ascontiguousarray(m) for m in masks), n_features


def expand(phi, masks):
    """Per-feature scores `(B, F)` -> arrays of the inputs' shapes (0 where id is -1)."""
    out = []
    padded = np.concatenate([phi, np.zeros((phi.shape[0], 1))], axis=1)
    for m in masks:
        ids = np.where(m < 0, phi.shape[1], m).reshape(m.shape[0], -1)
        vals = np.take_along_axis(padded, ids, axis=1).reshape(m.shape)
        out.append(vals.astype(np.float32))
    return out


# ------------------------------------------------------------------- engine
class PerturbationEngine:
    """Compiled, chunked evaluation of feature coalitions (see the module docstring).

    Args:
        forward: `forward(flat_model_inputs, layout) -> outputs`.

    Attributes:
        trace_count: How many times a compiled function was traced (one per
            input structure and target kind; values never retrace).
    """

    def __init__(self, forward):
        self.forward = forward
        self.trace_count = 0
        self._fns = {}

    def _get(self, xs, ctx, target, layout, pad):
        key = (
            tuple((a.shape[1:], a.dtype.str) for a in xs),
            tuple((a.shape[1:], a.dtype.str) for a in ctx),
            target.key,
            layout,
            pad,
        )
        fn = self._fns.get(key)
        if fn is None:
            fn = self._fns[key] = self._build(xs, ctx, target, layout, pad)
        return fn

    def _build(self, xs, ctx, target_spec, layout, pad):
        n_x, n_c = len(xs), len(ctx)
        engine = self
        target_fn, space = target_spec.fn, target_spec.space

        def body(*flat):
            engine.trace_count += 1
            flat = list(flat)
            xs_t = [flat.pop(0) for _ in range(n_x)]
            bases_t = [flat.pop(0) for _ in range(n_x)]
            masks_t = [flat.pop(0) for _ in range(n_x)]
            ctx_t = [flat.pop(0) for _ in range(n_c)]
            coalitions, owner, target, contrast, chunk = flat
            n = tf.shape(coalitions)[0]
            n_chunks = (n + chunk - 1) // chunk

            def step(i, ta):
                rows = tf.minimum(i * chunk + tf.range(chunk), n - 1)  # last chunk padded
                b = tf.gather(owner, rows)
                z = tf.gather(coalitions, rows)  # (C, F) bool
                perturbed, keeps = [], []
                for x, base, m in zip(xs_t, bases_t, masks_t):
                    ids = tf.gather(m, b)  # (C, ...) int32
                    flat_ids = tf.reshape(ids, [chunk, -1])
                    present = tf.gather(z, tf.maximum(flat_ids, 0), batch_dims=1)
                    keep = tf.reshape(tf.logical_or(flat_ids < 0, present), tf.shape(ids))
                    keeps.append(keep)
                    perturbed.append(tf.where(keep, tf.gather(x, b), tf.gather(base, b)))
                ctx_rows = [tf.gather(c, b) for c in ctx_t]
                if pad is not None:  # removed tokens also leave keras-hub's padding_mask
                    j, k = pad
                    ctx_rows[k] = tf.where(keeps[j], ctx_rows[k], tf.zeros_like(ctx_rows[k]))
                outputs = engine.forward(layout.merge(perturbed, ctx_rows), layout)
                score = _core.select_scores(
                    outputs, tf.gather(target, b), target_fn, tf.gather(contrast, b), space
                )
                return i + 1, ta.write(i, score)

            ta = tf.TensorArray(_core.F32, size=n_chunks, element_shape=(None,), infer_shape=False)
            _, ta = tf.while_loop(lambda i, _: i < n_chunks, step, (tf.constant(0), ta))
            return ta.concat()[:n]

        signature = [_core.spec_for(a) for a in xs] * 2  # inputs, baselines
        signature += [tf.TensorSpec((None, *a.shape[1:]), tf.int32) for a in xs]  # feature ids
        signature += [_core.spec_for(a) for a in ctx]
        signature += [
            tf.TensorSpec((None, None), tf.bool),  # coalitions (N, F): True = feature present
            tf.TensorSpec((None,), tf.int32),  # owner: the example of each row (N,)
            tf.TensorSpec((None,), tf.int32),  # target per example (B,)
            tf.TensorSpec((None,), tf.int32),  # contrast ("rather than") index (B,), -1: none
            tf.TensorSpec((), tf.int32),  # chunk: rows per model call
        ]
        return tf_compat.function(body, input_signature=signature)

    def scores(self, xs, bases, masks, ctx, coalitions, owner, target, layout,
               chunk=None, pad=None, eager=False, where=None):
        """Target score `(N,)` float32 of every coalition row.

        Args:
            xs, bases, masks: The perturbed inputs, their baselines and their
                int32 feature ids, each `(B, ...)`.
            ctx: The pass-through model inputs `(B, ...)`.
            coalitions: `(N, F)` bool, True where a feature keeps its input value.
            owner: `(N,)` int, the example of each row.
            target: A `TargetSpec` with `(B,)` indices.
            layout: How the model is called (`layout.merge(perturbed, ctx)`).
            chunk: Rows per model call (default 256).
            pad: None, or `(j, k)`: removing elements of perturbed input `j`
                also zeroes them in pass-through input `k` (keras-hub's
                `padding_mask`).
            eager: Run the same body eagerly (for testing).
            where: `where(row) -> str` naming a row in the error raised when
                its score is NaN or inf (default `"row r (example b)"`).
        """
        n = int(coalitions.shape[0])
        if n == 0:
            return np.zeros(0, np.float32)
        chunk = max(1, min(int(chunk or DEFAULT_ROWS), n))
        fn = self._get(xs, ctx, target, layout, pad)
        args = [tf.constant(x) for x in xs]
        args += [tf.constant(b) for b in bases]
        args += [tf.constant(m) for m in masks]
        args += [tf.constant(c) for c in ctx]
        args += [
            tf.constant(np.asarray(coalitions, bool)),
            tf.constant(np.asarray(owner, np.int32)),
            tf.constant(np.asarray(target.indices, np.int32)),
            tf.constant(np.asarray(target.contrast, np.int32)),
            _core.constant(chunk, tf.int32),
        ]
        out = fn.python_function(*args) if eager else _core.call_compiled(fn, args)
        out = tf.nest.flatten(out)[0].numpy()
        _core.check_finite_scores(
            out, where or (lambda r: f"row {r} (example {int(np.asarray(owner)[r])})")
        )
        return out


# --------------------------------------------------------------- base class
@dataclasses.dataclass
class Problem:
    """One `attribute` call's validated inputs, in the engine's terms."""

    xs: tuple
    bases: tuple
    masks: tuple
    ctx: tuple
    n_features: np.ndarray
    target: _core.TargetSpec
    layout: _core.Layout
    pad: tuple | None
    chunk: int

    @property
    def batch(self) -> int:
        return int(self.xs[0].shape[0])


class PerturbationAttribution(Attribution):
    """Base class of the perturbation methods; owns the compiled `PerturbationEngine`.

    A method subclass implements `_coalitions(problem, b, F, **kwargs)`,
    which returns the `(n, F)` boolean coalitions to evaluate for example `b`
    and a `combine(scores) -> (phi, extra)` closure that turns their `(n,)`
    scores into the `F` feature scores. The base class validates the inputs,
    evaluates the coalitions of the whole batch in one engine call and puts
    the scores back into the inputs' structure.

    Removal replaces a feature's elements by the baseline (for token ids:
    the pad or mask id); with `mask_padding=True` and keras-hub dict inputs
    it also sets `padding_mask` to 0 at the removed token positions.
    """

    def __init__(self, model):
        super().__init__(model)
        #: Run the engine's Python body eagerly (same numbers, slower; for debugging).
        self.run_eagerly = False
        self.engine = PerturbationEngine(self._forward)

    # ------------------------------------------------------------ validate
    def _problem(self, inputs, baselines, target, feature_mask, additional_forward_args,
                 perturbations_per_eval, mask_padding):
        flat, layout = _core.normalize_inputs(
            inputs, additional_forward_args=additional_forward_args
        )
        _core.check_finite(flat, names=self._names, layout=layout)
        self._check_inputs(flat, layout)
        layout = _core.select_perturbed_inputs(flat, layout)
        xs, ctx = layout.split(flat)
        bases = tuple(
            b.astype(x.dtype)
            for b, x in zip(_core.broadcast_baselines(baselines, xs, dtype=None, layout=layout), xs)
        )
        _core.check_token_inputs(
            self.model, layout.merge(bases, ctx), layout, "baselines", self._names
        )
        masks, n_features = feature_masks(feature_mask, xs, layout)
        tgt = self._target(target, flat, layout)
        pad = self._pad_pair(v.check_bool("mask_padding", mask_padding), layout, xs, ctx)
        if perturbations_per_eval is None:
            chunk = DEFAULT_ROWS
        else:
            chunk = v.check_positive_int("perturbations_per_eval", perturbations_per_eval)
            chunk *= xs[0].shape[0]
        return Problem(xs, bases, masks, ctx, n_features, tgt, layout, pad, chunk)

    @staticmethod
    def _pad_pair(mask_padding, layout, xs, ctx):
        """`(j, k)`: perturbed `token_ids` and pass-through `padding_mask`, for `mask_padding`."""
        if not mask_padding:
            return None
        keys = layout.keys
        diff = [keys[i] for i in layout.diff]
        rest = [keys[i] for i in layout.ctx]
        if layout.kind != "dict" or "token_ids" not in diff or "padding_mask" not in rest:
            raise ValueError(
                "Received an invalid value for argument `mask_padding`: it needs dict inputs "
                "with a perturbed 'token_ids' entry and a 'padding_mask' entry (keras-hub "
                f"text models). Received: mask_padding=True with inputs {list(keys)}"
            )
        j, k = diff.index("token_ids"), rest.index("padding_mask")
        if xs[j].shape != ctx[k].shape:
            raise ValueError(
                "Received an invalid value for argument `mask_padding`: 'token_ids' "
                f"{xs[j].shape} and 'padding_mask' {ctx[k].shape} differ in shape."
            )
        return j, k

    # ------------------------------------------------------------- compute
    def _evaluate(self, problem, coalitions):
        """Scores of every example's coalitions (a list of `(n_b, F_b)` arrays), in one call."""
        f_max = int(problem.n_features.max())
        counts = [c.shape[0] for c in coalitions]
        rows = np.ones((sum(counts), f_max), bool)
        at = 0
        for c in coalitions:
            rows[at : at + c.shape[0], : c.shape[1]] = c
            at += c.shape[0]
        owner = np.repeat(np.arange(len(coalitions), dtype=np.int32), counts)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)

        def where(r):
            b = int(owner[r])
            removed = np.flatnonzero(~rows[r, : int(problem.n_features[b])])
            shown = removed[:8].tolist() + (["..."] if removed.size > 8 else [])
            return (
                f"example {b}, coalition {r - int(starts[b])} of {counts[b]} "
                f"(features removed: {shown})"
            )

        scores = self.engine.scores(
            problem.xs, problem.bases, problem.masks, problem.ctx, rows, owner,
            problem.target, problem.layout, chunk=problem.chunk, pad=problem.pad,
            eager=self.run_eagerly, where=where,
        )
        return np.split(scores.astype(np.float64), np.cumsum(counts)[:-1])

    def _run(self, problem, return_input_shape, return_info, **kwargs):
        """Plan, evaluate and combine; the attributions in the caller's structure."""
        v.check_bool("return_input_shape", return_input_shape)
        v.check_bool("return_info", return_info)
        plans = [
            self._coalitions(problem, b, int(f), **kwargs)
            for b, f in enumerate(problem.n_features)
        ]
        scores = self._evaluate(problem, [c for c, _ in plans])
        batch, f_max = problem.batch, int(problem.n_features.max())
        phi = np.zeros((batch, f_max))
        ends = np.full((batch, 2), np.nan)
        n_samples = np.zeros(batch, np.int64)
        for b, ((_, combine), s) in enumerate(zip(plans, scores)):
            values, (fx, f0, n) = combine(s)
            phi[b, : len(values)] = values
            ends[b] = fx, f0
            n_samples[b] = n
        info = self._info(problem, phi, scores, ends, n_samples)
        if return_input_shape:
            result = problem.layout.restore(expand(phi, problem.masks))
        else:
            result = phi.astype(np.float32)
        return (result, info) if return_info else result

    def _info(self, problem, phi, scores, ends, n_samples):
        has_x, has_0 = not np.isnan(ends[:, 0]).any(), not np.isnan(ends[:, 1]).any()
        f_x = ends[:, 0].astype(np.float32) if has_x else None
        f_0 = ends[:, 1].astype(np.float32) if has_0 else None
        delta = None
        if has_x and has_0:
            delta = (phi.sum(axis=1) - (ends[:, 0] - ends[:, 1])).astype(np.float32)
        return PerturbationInfo(
            method=type(self).__name__,
            evaluations=np.asarray([len(s) for s in scores], np.int64),
            n_features=problem.n_features.copy(),
            n_samples=n_samples,
            feature_attributions=phi.astype(np.float32),
            f_inputs=f_x,
            f_baselines=f_0,
            delta=delta,
        )

    def _coalitions(self, problem, b, n_features, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError


def endpoints(n_features):
    """The two coalitions every Shapley method evaluates first: all present, all removed."""
    out = np.zeros((2, n_features), bool)
    out[0] = True
    return out


def check_seed(seed):
    """A seed for `np.random.default_rng`: None or a non-negative integer."""
    if seed is None:
        return None
    return v.check_non_negative_int("seed", seed)

