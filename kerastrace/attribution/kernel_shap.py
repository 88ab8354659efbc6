"""KernelSHAP: Shapley values by weighted linear regression over coalitions."""

from __future__ import annotations

import itertools
import math

import numpy as np

from kerastrace._utils import validation as v
from kerastrace._utils.types import Inputs, Target
from kerastrace.attribution._perturbation import (
    PerturbationAttribution,
    check_seed,
    endpoints,
)


def kernel_weight(n_features, size):
    """The Shapley kernel `(F - 1) / (C(F, s) s (F - s))` of one coalition of `size`."""
    return (n_features - 1) / (math.comb(n_features, size) * size * (n_features - size))


def sample_coalitions(rng, n_features, budget):
    """Coalitions and regression weights for KernelSHAP with `budget` evaluations.

    The algorithm of Lundberg & Lee's `shap.KernelExplainer`: coalition
    sizes are visited from the outside in (1 and F-1, then 2 and F-2, ...),
    and every size whose share of the Shapley kernel's mass pays for all its
    coalitions is enumerated completely with its exact kernel weight; the
    remaining budget samples the other sizes in proportion to their kernel
    mass, uniformly within a size, each coalition followed by its complement
    (paired sampling). A coalition drawn twice is evaluated once and counts
    twice; drawing goes on until the budget is spent. With
    `budget >= 2**F - 2` every proper coalition is enumerated.

    Returns:
        `(coalitions, weights)`: `(n, F)` bool, `n = min(budget, 2**F - 2)`
        distinct proper coalitions (neither empty nor full), and `(n,)`
        float64 weights.
    """
    f = n_features
    if f < 2:
        return np.zeros((0, f), bool), np.zeros(0)
    if f < 62 and budget >= 2**f - 2:  # every proper coalition, with its exact kernel weight
        z = np.arange(1, 2**f - 1, dtype=np.int64)
        rows = ((z[:, None] >> np.arange(f)) & 1).astype(bool)
        sizes = rows.sum(axis=1)
        return rows, np.array([kernel_weight(f, int(k)) for k in sizes])
    n_sizes = math.ceil((f - 1) / 2)
    n_paired = (f - 1) // 2
    mass = np.array([(f - 1) / (s * (f - s)) for s in range(1, n_sizes + 1)])
    mass[:n_paired] *= 2
    mass /= mass.sum()
    rows, weights = [], []
    left = budget
    remaining = mass.copy()
    n_full = 0
    for size in range(1, n_sizes + 1):
        count = math.comb(f, size) * (2 if size <= n_paired else 1)
        if left * remaining[size - 1] / count < 1.0 - 1e-8:
            break
        n_full += 1
        left -= count
        if remaining[size - 1] < 1.0:
            remaining /= 1.0 - remaining[size - 1]
        w = mass[size - 1] / math.comb(f, size) / (2 if size <= n_paired else 1)
        for members in itertools.combinations(range(f), size):
            z = np.zeros(f, bool)
            z[list(members)] = True
            rows.append(z)
            weights.append(w)
            if size <= n_paired:
                rows.append(~z)
                weights.append(w)
    n_fixed = len(rows)
    if n_full < n_sizes and left > 0:
        probs = mass[n_full:].copy()
        probs[: max(0, n_paired - n_full)] /= 2  # each paired draw brings its complement
        probs /= probs.sum()
        seen: dict[bytes, tuple] = {}
        # Draw until the budget is spent: a repeat costs nothing, it only counts again.
        # (There are more distinct coalitions left than budget, so this ends; the cap
        # only guards against pathological luck.)
        n_draws, cap = 0, 100 * budget + 1000
        while left > 0 and n_draws < cap:
            draws = rng.choice(len(probs), size=2 * left, p=probs)
            n_draws += len(draws)
            for ind in draws:
                if left <= 0:
                    break
                size = int(ind) + n_full + 1
                z = np.zeros(f, bool)
                z[rng.permutation(f)[:size]] = True
                key = z.tobytes()
                if key in seen:
                    first, added = seen[key]
                    for k in range(added):
                        weights[first + k] += 1.0
                    continue
                pair = ([z, ~z] if size <= n_paired else [z])[:left]
                seen[key] = (len(rows), len(pair))
                rows.extend(pair)
                weights.extend([1.0] * len(pair))
                left -= len(pair)
        # The sampled coalitions share the kernel mass the enumerated sizes left.
        sampled = np.asarray(weights[n_fixed:])
        if sampled.size:
            scale = mass[n_full:].sum() / sampled.sum()
            weights[n_fixed:] = list(sampled * scale)
    if not rows:
        return np.zeros((0, f), bool), np.zeros(0)
    return np.stack(rows), np.asarray(weights, np.float64)


def solve_constrained(coalitions, weights, y, f_x, f_0):
    """Weighted least squares of `y - f_0` on the coalitions with `sum(phi) = f_x - f_0`.

    The constraint is enforced exactly by eliminating the last feature:
    `phi_F = (f_x - f_0) - sum(phi_1..F-1)`.
    """
    f = coalitions.shape[1]
    total = f_x - f_0
    if f == 1:
        return np.array([total])
    z = coalitions.astype(np.float64)
    target = (y - f_0) - z[:, -1] * total
    design = z[:, :-1] - z[:, -1:]
    sw = np.sqrt(weights)[:, None]
    head = np.linalg.lstsq(design * sw, target * sw[:, 0], rcond=None)[0]
    return np.append(head, total - head.sum())


class KernelShap(PerturbationAttribution):
    """KernelSHAP: Shapley values from a weighted linear fit over feature coalitions.

    The model is evaluated on coalitions `z` of the `F` features (removed
    features take the baseline value), and a linear model
    `g(z) = f(baseline) + sum_i phi_i z_i` is fitted to the scores by least
    squares weighted with the Shapley kernel
    `(F - 1) / (C(F, |z|) |z| (F - |z|))` (Lundberg & Lee, 2017), subject to
    efficiency, `sum_i phi_i = f(x) - f(baseline)`, which is enforced exactly
    as a constraint (`PerturbationInfo.delta` reports the residual: zero up to
    rounding). With all `2**F` coalitions (`n_samples >= 2**F`) the fit
    returns the exact Shapley values. Otherwise coalitions are chosen as
    `shap.KernelExplainer` does: the smallest and largest coalition sizes are
    enumerated completely while the budget pays for them, the rest is
    sampled in complementary pairs.

    `n_samples` is the budget of model evaluations per example, the input
    and the baseline included (Captum counts them among its samples too);
    `PerturbationInfo.evaluations` reports how many were spent (fewer when
    all coalitions fit, or when a sampled coalition repeats).

    Args:
        model: A Keras model or a callable.

    Example:

    >>> import numpy as np
    >>> from kerastrace.attribution import KernelShap
    >>> f = lambda x: x[:, :1] * x[:, 1:2] + x[:, 2:3]  # f = x0 * x1 + x2
    >>> attr, info = KernelShap(f).attribute(np.array([[2.0, 3.0, 1.0]], "float32"),
    ...                                      n_samples=8, return_info=True)
    >>> attr.round(4), info.evaluations   # all 2**3 coalitions: exact Shapley values
    (array([[3., 3., 1.]], dtype=float32), array([8]))

    References:
        - [Lundberg & Lee, 2017, A Unified Approach to Interpreting Model
          Predictions](https://arxiv.org/abs/1705.07874)
        - [Covert & Lee, 2021, Improving KernelSHAP: Practical Shapley Value
          Estimation via Linear Regression](https://arxiv.org/abs/2012.01536)
        - [Captum KernelShap](https://captum.ai/api/kernel_shap.html)
    """

    def attribute(
        self,
        inputs: Inputs,
        baselines=None,
        target: Target = None,
        additional_forward_args=None,
        feature_mask=None,
        n_samples: int | None = None,
        perturbations_per_eval: int | None = None,
        seed: int | None = None,
        mask_padding: bool = False,
        return_input_shape: bool = True,
        return_info: bool = False,
    ):
        """Estimate Shapley values by KernelSHAP.

        Args:
            inputs: An array/tensor `(B, ...)` (token ids allowed), a tuple of
                them, or a dict (keras-hub models: `token_ids` is perturbed,
                `padding_mask`/`segment_ids` pass through).
            baselines: The value a removed feature takes: a scalar, an array
                broadcastable to the input, a tuple (one per input) or a dict
                by key. Default 0 (the pad id for token ids).
            target: Output index (an int, one per example) or a callable
                `target(outputs) -> (B,)`.
            additional_forward_args: Model inputs passed through unchanged.
            feature_mask: Integer feature ids broadcastable to each input (a
                tuple for tuple inputs, a dict by key for dict inputs):
                elements with the same id form one feature; per example the
                ids are `0 .. F-1` without gaps, and `-1` marks elements
                never perturbed. Default: every scalar element is a feature.
            n_samples: Model evaluations per example, the input and the
                baseline included; at least `F + 1` (the fit has `F - 1`
                free coefficients). Default: `max(25, 2 * F + 2)`, capped at
                `2**F`.
            perturbations_per_eval: Perturbed copies of each example per
                model call (`perturbations_per_eval * B` rows); default: 256
                rows per call.
            seed: Seed of the sampled coalitions; the same seed gives the same
                result (each example draws from its own generator seeded with
                it).
            mask_padding: For keras-hub dict inputs: a removed token also gets
                `padding_mask = 0`.
            return_input_shape: Return arrays of the inputs' shapes where every
                element holds its feature's score (default); with False, one
                `(B, F)` float32 array of feature scores.
            return_info: Also return a `PerturbationInfo`:
                `(attributions, info)`.

        Returns:
            Float32 array(s) in the inputs' structure (or `(B, F)`), and the
            `PerturbationInfo` with `return_info=True`.

        Raises:
            ValueError: for `n_samples` below `F + 1`, a bad feature mask,
                target or option.
        """
        if n_samples is not None:
            n_samples = v.check_positive_int("n_samples", n_samples)
        seed = check_seed(seed)
        problem = self._problem(
            inputs, baselines, target, feature_mask, additional_forward_args,
            perturbations_per_eval, mask_padding,
        )
        most = int(problem.n_features.max())
        if n_samples is not None and n_samples < most + 1:
            raise ValueError(
                "Received an invalid value for argument `n_samples`, expected at least the "
                f"number of features + 1 = {most + 1} (the input, the baseline and F - 1 = "
                f"{most - 1} coalitions for the F - 1 free coefficients). Received: "
                f"n_samples={n_samples}"
            )
        return self._run(
            problem, return_input_shape, return_info, n_samples=n_samples, seed=seed
        )

    def _coalitions(self, problem, b, n_features, n_samples, seed):
        f = n_features
        if n_samples is None:
            n_samples = max(25, 2 * f + 2)
            if f < 62:
                n_samples = min(n_samples, 2**f)
        inner, weights = sample_coalitions(np.random.default_rng(seed), f, n_samples - 2)
        rows = np.concatenate([endpoints(f), inner])

        def combine(scores):
            f_x, f_0 = scores[0], scores[1]
            phi = solve_constrained(inner, weights, scores[2:], f_x, f_0)
            return phi, (f_x, f_0, len(inner))

        return rows, combine
