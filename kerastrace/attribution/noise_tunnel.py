"""NoiseTunnel: SmoothGrad, SmoothGrad-squared and VarGrad over any gradient method."""

from __future__ import annotations

import numbers

import numpy as np

from kerastrace._utils import validation as v
from kerastrace._utils.types import Inputs, Target
from kerastrace.attribution import _core
from kerastrace.attribution._base import Attribution, GradientAttribution

NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")


def _stdevs(stdevs, n):
    vals = tuple(stdevs) if isinstance(stdevs, (tuple, list)) else (stdevs,) * n
    if len(vals) != n:
        raise v.invalid("stdevs", f"a number or one number per input ({n})", stdevs)
    for s in vals:
        if not isinstance(s, numbers.Real) or isinstance(s, bool) or not np.isfinite(s) or s < 0:
            raise v.invalid("stdevs", "finite non-negative number(s)", stdevs)
    return tuple(float(s) for s in vals)


class NoiseTunnel(Attribution):
    """Average an attribution method over Gaussian-noised copies of the inputs.

    For each example, `nt_samples` noisy copies `x + N(0, stdevs^2)` are
    explained with the wrapped method and combined:

    - `smoothgrad`: mean of the attributions,
    - `smoothgrad_sq`: mean of the squared attributions,
    - `vargrad`: variance of the attributions.

    The samples run inside the wrapped method's compiled engine: the noise is
    drawn there (TensorFlow's counter-based Philox generator keyed by `seed`),
    the copies go through the model in chunks of `internal_batch_size` rows,
    and the attributions are summed per example there, so nothing per sample
    comes back to Python. A sample's noise depends on the seed only, so the
    result does not change with `nt_samples_batch_size` or
    `internal_batch_size`. For `Saliency`-like methods the noise is drawn per
    chunk, so memory grows with the chunk size, not with `nt_samples`.

    Layer methods (`LayerIntegratedGradients`, `LayerGradientXActivation`)
    can be wrapped too: the noise is then added to the layer's activation
    (e.g. the token embedding), which is how SmoothGrad explains token-id
    models whose integer inputs cannot be perturbed.

    Args:
        attribution_method: A `GradientAttribution` instance (e.g.
            `Saliency(model)`, `IntegratedGradients(model)`,
            `LayerGradientXActivation(model, "embedding")`). `GradientShap`
            draws its own noise (`stdevs=`) and cannot be wrapped.

    Example:

    >>> import numpy as np, keras
    >>> from kerastrace.attribution import NoiseTunnel, Saliency
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    >>> model.layers[0].set_weights([np.array([[2.0], [-1.0], [0.5]])])
    >>> nt = NoiseTunnel(Saliency(model))
    >>> nt.attribute(np.zeros((1, 3), "float32"), nt_samples=8, stdevs=0.5, seed=0)
    array([[2. , 1. , 0.5]], dtype=float32)

    References:
        - [Smilkov et al., 2017, SmoothGrad](https://arxiv.org/abs/1706.03825)
        - [Adebayo et al., 2018, Local Explanation Methods for Deep Neural
          Networks Lack Sensitivity to Parameter Values](https://arxiv.org/abs/1810.03307)
    """

    def __init__(self, attribution_method: GradientAttribution):
        if not isinstance(attribution_method, GradientAttribution):
            raise TypeError(
                "Received an invalid value for argument `attribution_method`, expected a "
                "kerastrace GradientAttribution instance such as Saliency(model). "
                f"Received: attribution_method={attribution_method!r}"
            )
        if type(attribution_method)._plan is GradientAttribution._plan:
            raise TypeError(
                "Received an invalid value for argument `attribution_method`: "
                f"{type(attribution_method).__name__} cannot be wrapped by NoiseTunnel (it "
                "draws its own samples; GradientShap takes `stdevs` itself). Received: "
                f"attribution_method={attribution_method!r}"
            )
        self.attribution_method = attribution_method
        super().__init__(attribution_method.model)
        self.multiplies_by_inputs = attribution_method.multiplies_by_inputs

    def attribute(
        self,
        inputs: Inputs,
        nt_type: str = "smoothgrad",
        nt_samples: int = 5,
        nt_samples_batch_size: int | None = None,
        stdevs=1.0,
        seed: int | None = None,
        target: Target = None,
        **kwargs,
    ):
        """Compute the noise-tunnel attribution.

        Args:
            inputs: Array/tensor `(B, ...)` or a tuple of them.
            nt_type: `smoothgrad`, `smoothgrad_sq` or `vargrad`.
            nt_samples: Noisy samples per example.
            nt_samples_batch_size: Samples per example sent to the wrapped
                method at once (default: all).
            stdevs: Standard deviation of the noise, one number or one per input
                (for layer methods: in the units of the layer's activation).
            seed: Seed of the noise (a non-negative integer; default: random).
            target: As in the wrapped method.
            **kwargs: Passed to the wrapped method's `attribute` (e.g.
                `baselines`, `n_steps`, `method`, `abs`, `internal_batch_size`).

        Returns:
            Numpy array(s) of the input's shape.

        Raises:
            ValueError: for invalid arguments (`nt_samples` at most 100,000;
                see the wrapped method too), or a model output
                or gradient that is NaN or inf for some noisy sample (the
                error names the example and the sample).
        """
        v.check_one_of("nt_type", nt_type, NT_TYPES)
        n = _core.check_samples("nt_samples", nt_samples)
        per = v.check_optional_positive_int("nt_samples_batch_size", nt_samples_batch_size) or n
        if kwargs.pop("return_convergence_delta", False):
            raise ValueError(
                "Received an invalid value for argument `return_convergence_delta`: "
                "NoiseTunnel does not return a delta; compute it with "
                "`kerastrace.attribution.metrics.convergence_delta` if needed."
            )
        if seed is None:
            seed = int(np.random.default_rng().integers(2**31 - 1))
        elif isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not (
            0 <= seed < 2**63
        ):
            raise v.invalid("seed", "None or a non-negative integer", seed)
        inner = self.attribution_method
        plan, layout = inner._plan(inputs, target=target, **kwargs)
        sds = _stdevs(stdevs, len(plan.xs))
        # The noise is drawn inside the compiled engine from a counter-based
        # generator keyed by the seed: the result depends on the seed only, not on
        # how the samples are split into blocks (`nt_samples_batch_size`) or chunks.
        need_sq = nt_type != "smoothgrad"
        totals = None  # float64 sums (then sums of squares) over the sample blocks
        for start in range(0, n, per):
            got = inner._execute(
                plan, noise=(sds, int(seed), start, min(per, n - start)), squares=need_sq
            )
            parts = [np.asarray(a, np.float64) for a in (got[0] + got[1] if need_sq else got)]
            totals = parts if totals is None else [t + p for t, p in zip(totals, parts)]
        k = len(plan.xs)
        sums, sqs = totals[:k], (totals[k:] if need_sq else totals[:k])
        out = []
        for sm, sq in zip(sums, sqs):
            mean = sm / n
            if nt_type == "smoothgrad":
                res = mean
            elif nt_type == "smoothgrad_sq":
                res = sq / n
            else:
                res = np.maximum(sq / n - mean * mean, 0.0)
            out.append(res.astype(np.float32))
        return _core.restore(out, layout)
