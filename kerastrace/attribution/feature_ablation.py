"""FeatureAblation: the output change when one feature (group) at a time is removed."""

from __future__ import annotations

import numpy as np

from kerastrace._utils.types import Inputs, Target
from kerastrace.attribution._perturbation import PerturbationAttribution


class FeatureAblation(PerturbationAttribution):
    """Feature ablation: remove one feature at a time, measure the output drop.

    The attribution of feature `i` is `f(x) - f(x without i)`, where removing
    a feature replaces all its elements (those with the same id in
    `feature_mask`: the word pieces of a word, the pixels of a superpixel) by
    the baseline. Each example costs `F + 1` model evaluations. All perturbed
    copies of a call go through one compiled forward function, in chunks of
    `perturbations_per_eval * B` rows. No gradient is needed: token-id models
    and models with non-differentiable steps work as they are. With the
    default mask (every element its own feature) this is `Occlusion` with a
    window of 1.

    Args:
        model: A Keras model or a callable.

    Example:

    >>> import numpy as np, keras
    >>> from kerastrace.attribution import FeatureAblation
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, use_bias=False)])
    >>> model.layers[0].set_weights([np.array([[1.0], [2.0], [3.0], [4.0]])])
    >>> x = np.ones((1, 4), "float32")
    >>> FeatureAblation(model).attribute(x, feature_mask=np.array([[0, 0, 1, 1]]))
    array([[3., 3., 7., 7.]], dtype=float32)
    >>> attr, info = FeatureAblation(model).attribute(
    ...     x, feature_mask=np.array([[0, 0, 1, 1]]), return_input_shape=False,
    ...     return_info=True)
    >>> attr, info.evaluations
    (array([[3., 7.]], dtype=float32), array([3]))

    References:
        - [Captum FeatureAblation](https://captum.ai/api/feature_ablation.html)
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
        """Compute feature-ablation attributions.

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
                elements with the same id form one feature and are removed
                together; per example the ids are `0 .. F-1` without gaps,
                and `-1` marks elements never perturbed (special tokens,
                padding). Default: every scalar element is its own feature.
            perturbations_per_eval: Perturbed copies of each example per
                model call (`perturbations_per_eval * B` rows); default: 256
                rows per call.
            mask_padding: For keras-hub dict inputs: a removed token also gets
                `padding_mask = 0`, so the model no longer sees it.
            return_input_shape: Return arrays of the inputs' shapes where every
                element holds its feature's score (default); with False, one
                `(B, F)` float32 array of feature scores.
            return_info: Also return a `PerturbationInfo`:
                `(attributions, info)`.

        Returns:
            Float32 array(s) in the inputs' structure (or `(B, F)`), and the
            `PerturbationInfo` with `return_info=True`.

        Raises:
            ValueError: for a feature mask of the wrong shape or with gaps, an
                invalid target or option, token ids outside the model's
                vocabulary, non-integral baselines of integer inputs, or a
                NaN/inf model output (the error names the example and the
                coalition, with the features it removed).
        """
        problem = self._problem(
            inputs, baselines, target, feature_mask, additional_forward_args,
            perturbations_per_eval, mask_padding,
        )
        return self._run(problem, return_input_shape, return_info)

    def _coalitions(self, problem, b, n_features):
        rows = np.ones((n_features + 1, n_features), bool)
        rows[np.arange(1, n_features + 1), np.arange(n_features)] = False

        def combine(scores):
            return scores[0] - scores[1:], (scores[0], np.nan, n_features)

        return rows, combine
