"""Quality metrics for attributions: completeness, infidelity, sensitivity,
deletion/insertion (AOPC) curves and the model-parameter randomization check.

Example:

>>> import numpy as np, keras
>>> from kerastrace.attribution import IntegratedGradients, Saliency, metrics
>>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
>>> x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
>>> attr = IntegratedGradients(model).attribute(x, n_steps=4)
>>> bool(np.all(np.abs(metrics.convergence_delta(model, x, attr)) < 1e-5))
True
>>> grad = Saliency(model).attribute(x, abs=False)   # exact for a linear model
>>> bool(np.all(metrics.infidelity(model, x, grad, seed=0) < 1e-8))
True
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from kerastrace._utils import validation as v
from kerastrace._utils.types import Inputs, Target
from kerastrace.attribution import _core
from kerastrace.attribution._base import Attribution

__all__ = [
    "convergence_delta",
    "infidelity",
    "sensitivity_max",
    "PerturbationCurve",
    "deletion_curve",
    "insertion_curve",
    "randomization_sanity_check",
    "spearman",
    "jaccard_top_k",
]


class _Scorer(Attribution):
    """Compiled, chunked forward scores of a model (shared machinery)."""

    def __call__(self, flat, target, chunk=None, layout=None):
        flat = tuple(flat)
        if layout is None:
            n = len(flat)
            layout = _core.Layout("tuple" if n > 1 else "array", tuple(range(n)), tuple(range(n)))
        tgt = target
        if not isinstance(target, _core.TargetSpec):
            tgt = self._target(target, flat, layout)
        return self._scores(flat, tgt, chunk, layout).astype(np.float64)


#: The model attribute that holds its `_Scorer`.
_SCORERS = "_kerastrace_metrics_scorer"


def _scorer_for(model) -> _Scorer:
    """One `_Scorer` (and so one compiled function) per model, kept on the model.

    Building a new scorer on every metric call re-traced the model each time
    and set off TensorFlow's retracing warnings after a few calls. The scorer
    holds the model, so a cache keyed by the model outside it (even a
    `WeakKeyDictionary`) would keep the model alive forever; as an attribute
    of the model (set past Keras' attribute tracking) it is collected with it.
    """
    scorer = getattr(model, _SCORERS, None)
    if isinstance(scorer, _Scorer) and scorer.model is model:
        return scorer
    scorer = _Scorer(model)
    try:
        object.__setattr__(model, _SCORERS, scorer)
    except (AttributeError, TypeError):  # e.g. a bound method: no cache
        pass
    return scorer


def _tuple(a, layout):
    """Attributions (array, tuple or dict) as a tuple in the layout's attributed order."""
    if isinstance(a, dict):
        return tuple(np.asarray(a[layout.keys[i]]) for i in layout.diff)
    if isinstance(a, (tuple, list)) and (layout.result == "tuple" or len(layout.diff) > 1):
        return tuple(np.asarray(t) for t in a)
    return (np.asarray(a),)


def _attributed_layout(flat, layout, attributions):
    """For dict inputs, the attributed entries are the keys of the attributions."""
    if layout.kind == "dict" and isinstance(attributions, dict):
        unknown = [k for k in attributions if k not in layout.keys]
        if unknown:
            raise ValueError(
                "Received an invalid value for argument `attributions`: keys "
                f"{unknown} are not inputs. Received: keys {list(attributions)}"
            )
        return layout.with_diff(i for i, k in enumerate(layout.keys) if k in attributions)
    return layout


def convergence_delta(
    model, inputs: Inputs, attributions, baselines=None, target: Target = None
) -> np.ndarray:
    """Completeness gap `sum(attributions) - (f(inputs) - f(baselines))` per example.

    Args:
        model: A Keras model or a callable.
        inputs: The explained inputs `(B, ...)` or a tuple of them.
        attributions: Attributions of the same structure.
        baselines: Baselines as in `IntegratedGradients` (default zeros).
        target: The explained target.

    Returns:
        Array `(B,)`; close to 0 for complete methods (IG, GradientShap in
        expectation, Layer IG).
    """
    flat, layout = _core.normalize_inputs(inputs)
    layout = _attributed_layout(flat, layout, attributions)
    xs, ctx = layout.split(flat)
    attrs = _tuple(attributions, layout)
    bases = tuple(
        b.astype(x.dtype)
        for b, x in zip(_core.broadcast_baselines(baselines, xs, dtype=None, layout=layout), xs)
    )
    scorer = _scorer_for(model)
    total = sum(a.reshape(a.shape[0], -1).astype(np.float64).sum(axis=1) for a in attrs)
    f_x = scorer(flat, target, layout=layout)
    f_b = scorer(layout.merge(bases, ctx), target, layout=layout)
    return (total - (f_x - f_b)).astype(np.float32)


def _gaussian_perturb(std):
    def perturb(xs, rng):
        noise = tuple(rng.normal(0.0, std, size=x.shape).astype(np.float32) for x in xs)
        return noise, tuple(x - n for x, n in zip(xs, noise))

    return perturb


def infidelity(
    model,
    inputs: Inputs,
    attributions,
    target: Target = None,
    perturb_func=None,
    n_perturb_samples: int = 10,
    noise_std: float = 0.1,
    normalize: bool = False,
    seed: int | None = None,
) -> np.ndarray:
    """Infidelity `E_I[(I . attr - (f(x) - f(x - I)))^2]` per example (Yeh et al., 2019).

    Args:
        model: A Keras model or a callable.
        inputs: Float inputs `(B, ...)` or a tuple.
        attributions: Attributions of the same structure.
        target: The explained target.
        perturb_func: `perturb_func(inputs_tuple, rng) -> (perturbations,
            perturbed_inputs)`; default Gaussian noise of scale `noise_std`
            with `perturbed = x - noise`.
        n_perturb_samples: Perturbations per example (all scored in one
            batched compiled call).
        noise_std: Scale of the default perturbation.
        normalize: Rescale the attributions by the optimal scalar first
            (Captum's `normalize=True`).
        seed: Seed of the perturbations.

    Returns:
        Array `(B,)`, lower is better.
    """
    n = v.check_positive_int("n_perturb_samples", n_perturb_samples)
    xs, layout = _core.normalize_inputs(inputs)
    xs = _core.check_float_inputs(xs, method="infidelity")
    attrs = tuple(a.astype(np.float64) for a in _tuple(attributions, layout))
    perturb = perturb_func or _gaussian_perturb(v.check_non_negative_float("noise_std", noise_std))
    rng = np.random.default_rng(seed)
    batch = xs[0].shape[0]
    reps = tuple(np.repeat(x, n, axis=0) for x in xs)  # (B*n, ...), example-major
    pert, perturbed = perturb(reps, rng)
    pert, perturbed = tuple(pert), tuple(np.asarray(p, np.float32) for p in perturbed)
    scorer = _scorer_for(model)
    tgt = scorer._target(target, xs, layout)
    f_x = scorer(xs, tgt, layout=layout)
    f_p = scorer(perturbed, tgt.repeat(n), layout=layout).reshape(batch, n)
    dot = sum(
        (np.asarray(p, np.float64).reshape(batch, n, -1) * a.reshape(batch, 1, -1)).sum(-1)
        for p, a in zip(pert, attrs)
    )
    diff = f_x[:, None] - f_p
    if normalize:
        beta = (dot * diff).mean(1) / np.maximum((dot * dot).mean(1), 1e-30)
        dot = dot * beta[:, None]
    return ((dot - diff) ** 2).mean(axis=1).astype(np.float32)


def sensitivity_max(
    explanation_func,
    inputs: Inputs,
    perturb_radius: float = 0.02,
    n_perturb_samples: int = 10,
    seed: int | None = None,
    **kwargs,
) -> np.ndarray:
    """Max relative change of an explanation under small input perturbations.

    `max_k ||e(x + d_k) - e(x)|| / ||e(x)||` with `d_k` uniform in the
    L-infinity ball of radius `perturb_radius` (Yeh et al., 2019). All
    perturbed copies are explained in one batched call.

    Args:
        explanation_func: E.g. `Saliency(model).attribute`.
        inputs: Float inputs `(B, ...)` or a tuple.
        perturb_radius: Radius of the perturbation.
        n_perturb_samples: Perturbations per example.
        seed: Seed of the perturbations.
        **kwargs: Passed to `explanation_func` (a per-example `target` is
            repeated for the perturbed copies).

    Returns:
        Array `(B,)`, lower is better.
    """
    n = v.check_positive_int("n_perturb_samples", n_perturb_samples)
    r = v.check_non_negative_float("perturb_radius", perturb_radius)
    xs, layout = _core.normalize_inputs(inputs)
    xs = _core.check_float_inputs(xs, method="sensitivity_max")
    batch = xs[0].shape[0]
    rng = np.random.default_rng(seed)
    base = _tuple(explanation_func(_core.restore(xs, layout), **kwargs), layout)
    reps = tuple(
        np.repeat(x, n, axis=0) + rng.uniform(-r, r, size=(batch * n, *x.shape[1:])).astype(x.dtype)
        for x in xs
    )
    kw = dict(kwargs)
    t = kw.get("target")
    if t is not None and not callable(t) and np.ndim(t) == 1:
        kw["target"] = np.repeat(np.asarray(t), n)
    pert = _tuple(explanation_func(_core.restore(reps, layout), **kw), layout)
    num = sum(
        ((p.reshape(batch, n, -1) - e.reshape(batch, 1, -1)) ** 2).sum(-1)
        for p, e in zip(pert, base)
    )
    den = sum((e.reshape(batch, -1).astype(np.float64) ** 2).sum(-1) for e in base)
    return (np.sqrt(num).max(axis=1) / np.maximum(np.sqrt(den), 1e-12)).astype(np.float32)


@dataclasses.dataclass
class PerturbationCurve:
    """A deletion or insertion curve.

    Attributes:
        fractions: `(n_steps + 1,)` fraction of features removed/inserted.
        scores: `(B, n_steps + 1)` target score at each fraction.
        aopc: `(B,)` area over the perturbation curve,
            `mean_k (scores[:, 0] - scores[:, k])` (deletion: higher is
            better; insertion: lower, i.e. more negative, is better).
        auc: `(B,)` trapezoid area under `scores` over `fractions`
            (deletion: lower is better; insertion: higher is better).
    """

    kind: str
    fractions: np.ndarray
    scores: np.ndarray
    aopc: np.ndarray
    auc: np.ndarray


def _curve(
    kind, model, inputs, attributions, target, baselines, n_steps, internal_batch_size, mask
):
    steps = v.check_positive_int("n_steps", n_steps)
    flat_in, layout = _core.normalize_inputs(inputs)
    layout = _core.select_perturbed_inputs(flat_in, layout)
    xs, ctx = layout.split(flat_in)
    if len(xs) != 1:
        raise ValueError(
            "Received an invalid value for argument `inputs`: deletion/insertion curves "
            f"perturb a single input. Received: {len(xs)} inputs to perturb"
        )
    x = xs[0]
    attr = np.asarray(attributions, np.float64)
    if attr.shape != x.shape[: attr.ndim] or attr.ndim < 2:
        raise ValueError(
            "Received an invalid value for argument `attributions`: expected the input's "
            f"shape {x.shape} or a leading part of it (e.g. per-token scores (B, T)). "
            f"Received: attributions with shape {attr.shape}"
        )
    rankable = np.ones(attr.shape, bool) if mask is None else np.asarray(mask, bool)
    if rankable.shape != attr.shape:
        raise ValueError(
            "Received an invalid value for argument `mask`, expected a boolean array of the "
            f"attributions' shape {attr.shape}. Received: mask with shape {rankable.shape}"
        )
    (base,) = _core.broadcast_baselines(baselines, xs, dtype=None)
    base = base.astype(x.dtype)
    batch = x.shape[0]
    scores_flat = np.where(rankable, attr, -np.inf).reshape(batch, -1)
    n_feat = scores_flat.shape[1]
    n_rank = rankable.reshape(batch, -1).sum(axis=1)  # features that may be removed
    order = np.argsort(-scores_flat, axis=1, kind="stable")  # most important first
    fractions = np.linspace(0.0, 1.0, steps + 1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(n_feat)[None].repeat(batch, 0), axis=1)
    trail = x.shape[attr.ndim :]
    rows = []
    for f in fractions:
        c = np.round(f * n_rank).astype(int)[:, None]  # per example
        sel = (rank < c).reshape(attr.shape + (1,) * len(trail))
        sel = np.broadcast_to(sel, x.shape)
        rows.append(np.where(sel, base, x) if kind == "deletion" else np.where(sel, x, base))
    stacked = np.concatenate(rows, axis=0)
    rep_ctx = [np.tile(c, (steps + 1,) + (1,) * (c.ndim - 1)) for c in ctx]
    scorer = _scorer_for(model)
    tgt = scorer._target(target, flat_in, layout)
    rep = tgt.tile(steps + 1)
    scores = scorer(layout.merge([stacked], rep_ctx), rep, internal_batch_size, layout)
    scores = scores.reshape(steps + 1, batch).T
    aopc = (scores[:, :1] - scores).mean(axis=1)
    auc = np.trapezoid(scores, fractions, axis=1)
    return PerturbationCurve(
        kind,
        fractions.astype(np.float32),
        scores.astype(np.float32),
        aopc.astype(np.float32),
        auc.astype(np.float32),
    )


def deletion_curve(
    model,
    inputs: Inputs,
    attributions,
    target: Target = None,
    baselines=None,
    n_steps: int = 10,
    internal_batch_size: int | None = None,
    mask=None,
) -> PerturbationCurve:
    """Score as the most-attributed features are replaced by the baseline.

    Features are the attribution's elements; attributions with fewer axes
    than the input (e.g. per-token scores `(B, T)` of `(B, T)` token ids or
    `(B, T, D)` embeddings) remove whole tokens. All `n_steps + 1` stages are
    scored in one batched compiled call.

    Args:
        model: A Keras model or a callable.
        inputs: A single input `(B, ...)` (token ids allowed).
        attributions: `(B, ...)` scores, the input's shape or a leading part.
        target: The explained target.
        baselines: Replacement values (default 0, the pad id for tokens).
        n_steps: Number of stages after the unperturbed one; stage `k`
            removes the top `k / n_steps` of each example's rankable features.
        internal_batch_size: Rows per model call.
        mask: Optional boolean array of the attributions' shape: only
            features where it is True are ranked and removed (e.g. real word
            tokens, leaving `[CLS]`, `[SEP]` and padding in place).

    Inputs may be a dict (keras-hub models): the token ids are perturbed and
    auxiliary entries such as `padding_mask` pass through unchanged.

    Returns:
        A `PerturbationCurve` with the AOPC (Samek et al., 2017).

    Example:

    >>> import numpy as np, keras
    >>> from kerastrace.attribution import metrics
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, use_bias=False)])
    >>> model.layers[0].set_weights([np.array([[4.0], [3.0], [2.0], [1.0]])])
    >>> x = np.ones((1, 4), "float32")
    >>> c = metrics.deletion_curve(model, x, x * [[4, 3, 2, 1]], n_steps=4)
    >>> c.scores.tolist(), c.aopc.tolist()
    ([[10.0, 6.0, 3.0, 1.0, 0.0]], [6.0])
    """
    return _curve(
        "deletion", model, inputs, attributions, target, baselines, n_steps, internal_batch_size,
        mask,
    )


def insertion_curve(
    model,
    inputs: Inputs,
    attributions,
    target: Target = None,
    baselines=None,
    n_steps: int = 10,
    internal_batch_size: int | None = None,
    mask=None,
) -> PerturbationCurve:
    """Score as the most-attributed features are inserted into the baseline.

    Same arguments as `deletion_curve`; starts from the baseline and
    restores the features most important first (higher `auc` is better).
    """
    return _curve(
        "insertion", model, inputs, attributions, target, baselines, n_steps, internal_batch_size,
        mask,
    )


def _rank(a):
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    _, inv, counts = np.unique(sorted_a, return_inverse=True, return_counts=True)
    avg = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = np.empty(len(a), np.float64)
    ranks[order] = avg[inv]
    return ranks


def spearman(a, b) -> np.ndarray:
    """Spearman rank correlation per example of two `(B, ...)` arrays (ties averaged).

    Example:

    >>> from kerastrace.attribution.metrics import spearman
    >>> spearman([[1, 2, 3, 4]], [[10, 20, 40, 30]]).round(3).tolist()
    [0.8]
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    out = []
    for ra, rb in zip(a, b):
        x, y = _rank(ra), _rank(rb)
        x, y = x - x.mean(), y - y.mean()
        den = np.sqrt((x * x).sum() * (y * y).sum())
        out.append((x * y).sum() / den if den > 0 else 0.0)
    return np.asarray(out)


def _randomize_weights(weights, rng):
    for w in weights:
        val = np.asarray(w.numpy())
        std = float(val.std()) if val.size > 1 and val.std() > 0 else 0.1
        w.assign(rng.normal(0.0, std, size=val.shape).astype(val.dtype))


def _model_copy(model):
    """A copy with the same weights: `clone_model`, else a `.keras` save/load round trip.

    Returns None when neither works (e.g. a subclassed model whose custom
    layers are not registered for serialization).
    """
    try:
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
        return copy
    except Exception:  # noqa: BLE001 - custom or subclassed layers
        pass
    import os
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "copy.keras")
            model.save(path)
            return keras.saving.load_model(path, compile=False)
    except Exception:  # noqa: BLE001 - not serializable
        return None


def _stages(model, layers):
    """`[(path, trainable weights it owns)]`, output side first."""
    from kerastrace._utils import instrument

    if layers is None:
        nodes = [n for n in instrument.walk(model) if instrument.own_weights(n.layer, True)]
        return [(n.path, instrument.own_weights(n.layer, True)) for n in reversed(nodes)]
    out = []
    for spec in layers:
        spec = spec if isinstance(spec, str) else spec.name
        path, layer = instrument.resolve_layer(model, spec, "layers")
        out.append((path, list(layer.trainable_weights)))
    return out


def randomization_sanity_check(
    model: keras.Model,
    explain,
    absolute: bool = True,
    seed: int | None = 0,
    layers=None,
    copy: str = "auto",
) -> list:
    """Cascading model-parameter randomization test (Adebayo et al., 2018).

    The model's weights are randomized layer by layer from the output down
    (each trainable weight redrawn from a normal with the weight's own
    standard deviation, seeded); after each stage the explanation is
    recomputed and compared with the original one by the Spearman rank
    correlation (mean over examples). A method that is sensitive to the
    model's parameters shows correlations dropping towards 0.

    Stages are the layers that own trainable weights, found at any depth
    (inside keras-hub backbones and custom layers too), named by their path.
    The randomization runs on a copy (`keras.models.clone_model`, or a
    `.keras` save/load round trip for custom layers); when no copy can be
    made (`copy="auto"`) or when asked (`copy="never"`), it runs on the
    model itself and every weight is put back afterwards, also on error.

    Args:
        model: A Keras model.
        explain: `explain(model) -> attributions (B, ...)`, e.g.
            `lambda m: Saliency(m).attribute(x, target=t)`.
        absolute: Compare absolute values of the attributions (as in the
            paper). For methods that multiply by the input (IG,
            InputXGradient) the absolute values keep the input's magnitude
            pattern even for a random model; compare them signed
            (`absolute=False`) as well.
        seed: Seed of the randomization.
        layers: Layers (paths or names) to randomize, output first; default:
            every layer owning trainable weights, from the output down.
        copy: `"auto"` (copy if possible, else in place and restored),
            `"always"` (refuse when no copy can be made) or `"never"`.

    Returns:
        A list of `(stage, spearman)`: `("original", 1.0)` then one entry per
        randomized layer path (cumulative).

    Raises:
        ValueError: `copy="always"` and the model cannot be copied.

    References:
        - [Adebayo et al., 2018, Sanity Checks for Saliency
          Maps](https://arxiv.org/abs/1810.03292)
    """
    v.check_one_of("copy", copy, ("auto", "always", "never"))
    reference = np.asarray(explain(model))
    target = _model_copy(model) if copy != "never" else None
    if target is None and copy == "always":
        raise ValueError(
            "Received an invalid value for argument `copy`: the model cannot be copied "
            "(keras.models.clone_model and a .keras save/load both failed, e.g. custom layers "
            "that are not registered with keras.saving.register_keras_serializable). Use "
            "copy='auto' to randomize it in place (its weights are restored afterwards). "
            "Received: copy='always'"
        )
    in_place = target is None
    target = model if in_place else target
    saved = [np.array(w.numpy()) for w in target.weights] if in_place else None
    rng = np.random.default_rng(seed)
    f = np.abs if absolute else (lambda t: t)
    results = [("original", 1.0)]
    try:
        for path, weights in _stages(target, layers):
            _randomize_weights(weights, rng)
            attr = np.asarray(explain(target))
            results.append((path, float(spearman(f(reference), f(attr)).mean())))
    finally:
        if in_place:
            for w, val in zip(target.weights, saved):
                w.assign(val)
    return results


def jaccard_top_k(a, b, k: int, mask=None) -> float:
    """Mean Jaccard index of the top-`k` (by |score|) token sets of two `(B, T)` arrays.

    How much two attributions agree on the most important tokens (e.g. the
    same method at two training epochs, or two methods). Positions where
    `mask` is False are left out of the ranking; rows with no kept position
    are skipped, and 1.0 is returned when no row is left.

    Args:
        a: `(B, T)` or `(T,)` scores.
        b: Scores of the same shape.
        k: How many top positions form each set (fewer when a row keeps fewer).
        mask: Optional `(B, T)` boolean, True where a position may be ranked.

    Returns:
        The mean over rows of `|top_k(a) & top_k(b)| / |top_k(a) | top_k(b)|`.

    Example:

    >>> import numpy as np
    >>> from kerastrace.attribution import metrics
    >>> metrics.jaccard_top_k(np.array([[3.0, 2.0, 1.0]]), np.array([[3.0, 0.0, 2.0]]), 2)
    0.3333333333333333
    """
    a, b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
    if a.shape != b.shape:
        raise v.invalid("b", f"scores of the shape of `a`, {a.shape}", f"shape {b.shape}")
    k = v.check_positive_int("k", k)
    if mask is not None:
        mask = np.broadcast_to(np.atleast_2d(np.asarray(mask, bool)), a.shape)
    vals = []
    for i in range(a.shape[0]):
        keep = np.arange(a.shape[1]) if mask is None else np.flatnonzero(mask[i])
        kk = min(k, keep.size)
        if kk == 0:
            continue
        ta = set(keep[np.argsort(-np.abs(a[i, keep]), kind="stable")[:kk]].tolist())
        tb = set(keep[np.argsort(-np.abs(b[i, keep]), kind="stable")[:kk]].tolist())
        vals.append(len(ta & tb) / len(ta | tb))
    return float(np.mean(vals)) if vals else 1.0
