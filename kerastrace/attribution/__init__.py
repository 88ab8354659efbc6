"""Captum-style gradient attribution for Keras models, batched and compiled.

Every class is built from a Keras model (or a callable) and used through one
verb, `attribute(inputs, target=..., ...)`; the result is a numpy array of the
input's shape (a tuple of arrays for a tuple of inputs).

Example:

>>> import numpy as np, keras
>>> from kerastrace.attribution import IntegratedGradients
>>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
>>> x = np.random.default_rng(0).normal(size=(2, 4)).astype("float32")
>>> attr, delta = IntegratedGradients(model).attribute(
...     x, target=1, n_steps=16, return_convergence_delta=True)
>>> attr.shape, bool(np.all(np.abs(delta) < 1e-4))
((2, 4), True)
"""

from kerastrace.attribution import metrics
from kerastrace.attribution._base import Attribution, GradientAttribution
from kerastrace.attribution._core import Contrast
from kerastrace.attribution._perturbation import PerturbationAttribution, PerturbationInfo
from kerastrace.attribution._token import gradient_x_embedding
from kerastrace.attribution.attention import AttentionXGradient, GradientWeightedRollout
from kerastrace.attribution.feature_ablation import FeatureAblation
from kerastrace.attribution.gradient_shap import GradientShap
from kerastrace.attribution.integrated_gradients import IntegratedGradients
from kerastrace.attribution.kernel_shap import KernelShap
from kerastrace.attribution.layer import (
    LayerGradientXActivation,
    LayerIntegratedGradients,
    token_scores,
)
from kerastrace.attribution.lime import Lime
from kerastrace.attribution.noise_tunnel import NoiseTunnel
from kerastrace.attribution.occlusion import Occlusion
from kerastrace.attribution.saliency import InputXGradient, Saliency
from kerastrace.attribution.shapley import ShapleyValues, ShapleyValueSampling

__all__ = [
    "Attribution",
    "GradientAttribution",
    "Contrast",
    "Saliency",
    "InputXGradient",
    "IntegratedGradients",
    "NoiseTunnel",
    "GradientShap",
    "LayerIntegratedGradients",
    "LayerGradientXActivation",
    "token_scores",
    "gradient_x_embedding",
    "Occlusion",
    "PerturbationAttribution",
    "PerturbationInfo",
    "FeatureAblation",
    "ShapleyValueSampling",
    "ShapleyValues",
    "KernelShap",
    "Lime",
    "AttentionXGradient",
    "GradientWeightedRollout",
    "metrics",
]
