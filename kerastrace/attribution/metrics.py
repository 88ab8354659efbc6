"""Quality metrics for attributions: completeness, infidelity, sensitivity,
deletion/insertion (AOPC) curves and the model-parameter randomization check.

Example:

>>> import weakref

import numpy as np, keras
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
import weakref

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
]


class _Scorer(Attribution):
    """Compiled, chunked forward scores of a model (shared machinery)."""

    def __call__(self, xs, target, chunk=None):
        tgt = self._target(target, xs) if not isinstance(target, _core.TargetSpec) else target
        return self._scores(xs, tgt, chunk).astype(np.float64)


_SCORERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _scorer_for(model) -> _Scorer:
    """One `_Scorer` (and so one compiled function) per model, kept weakly.

    Building a new scorer on every metric call re-traced the model each time
    and set off TensorFlow's retracing warnings after a few calls.
    """
    try:
        scorer = _SCORERS.get(model)
        if scorer is None:
            scorer = _SCORERS[model] = _Scorer(model)
        return scorer
    except TypeError:  # not weak-referenceable: no cache
        return _Scorer(model)


def _tuple(a, is_tuple):
    return tuple(np.asarray(t) for t in a) if is_tuple else (np.asarray(a),)


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
    xs, is_tuple = _core.normalize_inputs(inputs)
    attrs = _tuple(attributions, is_tuple)
    bases = tuple(
        b.astype(x.dtype) for b, x in zip(_core.broadcast_baselines(baselines, xs, dtype=None), xs)
    )
    scorer = _scorer_for(model)
    total = sum(a.reshape(a.shape[0], -1).astype(np.float64).sum(axis=1) for a in attrs)
    return (total - (scorer(xs, target) - scorer(bases, target))).astype(np.float32)


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
    xs, is_tuple = _core.normalize_inputs(inputs)
    xs = _core.check_float_inputs(xs, method="infidelity")
    attrs = tuple(a.astype(np.float64) for a in _tuple(attributions, is_tuple))
    perturb = perturb_func or _gaussian_perturb(v.check_non_negative_float("noise_std", noise_std))
    rng = np.random.default_rng(seed)
    batch = xs[0].shape[0]
    reps = tuple(np.repeat(x, n, axis=0) for x in xs)  # (B*n, ...), example-major
    pert, perturbed = perturb(reps, rng)
    pert, perturbed = tuple(pert), tuple(np.asarray(p, np.float32) for p in perturbed)
    scorer = _scorer_for(model)
    tgt = scorer._target(target, xs)
    f_x = scorer(xs, tgt)
    f_p = scorer(perturbed, tgt.repeat(n)).reshape(batch, n)
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
    xs, is_tuple = _core.normalize_inputs(inputs)
    xs = _core.check_float_inputs(xs, method="sensitivity_max")
    batch = xs[0].shape[0]
    rng = np.random.default_rng(seed)
    base = _tuple(explanation_func(_core.restore(xs, is_tuple), **kwargs), is_tuple)
    reps = tuple(
        np.repeat(x, n, axis=0) + rng.uniform(-r, r, size=(batch * n, *x.shape[1:])).astype(x.dtype)
        for x in xs
    )
    kw = dict(kwargs)
    t = kw.get("target")
    if t is not None and not callable(t) and np.ndim(t) == 1:
        kw["target"] = np.repeat(np.asarray(t), n)
    pert = _tuple(explanation_func(_core.restore(reps, is_tuple), **kw), is_tuple)
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


def _curve(kind, model, inputs, attributions, target, baselines, n_steps, internal_batch_size):
    steps = v.check_positive_int("n_steps", n_steps)
    xs, is_tuple = _core.normalize_inputs(inputs)
    if len(xs) != 1:
        raise ValueError(
            "Received an invalid value for argument `inputs`: deletion/insertion curves take "
            f"a single input. Received: {len(xs)} inputs"
        )
    x = xs[0]
    attr = np.asarray(attributions, np.float64)
    if attr.shape != x.shape[: attr.ndim] or attr.ndim < 2:
        raise ValueError(
            "Received an invalid value for argument `attributions`: expected the input's "
            f"shape {x.shape} or a leading part of it (e.g. per-token scores (B, T)). "
            f"Received: attributions with shape {attr.shape}"
        )
    (base,) = _core.broadcast_baselines(baselines, xs, dtype=None)
    base = base.astype(x.dtype)
    batch = x.shape[0]
    flat = attr.reshape(batch, -1)
    n_feat = flat.shape[1]
    order = np.argsort(-flat, axis=1, kind="stable")  # most important first
    counts = np.round(np.linspace(0, n_feat, steps + 1)).astype(int)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(n_feat)[None].repeat(batch, 0), axis=1)
    trail = x.shape[attr.ndim :]
    rows = []
    for c in counts:
        sel = (rank < c).reshape(attr.shape + (1,) * len(trail))
        sel = np.broadcast_to(sel, x.shape)
        rows.append(np.where(sel, base, x) if kind == "deletion" else np.where(sel, x, base))
    stacked = np.concatenate(rows, axis=0)
    scorer = _scorer_for(model)
    tgt = scorer._target(target, xs)
    rep = _core.TargetSpec(np.tile(tgt.indices, steps + 1), tgt.fn)
    scores = scorer((stacked,), rep, internal_batch_size).reshape(steps + 1, batch).T
    fractions = counts / n_feat
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
        n_steps: Number of stages after the unperturbed one.
        internal_batch_size: Rows per model call.

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
        "deletion", model, inputs, attributions, target, baselines, n_steps, internal_batch_size
    )


def insertion_curve(
    model,
    inputs: Inputs,
    attributions,
    target: Target = None,
    baselines=None,
    n_steps: int = 10,
    internal_batch_size: int | None = None,
) -> PerturbationCurve:
    """Score as the most-attributed features are inserted into the baseline.

    Same arguments as `deletion_curve`; starts from the baseline and
    restores the features most important first (higher `auc` is better).
    """
    return _curve(
        "insertion", model, inputs, attributions, target, baselines, n_steps, internal_batch_size
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


def _randomize_layer(layer, rng):
    for w in layer.weights:
        if not w.trainable:
            continue
        val = np.asarray(w.numpy())
        std = float(val.std()) if val.size > 1 and val.std() > 0 else 0.1
        w.assign(rng.normal(0.0, std, size=val.shape).astype(val.dtype))


def randomization_sanity_check(
    model: keras.Model,
    explain,
    absolute: bool = True,
    seed: int | None = 0,
    layers=None,
) -> list:
    """Cascading model-parameter randomization test (Adebayo et al., 2018).

    A copy of the model is randomized layer by layer from the output down
    (each trainable weight redrawn from a normal with the weight's own
    standard deviation, seeded); after each stage the explanation is
    recomputed and compared with the original one by the Spearman rank
    correlation (mean over examples). A method that is sensitive to the
    model's parameters shows correlations dropping towards 0.

    Args:
        model: A Keras model that `keras.models.clone_model` can copy.
        explain: `explain(model) -> attributions (B, ...)`, e.g.
            `lambda m: Saliency(m).attribute(x, target=t)`.
        absolute: Compare absolute values of the attributions (as in the
            paper). For methods that multiply by the input (IG,
            InputXGradient) the absolute values keep the input's magnitude
            pattern even for a random model; compare them signed
            (`absolute=False`) as well.
        seed: Seed of the randomization.
        layers: Layers (names) to randomize, output first; default: every
            layer with trainable weights, from the output down.

    Returns:
        A list of `(stage, spearman)`: `("original", 1.0)` then one entry per
        randomized layer name (cumulative).

    References:
        - [Adebayo et al., 2018, Sanity Checks for Saliency
          Maps](https://arxiv.org/abs/1810.03292)
    """
    reference = np.asarray(explain(model))
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    if layers is None:
        stages = [layer for layer in reversed(copy.layers) if layer.trainable_weights]
    else:
        stages = [copy.get_layer(name if isinstance(name, str) else name.name) for name in layers]
    rng = np.random.default_rng(seed)
    f = np.abs if absolute else (lambda t: t)
    results = [("original", 1.0)]
    for layer in stages:
        _randomize_layer(layer, rng)
        attr = np.asarray(explain(copy))
        results.append((layer.name, float(spearman(f(reference), f(attr)).mean())))
    return results
