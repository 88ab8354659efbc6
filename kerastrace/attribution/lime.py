"""LIME: a local linear surrogate fitted on random feature coalitions."""

from __future__ import annotations

import numpy as np

from kerastrace._utils import validation as v
from kerastrace._utils.types import Inputs, Target
from kerastrace.attribution._perturbation import PerturbationAttribution, check_seed


def exp_cosine_similarity(kernel_width: float = 1.0):
    """LIME's default similarity: `exp(-d**2 / kernel_width**2)` with the cosine distance.

    `d = 1 - cos(z, 1)` is the cosine distance between a coalition `z` and
    the unperturbed input (all ones) in the binary interpretable space, i.e.
    `1 - sqrt(|z| / F)` (1 for the empty coalition). The kernel and width are
    Captum's defaults (`get_exp_kernel_similarity_function("cosine", 1.0)`),
    applied to the interpretable representation as the `lime` package does
    for text.

    Args:
        kernel_width: The kernel width, a positive number.

    Returns:
        `similarity(coalitions) -> weights`: `(n, F)` bool to `(n,)` float64.

    Example:

    >>> import numpy as np
    >>> sim = exp_cosine_similarity(1.0)
    >>> sim(np.array([[True, True], [True, False], [False, False]])).round(3).tolist()
    [1.0, 0.918, 0.368]
    """
    width = v.check_non_negative_float("kernel_width", kernel_width)
    if width == 0:
        raise v.invalid("kernel_width", "a positive number", kernel_width)

    def similarity(coalitions):
        z = np.asarray(coalitions, np.float64)
        d = 1.0 - np.sqrt(z.sum(axis=1) / max(z.shape[1], 1))
        return np.exp(-(d**2) / width**2)

    return similarity


def weighted_linear_fit(coalitions, y, weights):
    """Coefficients of `y ~ c + z @ coef` by weighted least squares (minimum norm if singular)."""
    z = np.asarray(coalitions, np.float64)
    design = np.concatenate([np.ones((z.shape[0], 1)), z], axis=1)
    sw = np.sqrt(np.asarray(weights, np.float64))[:, None]
    sol = np.linalg.lstsq(design * sw, y * sw[:, 0], rcond=None)[0]
    return sol[1:]


class Lime(PerturbationAttribution):
    """LIME: the coefficients of a weighted linear model fitted around the input.

    For each example, `n_samples` random coalitions of its `F` features are
    drawn (each feature kept with probability 1/2, as Captum does), the model
    is evaluated on them (removed features take the baseline value), and a
    linear model `g(z) = c + sum_i w_i z_i` is fitted to the scores on the
    binary coalition vectors, each weighted by its similarity to the
    unperturbed input (default: exponential kernel of the cosine distance,
    width 1, Captum's default, on the interpretable space). The attribution
    of feature `i` is `w_i`. A model that is exactly linear in the coalition
    gets its coefficients back.

    Args:
        model: A Keras model or a callable.
        interpretable_model: None (default: weighted least squares with an
            intercept), or a scikit-learn style regressor with
            `fit(X, y, sample_weight=...)` and `coef_` (e.g.
            `sklearn.linear_model.Lasso(alpha=0.01)`, Captum's default).
        similarity_func: `similarity(coalitions) -> weights`, from the
            `(n, F)` boolean coalitions to `(n,)` non-negative weights;
            default `exp_cosine_similarity(1.0)`.

    Example:

    >>> import numpy as np, keras
    >>> from kerastrace.attribution import Lime
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    >>> model.layers[0].set_weights([np.array([[1.0], [2.0], [3.0], [4.0]]), np.array([5.0])])
    >>> x = np.ones((1, 4), "float32")
    >>> attr = Lime(model).attribute(x, feature_mask=np.array([[0, 0, 1, 1]]), n_samples=16,
    ...                              seed=0, return_input_shape=False)
    >>> attr.round(4)   # a linear model: the fit is exact (3 = 1 + 2, 7 = 3 + 4)
    array([[3., 7.]], dtype=float32)

    References:
        - [Ribeiro et al., 2016, "Why Should I Trust You?": Explaining the
          Predictions of Any Classifier](https://arxiv.org/abs/1602.04938)
        - [Captum Lime](https://captum.ai/api/lime.html)
    """

    def __init__(self, model, interpretable_model=None, similarity_func=None):
        super().__init__(model)
        if interpretable_model is not None and not callable(
            getattr(interpretable_model, "fit", None)
        ):
            raise TypeError(
                "Received an invalid value for argument `interpretable_model`, expected None "
                "or a regressor with `fit(X, y, sample_weight=...)` and `coef_`. Received: "
                f"interpretable_model={interpretable_model!r}"
            )
        if similarity_func is not None and not callable(similarity_func):
            raise TypeError(
                "Received an invalid value for argument `similarity_func`, expected a callable "
                f"`similarity(coalitions) -> weights`. Received: similarity_func={similarity_func!r}"
            )
        self.interpretable_model = interpretable_model
        self.similarity_func = similarity_func or exp_cosine_similarity(1.0)

    def attribute(
        self,
        inputs: Inputs,
        baselines=None,
        target: Target = None,
        additional_forward_args=None,
        feature_mask=None,
        n_samples: int = 50,
        perturbations_per_eval: int | None = None,
        seed: int | None = None,
        mask_padding: bool = False,
        return_input_shape: bool = True,
        return_info: bool = False,
    ):
        """Compute LIME attributions.

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
            n_samples: Model evaluations (random coalitions) per example
                (default 50, as Captum). Fewer than `F + 1` leave the fit
                underdetermined (the minimum-norm solution is returned).
            perturbations_per_eval: Perturbed copies of each example per
                model call (`perturbations_per_eval * B` rows); default: 256
                rows per call.
            seed: Seed of the coalitions; the same seed gives the same result
                (each example draws from its own generator seeded with it).
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
            ValueError: for a bad feature mask, target or option.
        """
        n_samples = v.check_positive_int("n_samples", n_samples)
        seed = check_seed(seed)
        problem = self._problem(
            inputs, baselines, target, feature_mask, additional_forward_args,
            perturbations_per_eval, mask_padding,
        )
        return self._run(
            problem, return_input_shape, return_info, n_samples=n_samples, seed=seed
        )

    def _coalitions(self, problem, b, n_features, n_samples, seed):
        rng = np.random.default_rng(seed)
        rows = rng.random((n_samples, n_features)) < 0.5

        def combine(scores):
            weights = np.asarray(self.similarity_func(rows), np.float64).reshape(-1)
            if weights.shape != (n_samples,) or not np.all(np.isfinite(weights)) or np.any(
                weights < 0
            ):
                raise ValueError(
                    "Received an invalid value for argument `similarity_func`: it must return "
                    f"{n_samples} finite non-negative weights. Received: weights with shape "
                    f"{weights.shape}"
                )
            if self.interpretable_model is None:
                coef = weighted_linear_fit(rows, scores, weights)
            else:
                self.interpretable_model.fit(rows.astype(np.float64), scores, sample_weight=weights)
                coef = np.asarray(self.interpretable_model.coef_, np.float64).reshape(-1)
            return coef, (np.nan, np.nan, n_samples)

        return rows, combine
