import keras
import numpy as np
import pytest
import tensorflow as tf
from attr_models import smooth_mlp

from kerastrace.attribution import (
    GradientShap,
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    Saliency,
)

C = np.array([1.0, -2.0, 0.5], "float32")


def quadratic(x):
    """f(x) = sum_i c_i x_i^2, so grad = 2 c x."""
    return tf.reduce_sum(C * x * x, axis=1, keepdims=True)


def test_noise_tunnel_analytic_moments(rng):
    x = np.array([[1.0, 0.5, -2.0]], "float32")
    sd = 0.3
    nt = NoiseTunnel(Saliency(quadratic))
    kw = dict(nt_samples=4000, stdevs=sd, seed=0, abs=False)
    sg = nt.attribute(x, nt_type="smoothgrad", **kw)
    sq = nt.attribute(x, nt_type="smoothgrad_sq", **kw)
    vg = nt.attribute(x, nt_type="vargrad", **kw)
    g = 2 * C * x[0]
    np.testing.assert_allclose(sg[0], g, atol=4 * 2 * np.abs(C).max() * sd / np.sqrt(4000))
    np.testing.assert_allclose(sq[0], g**2 + (2 * C * sd) ** 2, rtol=0.08)
    np.testing.assert_allclose(vg[0], (2 * C * sd) ** 2, rtol=0.08)


def test_noise_tunnel_seed_and_batching(rng):
    model = smooth_mlp()
    x = rng.normal(size=(3, 5)).astype("float32")
    nt = NoiseTunnel(IntegratedGradients(model))
    kw = dict(nt_type="smoothgrad_sq", nt_samples=6, stdevs=0.2, seed=3, target=1, n_steps=8)
    ref = nt.attribute(x, **kw)
    np.testing.assert_allclose(nt.attribute(x, **kw), ref, rtol=1e-6)
    np.testing.assert_allclose(
        nt.attribute(x, nt_samples_batch_size=4, internal_batch_size=5, **kw),
        ref,
        rtol=1e-5,
        atol=1e-7,
    )
    other = nt.attribute(x, **{**kw, "seed": 4})
    assert not np.allclose(other, ref)
    # zero noise: smoothgrad == the wrapped method
    np.testing.assert_allclose(
        nt.attribute(x, nt_samples=3, stdevs=0.0, target=1, n_steps=8),
        IntegratedGradients(model).attribute(x, target=1, n_steps=8),
        rtol=1e-5,
        atol=1e-7,
    )


def test_noise_tunnel_tuple_inputs_and_baselines(rng):
    a, b = keras.Input((2,)), keras.Input((3,))
    model = keras.Model([a, b], keras.layers.Dense(1)(keras.layers.Concatenate()([a, b])))
    w = model.layers[-1].get_weights()[0][:, 0]
    x = (rng.normal(size=(2, 2)).astype("float32"), rng.normal(size=(2, 3)).astype("float32"))
    ig = NoiseTunnel(IntegratedGradients(model))
    out = ig.attribute(
        x, nt_samples=5, stdevs=(0.1, 0.0), baselines=(1.0, np.zeros((2, 3))), n_steps=4, seed=0
    )
    assert isinstance(out, tuple) and out[0].shape == (2, 2) and out[1].shape == (2, 3)
    # linear model: IG of a noisy input = (x + eps - 1) * w; mean over samples ~ (x - 1) * w
    np.testing.assert_allclose(out[1], x[1] * w[2:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[0], (x[0] - 1) * w[:2], atol=0.35 * np.abs(w[:2]).max())


def test_noise_tunnel_errors():
    nt = NoiseTunnel(InputXGradient(quadratic))
    x = np.ones((1, 3), "float32")
    with pytest.raises(ValueError, match="nt_type"):
        nt.attribute(x, nt_type="smooth")
    with pytest.raises(ValueError, match="nt_samples"):
        nt.attribute(x, nt_samples=0)
    with pytest.raises(ValueError, match="stdevs"):
        nt.attribute(x, stdevs=-1.0)
    with pytest.raises(TypeError, match="attribution_method"):
        NoiseTunnel(quadratic)


def test_gradient_shap_linear_exact(rng):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    w = model.layers[0].get_weights()[0][:, 1]
    x = rng.normal(size=(4, 3)).astype("float32")
    refs = rng.normal(size=(10, 3)).astype("float32")
    gs = GradientShap(model)
    attr, delta = gs.attribute(
        x, refs, n_samples=7, target=1, seed=0, return_convergence_delta=True, internal_batch_size=6
    )
    # grad is w everywhere: attr = (x - mean of the drawn baselines) * w
    pick = np.random.default_rng(0).integers(0, 10, size=28)
    drawn = refs[pick].reshape(4, 7, 3).mean(1)
    np.testing.assert_allclose(attr, (x - drawn) * w, rtol=1e-4, atol=1e-5)
    assert np.all(np.abs(delta) < 1e-4)
    again = gs.attribute(x, refs, n_samples=7, target=1, seed=0, internal_batch_size=4)
    np.testing.assert_allclose(again, attr, rtol=1e-5, atol=1e-6)
    assert gs.engine.trace_count == 1


def test_gradient_shap_single_baseline_approaches_ig(rng):
    model = smooth_mlp()
    x = rng.normal(size=(2, 5)).astype("float32")
    ig = IntegratedGradients(model).attribute(x, target=0, n_steps=64)
    gs = GradientShap(model).attribute(
        x, np.zeros((1, 5), "float32"), n_samples=3000, target=0, seed=1, internal_batch_size=2000
    )
    np.testing.assert_allclose(gs, ig, atol=0.02)


def test_gradient_shap_errors(rng):
    gs = GradientShap(smooth_mlp())
    with pytest.raises(ValueError, match="baselines"):
        gs.attribute(np.ones((1, 5), "float32"), np.zeros((3, 4)), target=0)
    with pytest.raises(ValueError, match="n_samples"):
        gs.attribute(np.ones((1, 5), "float32"), np.zeros((3, 5)), n_samples=0, target=0)
