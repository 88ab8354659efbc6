"""GradientShap (expected gradients with input noise)."""

from __future__ import annotations

import numpy as np

from kerastrace._utils import validation as v
from kerastrace._utils.types import Inputs, Target
from kerastrace.attribution import _core
from kerastrace.attribution._base import GradientAttribution
from kerastrace.attribution.noise_tunnel import _stdevs


class GradientShap(GradientAttribution):
    """SHAP values approximated by expected gradients.

    For each example and each of `n_samples` samples, a baseline `b` is drawn
    from `baselines` (a distribution given as a batch of reference inputs),
    Gaussian noise of scale `stdevs` is added to the input, a point
    `b + a (x_noisy - b)` with `a ~ U(0, 1)` is drawn, and the attribution is
    the mean over samples of `grad * (x_noisy - b)`. All samples of the batch
    go through one compiled engine call, chunked by `internal_batch_size`.

    Args:
        model: A Keras model or a callable.
        multiply_by_inputs: If False, return the mean gradient only.

    Example:

    >>> import numpy as np, keras
    >>> from kerastrace.attribution import GradientShap
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    >>> model.layers[0].set_weights([np.array([[3.0], [-1.0]])])
    >>> refs = np.array([[0.0, 0.0], [1.0, 1.0]], "float32")   # mean (0.5, 0.5)
    >>> attr, delta = GradientShap(model).attribute(np.array([[1.0, 2.0]], "float32"),
    ...     baselines=refs, n_samples=4, seed=0, return_convergence_delta=True)
    >>> attr.shape, bool(abs(delta[0]) < 1e-5)
    ((1, 2), True)

    References:
        - [Lundberg & Lee, 2017, A Unified Approach to Interpreting Model
          Predictions](https://arxiv.org/abs/1705.07874)
        - [Erion et al., 2019, Learning Explainable Models Using Attribution
          Priors](https://arxiv.org/abs/1906.10670)
    """

    has_convergence_delta = True
    multiplies_by_inputs = True

    def __init__(self, model, multiply_by_inputs: bool = True):
        super().__init__(model)
        self.multiplies_by_inputs = v.check_bool("multiply_by_inputs", multiply_by_inputs)

    def attribute(
        self,
        inputs: Inputs,
        baselines,
        n_samples: int = 5,
        stdevs=0.0,
        target: Target = None,
        internal_batch_size: int | None = None,
        return_convergence_delta: bool = False,
        seed: int | None = None,
        additional_forward_args=None,
    ):
        """Compute GradientShap attributions.

        Args:
            inputs: Array/tensor `(B, ...)` or a tuple of them.
            baselines: Reference inputs `(K, ...)` to draw baselines from (a
                tuple with one array per input for tuple inputs; all with
                the same K).
            n_samples: Samples per example.
            stdevs: Noise scale added to the inputs (one number or one per input).
            target: As in `IntegratedGradients.attribute`.
            internal_batch_size: Samples per model call (default: all).
            return_convergence_delta: Also return per example
                `sum(attr) - mean_s (f(x_noisy_s) - f(b_s))`.
            seed: Seed for baselines, noise and path points.
            additional_forward_args: Model inputs passed through unchanged
                (see `IntegratedGradients.attribute`). For dict inputs,
                `baselines` is a dict of reference arrays by key.

        Returns:
            Attributions of the inputs' shape, or `(attributions, delta)`.

        Raises:
            ValueError: for baselines whose per-example shape differs from the
                inputs', and the errors of `IntegratedGradients`.
        """
        n = _core.check_samples("n_samples", n_samples)
        self._check_delta_request(return_convergence_delta)
        chunk = self._batch_size(internal_batch_size)
        xs, ctx, layout = self._prepare(inputs, additional_forward_args=additional_forward_args)
        sds = _stdevs(stdevs, len(xs))
        if isinstance(baselines, dict):
            keys = [layout.keys[i] for i in layout.diff]
            if layout.kind != "dict" or sorted(map(str, baselines)) != sorted(map(str, keys)):
                raise v.invalid("baselines", f"a dict of reference arrays for keys {keys}",
                                baselines)
            baselines = tuple(baselines[k] for k in keys)
        refs = baselines if isinstance(baselines, (tuple, list)) else (baselines,)
        if len(refs) != len(xs):
            raise v.invalid("baselines", f"one reference array per input ({len(xs)})", baselines)
        refs = tuple(np.asarray(r, np.float32) for r in refs)
        for i, (r, x) in enumerate(zip(refs, xs)):
            if r.ndim == x.ndim - 1:
                refs = refs[:i] + (r[None],) + refs[i + 1 :]
                r = refs[i]
            if r.shape[1:] != x.shape[1:] or r.shape[0] != refs[0].shape[0]:
                raise ValueError(
                    "Received an invalid value for argument `baselines`: expected reference "
                    f"inputs of shape (K, {', '.join(map(str, x.shape[1:]))}) with the same K "
                    f"for every input. Received: baselines with shape {r.shape}"
                )
        _core.check_finite(refs, name="baselines")
        tgt = self._target(target, layout.merge(xs, ctx), layout)
        rng = np.random.default_rng(seed)
        batch = xs[0].shape[0]
        g = batch * n
        pick = rng.integers(0, refs[0].shape[0], size=g)
        alphas = rng.uniform(0.0, 1.0, size=(g, 1)).astype(np.float32)
        noisy = []
        for x, sd in zip(xs, sds):
            rep = np.repeat(x, n, axis=0)
            if sd > 0:
                rep = rep + rng.normal(0.0, sd, size=rep.shape).astype(np.float32)
            noisy.append(rep)
        bases = tuple(r[pick] for r in refs)
        rep_ctx = tuple(np.repeat(c, n, axis=0) for c in ctx)
        rep_t = tgt.repeat(n)
        mode = _core.MODE_X_MINUS_BASE if self.multiplies_by_inputs else _core.MODE_GRAD
        def where(g):
            return f"example {g // n}, sample {g % n}"

        plan = _core.Plan(
            tuple(noisy), bases, rep_t, alphas, np.ones_like(alphas), (mode,) * len(xs),
            internal_batch_size=chunk, ctx=rep_ctx, layout=layout, where=where,
        )
        per_sample = self._execute(plan)  # one attribution per (example, sample)
        attrs = tuple(
            a.reshape(batch, n, *a.shape[1:]).mean(axis=1).astype(np.float32) for a in per_sample
        )
        out = _core.restore(attrs, layout)
        if not return_convergence_delta:
            return out
        f_x = self._scores(layout.merge(noisy, rep_ctx), rep_t, layout=layout,
                           where=lambda g: where(g) + " (noisy input)")
        f_b = self._scores(layout.merge(bases, rep_ctx), rep_t, layout=layout,
                           where=lambda g: where(g) + " (baseline)")
        diff = f_x.astype(np.float64) - f_b
        total = sum(a.reshape(batch, -1).sum(axis=1).astype(np.float64) for a in attrs)
        delta = total - diff.reshape(batch, n).mean(axis=1)
        return out, delta.astype(np.float32)
