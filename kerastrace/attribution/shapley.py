"""Shapley values: permutation sampling (antithetic) and exact enumeration."""

from __future__ import annotations

import math

import numpy as np

from kerastrace._utils import validation as v
from kerastrace._utils.types import Inputs, Target
from kerastrace.attribution._perturbation import (
    PerturbationAttribution,
    check_seed,
    endpoints,
)

#: Captum's default number of permutations.
DEFAULT_PERMUTATIONS = 25
#: `ShapleyValues` refuses more features than this (it evaluates 2**F coalitions).
MAX_EXACT_FEATURES = 20


def permutations(rng, n_features, n):
    """`n` permutations of `range(n_features)`, in antithetic pairs `(p, reversed(p))`."""
    out = np.empty((n, n_features), np.int64)
    for i in range(n):
        out[i] = rng.permutation(n_features) if i % 2 == 0 else out[i - 1][::-1]
    return out


def permutation_coalitions(perms):
    """The inner prefix coalitions of each permutation: `(n * (F - 1), F)` bool.

    Row `i * (F - 1) + k - 1` holds the first `k` features of permutation `i`
    (`k = 1 .. F - 1`); the empty and the full coalition are shared by all
    permutations and evaluated once.
    """
    n, f = perms.shape
    ranks = np.argsort(perms, axis=1)  # ranks[i, feature] = its position in permutation i
    sizes = np.arange(1, f)
    return (ranks[:, None, :] < sizes[None, :, None]).reshape(n * (f - 1), f)


def permutation_shapley(perms, inner, f_x, f_0):
    """Mean marginal contributions along the permutations (efficiency holds exactly).

    Along each permutation the contributions telescope to `f_x - f_0`, so
    their mean over the permutations sums to `f_x - f_0` as well.
    """
    n, f = perms.shape
    chain = np.empty((n, f + 1))
    chain[:, 0], chain[:, -1] = f_0, f_x
    chain[:, 1:-1] = np.reshape(inner, (n, f - 1))
    phi = np.zeros(f)
    np.add.at(phi, perms, np.diff(chain, axis=1))
    return phi / n


class ShapleyValueSampling(PerturbationAttribution):
    """Shapley values estimated by sampling feature permutations.

    For each permutation of an example's `F` features, the features are added
    one by one to the baseline, and each gets the score change its addition
    causes; the attribution is the mean over permutations (Castro et al.,
    2009; Štrumbelj & Kononenko, 2010). Permutations come in antithetic
    pairs (a permutation and its reverse), which cancels much of the
    sampling error of near-additive models. Along every permutation the
    contributions telescope to `f(x) - f(baseline)`, so the scores satisfy
    efficiency exactly for any number of permutations: they sum to
    `f(x) - f(baseline)`, where "baseline" means every feature removed.

    Cost: the baseline and the input are evaluated once, each permutation
    adds `F - 1` evaluations: `2 + n_samples * (F - 1)` per example. With
    `max_evals` the number of permutations is the largest that fits the
    budget. All rows of one call go through one compiled forward function.

    Args:
        model: A Keras model or a callable.

    Example:

    >>> import numpy as np, tensorflow as tf
    >>> from kerastrace.attribution import ShapleyValueSampling
    >>> f = lambda x: (x[:, :1] * x[:, 1:2] + x[:, 2:3])  # f = x0 * x1 + x2
    >>> attr, info = ShapleyValueSampling(f).attribute(
    ...     np.array([[2.0, 3.0, 1.0]], "float32"), n_samples=2, seed=0, return_info=True)
    >>> attr  # the interaction x0 * x1 = 6 is split evenly
    array([[3., 3., 1.]], dtype=float32)
    >>> info.evaluations, info.delta
    (array([6]), array([0.], dtype=float32))

    References:
        - [Castro et al., 2009, Polynomial calculation of the Shapley value
          based on sampling](https://doi.org/10.1016/j.cor.2008.04.004)
        - [Štrumbelj & Kononenko, 2010, An Efficient Explanation of Individual
          Classifications using Game Theory](https://jmlr.org/papers/v11/strumbelj10a.html)
        - [Captum ShapleyValueSampling](https://captum.ai/api/shapley_value_sampling.html)
    """

    def attribute(
        self,
        inputs: Inputs,
        baselines=None,
        target: Target = None,
        additional_forward_args=None,
        feature_mask=None,
        n_samples: int | None = None,
        max_evals: int | None = None,
        perturbations_per_eval: int | None = None,
        seed: int | None = None,
        mask_padding: bool = False,
        return_input_shape: bool = True,
        return_info: bool = False,
    ):
        """Estimate Shapley values by permutation sampling.

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
            n_samples: Number of permutations per example (default 25, as
                Captum); odd counts end with an unpaired permutation.
            max_evals: Instead of `n_samples`: the budget of model evaluations
                per example; the permutations are as many as fit
                (`(max_evals - 2) // (F - 1)`), at least 1.
            perturbations_per_eval: Perturbed copies of each example per
                model call (`perturbations_per_eval * B` rows); default: 256
                rows per call.
            seed: Seed of the permutations; the same seed gives the same
                result (each example draws from its own generator seeded with
                it, so a batch gives the same scores as its examples alone).
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
            ValueError: for both `n_samples` and `max_evals`, a budget below
                `F + 1`, a bad feature mask, target or option.
        """
        if n_samples is not None and max_evals is not None:
            raise ValueError(
                "Received an invalid value for argument `max_evals`: give either `n_samples` "
                f"(permutations) or `max_evals` (model evaluations), not both. Received: "
                f"n_samples={n_samples!r}, max_evals={max_evals!r}"
            )
        if max_evals is not None:
            max_evals = v.check_positive_int("max_evals", max_evals)
        else:
            n_samples = v.check_positive_int(
                "n_samples", DEFAULT_PERMUTATIONS if n_samples is None else n_samples
            )
        seed = check_seed(seed)
        problem = self._problem(
            inputs, baselines, target, feature_mask, additional_forward_args,
            perturbations_per_eval, mask_padding,
        )
        if max_evals is not None:
            need = int(problem.n_features.max()) + 1
            if max_evals < need:
                raise ValueError(
                    "Received an invalid value for argument `max_evals`, expected at least "
                    f"F + 1 = {need} (the input, the baseline and one permutation of the "
                    f"{need - 1} features). Received: max_evals={max_evals}"
                )
        return self._run(
            problem, return_input_shape, return_info,
            n_samples=n_samples, max_evals=max_evals, seed=seed,
        )

    def _coalitions(self, problem, b, n_features, n_samples, max_evals, seed):
        f = n_features
        if max_evals is not None:
            n_samples = max(1, (max_evals - 2) // (f - 1)) if f > 1 else 1
        ends = endpoints(f)
        if f == 1:
            return ends, lambda s: (np.array([s[0] - s[1]]), (s[0], s[1], n_samples))
        perms = permutations(np.random.default_rng(seed), f, n_samples)
        rows = np.concatenate([ends, permutation_coalitions(perms)])

        def combine(scores):
            phi = permutation_shapley(perms, scores[2:], scores[0], scores[1])
            return phi, (scores[0], scores[1], n_samples)

        return rows, combine


def all_coalitions(n_features):
    """All `2**F` coalitions, row `k` holding the bits of `k` (feature `i` = bit `i`)."""
    codes = np.arange(2**n_features, dtype=np.int64)
    return ((codes[:, None] >> np.arange(n_features)) & 1).astype(bool)


def exact_shapley(values, n_features):
    """Shapley values from the scores of all `2**F` coalitions (ordered as `all_coalitions`)."""
    f = n_features
    codes = np.arange(2**f, dtype=np.int64)
    size = ((codes[:, None] >> np.arange(f)) & 1).sum(axis=1)
    # weight of a coalition S of size s that excludes i: s! (F - s - 1)! / F!
    weight = np.array(
        [math.factorial(s) * math.factorial(f - s - 1) / math.factorial(f) if s < f else 0.0
         for s in range(f + 1)]
    )
    values = np.asarray(values, np.float64)
    phi = np.zeros(f)
    for i in range(f):
        without = codes[(codes >> i) & 1 == 0]
        phi[i] = np.sum(weight[size[without]] * (values[without | (1 << i)] - values[without]))
    return phi


class ShapleyValues(PerturbationAttribution):
    """Exact Shapley values by evaluating all `2**F` coalitions of the features.

    `phi_i = sum_{S without i} |S|! (F - |S| - 1)! / F! (f(S + i) - f(S))`,
    where `f(S)` is the target score with the features outside `S` replaced
    by the baseline. Exact, so it is the reference the sampling methods are
    measured against; the cost doubles with every feature, hence the limit
    of 20 features: group elements with `feature_mask` (words, superpixels)
    or use `ShapleyValueSampling` / `KernelShap`.

    Args:
        model: A Keras model or a callable.

    Example:

    >>> import numpy as np
    >>> from kerastrace.attribution import ShapleyValues
    >>> f = lambda x: x[:, :1] * x[:, 1:2] + x[:, 2:3]  # f = x0 * x1 + x2
    >>> attr, info = ShapleyValues(f).attribute(np.array([[2.0, 3.0, 1.0]], "float32"),
    ...                                         return_info=True)
    >>> attr, info.evaluations
    (array([[3., 3., 1.]], dtype=float32), array([8]))

    References:
        - [Shapley, 1953, A Value for n-Person Games](https://doi.org/10.1515/9781400881970-018)
        - [Captum ShapleyValues](https://captum.ai/api/shapley_value_sampling.html)
    """

    def attribute(
        self,
        inputs: Inputs,
        baselines=None,
        target: Target = None,
        additional_forward_args=None,
        feature_mask=None,
        perturbations_per_eval: int | None = None,
        mask_padding: bool = False,
        return_input_shape: bool = True,
        return_info: bool = False,
    ):
        """Compute exact Shapley values (`2**F` evaluations per example).

        Args:
            inputs: As in `ShapleyValueSampling.attribute`.
            baselines: As in `ShapleyValueSampling.attribute`.
            target: As in `ShapleyValueSampling.attribute`.
            additional_forward_args: As in `ShapleyValueSampling.attribute`.
            feature_mask: As in `ShapleyValueSampling.attribute`; at most 20
                features per example.
            perturbations_per_eval: As in `ShapleyValueSampling.attribute`.
            mask_padding: As in `ShapleyValueSampling.attribute`.
            return_input_shape: As in `ShapleyValueSampling.attribute`.
            return_info: As in `ShapleyValueSampling.attribute`.

        Returns:
            Float32 array(s) in the inputs' structure (or `(B, F)`), and the
            `PerturbationInfo` with `return_info=True`.

        Raises:
            ValueError: for more than 20 features, a bad feature mask, target
                or option.
        """
        problem = self._problem(
            inputs, baselines, target, feature_mask, additional_forward_args,
            perturbations_per_eval, mask_padding,
        )
        most = int(problem.n_features.max())
        if most > MAX_EXACT_FEATURES:
            raise ValueError(
                "Received an invalid value for argument `feature_mask`: exact Shapley values "
                f"evaluate 2**F coalitions, and an example has F = {most} features (at most "
                f"{MAX_EXACT_FEATURES}). Group the elements into fewer features, or use "
                "`ShapleyValueSampling` or `KernelShap`."
            )
        return self._run(problem, return_input_shape, return_info)

    def _coalitions(self, problem, b, n_features):
        rows = all_coalitions(n_features)

        def combine(scores):
            phi = exact_shapley(scores, n_features)
            return phi, (scores[-1], scores[0], 2**n_features)

        return rows, combine
