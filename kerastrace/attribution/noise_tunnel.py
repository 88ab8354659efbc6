"""NoiseTunnel: SmoothGrad, SmoothGrad-squared and VarGrad over any gradient method."""

from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf

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


@tf.function(reduce_retracing=True)
def _noisy_copies(x, n, start, count, sd, seed):
    """Samples `start:start+count` of `n` noisy copies of `x`, example-major `(B*count, ...)`."""
    shape = tf.shape(x)
    noise = tf.random.stateless_normal(tf.concat([[n], shape], 0), seed=seed, stddev=sd)
    noise = noise[start : start + count]  # (count, B, ...)
    perm = tf.concat([[1, 0], tf.range(2, tf.rank(noise))], 0)
    noise = tf.transpose(noise, perm)  # (B, count, ...)
    rep = tf.expand_dims(x, 1) + noise
    return tf.reshape(rep, tf.concat([[shape[0] * count], shape[1:]], 0))


class NoiseTunnel(Attribution):
    """Average an attribution method over Gaussian-noised copies of the inputs.

    For each example, `nt_samples` noisy copies `x + N(0, stdevs^2)` are
    explained with the wrapped method (all copies of a batch go through the
    wrapped method's compiled engine together, `nt_samples_batch_size`
    samples per example at a time) and combined:

    - `smoothgrad`: mean of the attributions,
    - `smoothgrad_sq`: mean of the squared attributions,
    - `vargrad`: variance of the attributions.

    The noise comes from TensorFlow's counter-based
    `tf.random.stateless_normal` keyed by `seed`, so the result depends on the
    seed, not on `nt_samples_batch_size` or `internal_batch_size`.

    Args:
        attribution_method: A `GradientAttribution` instance (e.g.
            `Saliency(model)`, `IntegratedGradients(model)`).

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
            stdevs: Standard deviation of the noise, one number or one per input.
            seed: Seed of the noise.
            target: As in the wrapped method.
            **kwargs: Passed to the wrapped method's `attribute` (e.g.
                `baselines`, `n_steps`, `method`, `abs`, `internal_batch_size`).

        Returns:
            Numpy array(s) of the input's shape.

        Raises:
            ValueError: for invalid arguments (see the wrapped method too).
        """
        v.check_one_of("nt_type", nt_type, NT_TYPES)
        n = v.check_positive_int("nt_samples", nt_samples)
        per = v.check_optional_positive_int("nt_samples_batch_size", nt_samples_batch_size) or n
        if kwargs.pop("return_convergence_delta", False):
            raise ValueError(
                "Received an invalid value for argument `return_convergence_delta`: "
                "NoiseTunnel does not return a delta; compute it with "
                "`kerastrace.attribution.metrics.convergence_delta` if needed."
            )
        inner = self.attribution_method
        xs, is_tuple = inner._prepare(inputs)
        sds = _stdevs(stdevs, len(xs))
        tgt = inner._target(target, xs)
        batch = xs[0].shape[0]
        if "baselines" in kwargs:
            kwargs["baselines"] = _core.broadcast_baselines(kwargs["baselines"], xs)
        # Noise for all samples up front from a counter-based generator: fast, and the
        # result depends on the seed only, not on how the samples are batched.
        if seed is None:
            seed = int(np.random.default_rng().integers(2**31 - 1))
        sums = [np.zeros(x.shape, np.float64) for x in xs]
        sqs = [np.zeros(x.shape, np.float64) for x in xs]
        for start in range(0, n, per):
            s = min(per, n - start)
            noisy = []
            for j, (x, sd) in enumerate(zip(xs, sds)):
                if sd > 0:
                    rep = _noisy_copies(x, n, start, s, np.float32(sd), (int(seed), j)).numpy()
                else:
                    rep = np.repeat(x, s, axis=0)
                noisy.append(rep)
            kw = dict(kwargs)
            if "baselines" in kw:
                kw["baselines"] = tuple(np.repeat(b, s, axis=0) for b in kw["baselines"])
            attrs = inner._compute(tuple(noisy), tgt.repeat(s), **kw)
            for j, a in enumerate(attrs):
                a = np.asarray(a, np.float64).reshape(batch, s, *a.shape[1:])
                sums[j] += a.sum(axis=1)
                sqs[j] += (a * a).sum(axis=1)
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
        return _core.restore(out, is_tuple)
