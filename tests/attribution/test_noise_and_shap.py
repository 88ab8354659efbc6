import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from attr_models import smooth_mlp

from kerastrace.attribution import (
    GradientShap,
    InputXGradient,
    IntegratedGradients,
    LayerGradientXActivation,
    LayerIntegratedGradients,
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


# --------------------------------------------------------------- engine noise
@pytest.mark.parametrize("first,count", [(0, 21), (4, 5), (7, 3), (20, 1)])
def test_engine_noise_is_a_slice_of_stateless_normal(first, count):
    from kerastrace.attribution import _core

    x = tf.zeros((3, 5, 3))  # 15 numbers per row: rows do not align with Philox's blocks of 4
    full = tf.random.stateless_normal((7, 3, 5, 3), seed=(11, 1), stddev=0.5)
    full = tf.reshape(full, (21, 5, 3))  # segment g = sample * B + example
    got = _core._noise(x, 0.5, tf.constant(11, tf.int64), 1, first, count)
    np.testing.assert_array_equal(got.numpy(), full[first : first + count].numpy())


def _manual_noise_tunnel(method, x, n, sd, seed, **kw):
    """Oracle: the wrapped method on explicitly noised copies, combined in numpy."""
    noise = tf.random.stateless_normal((n, *x.shape), seed=(seed, 0), stddev=sd).numpy()
    per = np.stack([method.attribute(x + noise[s], **kw) for s in range(n)]).astype(np.float64)
    return {
        "smoothgrad": per.mean(0),
        "smoothgrad_sq": (per**2).mean(0),
        "vargrad": per.var(0),
    }


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_tunnel_saliency_matches_manual_noise_in_every_chunking(nt_type, rng):
    model = smooth_mlp()
    x = rng.normal(size=(3, 5)).astype("float32")
    sal = Saliency(model)
    nt = NoiseTunnel(sal)
    kw = dict(nt_type=nt_type, nt_samples=7, stdevs=0.3, seed=5, target=[0, 2, 1])
    ref = _manual_noise_tunnel(sal, x, 7, 0.3, 5, target=[0, 2, 1])[nt_type]
    for extra in ({}, {"internal_batch_size": 4}, {"internal_batch_size": 5,
                                                   "nt_samples_batch_size": 3}):
        np.testing.assert_allclose(nt.attribute(x, **kw, **extra), ref, rtol=2e-5, atol=1e-6)
    signed = _manual_noise_tunnel(sal, x, 7, 0.3, 5, target=1, abs=False)["smoothgrad"]
    np.testing.assert_allclose(
        nt.attribute(x, nt_samples=7, stdevs=0.3, seed=5, target=1, abs=False,
                     internal_batch_size=2),
        signed, rtol=2e-5, atol=1e-6,
    )


def test_noise_tunnel_chunked_model_calls_have_a_fixed_size(rng):
    model = smooth_mlp()
    calls, rows = tf.Variable(0), tf.Variable(0)

    def forward(x):
        calls.assign_add(1)
        rows.assign_add(tf.shape(x)[0])
        return model(x, training=False)

    x = rng.normal(size=(2, 5)).astype("float32")
    NoiseTunnel(InputXGradient(forward)).attribute(
        x, nt_samples=9, stdevs=0.1, seed=0, target=1, internal_batch_size=4
    )
    assert int(calls.numpy()) == math.ceil(9 * 2 / 4) and int(rows.numpy()) == 5 * 4


def _linear_token_model(vocab=12, seq=4, dim=3, seed=0):
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((seq,), dtype="int32")
    h = keras.layers.Embedding(vocab, dim, name="emb")(tokens)
    out = keras.layers.Dense(1, name="head")(keras.layers.Flatten()(h))
    return keras.Model(tokens, out)


def test_noise_tunnel_over_layer_methods_adds_noise_to_the_activation():
    model = _linear_token_model()
    ids = np.array([[3, 1, 7, 0], [5, 5, 2, 9]])
    act = model.get_layer("emb")(ids).numpy()
    w = model.get_layer("head").get_weights()[0].reshape(4, 3)  # d out / d activation
    n, sd, seed = 6, 0.2, 3
    noise = tf.random.stateless_normal((n, *act.shape), seed=(seed, 0), stddev=sd).numpy()
    gxa = LayerGradientXActivation(model, "emb")
    nt = NoiseTunnel(gxa)
    # zero noise: the wrapped method itself, on integer inputs
    np.testing.assert_allclose(nt.attribute(ids, nt_samples=3, stdevs=0.0), gxa.attribute(ids),
                               rtol=1e-6)
    # linear model: the attribution of a noisy activation is (act + eps) * w
    per = (act[None] + noise) * w
    got = nt.attribute(ids, nt_samples=n, stdevs=sd, seed=seed, internal_batch_size=5)
    np.testing.assert_allclose(got, per.mean(0), rtol=1e-5, atol=1e-6)
    vg = nt.attribute(ids, nt_type="vargrad", nt_samples=n, stdevs=sd, seed=seed)
    np.testing.assert_allclose(vg, per.var(0), rtol=1e-4, atol=1e-7)
    # Layer IG from the pad-token embedding: (act + eps - act_pad) * w
    base = model.get_layer("emb")(np.zeros_like(ids)).numpy()
    lig = NoiseTunnel(LayerIntegratedGradients(model, "emb"))
    got = lig.attribute(ids, baselines=0, nt_samples=n, stdevs=sd, seed=seed, n_steps=4)
    np.testing.assert_allclose(got, ((act[None] + noise - base) * w).mean(0), rtol=1e-5,
                               atol=1e-6)


def test_noise_tunnel_refuses_gradient_shap_and_bad_seeds():
    with pytest.raises(TypeError, match="GradientShap"):
        NoiseTunnel(GradientShap(quadratic))
    nt = NoiseTunnel(Saliency(quadratic))
    for seed in (-1, 1.5, True):
        with pytest.raises(ValueError, match="seed"):
            nt.attribute(np.ones((1, 3), "float32"), seed=seed)
