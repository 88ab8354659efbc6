import keras
import numpy as np
import pytest
import tensorflow as tf
from attr_models import smooth_mlp

from kerastrace.attribution import IntegratedGradients, Saliency, metrics


def _linear(rng, n_in=4):
    model = keras.Sequential([keras.Input((n_in,)), keras.layers.Dense(1)])
    w = rng.normal(size=(n_in, 1)).astype("float32")
    model.layers[0].set_weights([w, np.array([0.3], "float32")])
    return model, w[:, 0]


def test_convergence_delta_matches_ig(rng):
    model = smooth_mlp()
    x = rng.normal(size=(3, 5)).astype("float32")
    attr, delta = IntegratedGradients(model).attribute(
        x,
        baselines=0.1,
        target=1,
        n_steps=3,
        method="riemann_right",
        return_convergence_delta=True,
    )
    got = metrics.convergence_delta(model, x, attr, baselines=0.1, target=1)
    np.testing.assert_allclose(got, delta, atol=1e-5)
    assert np.all(np.abs(got) > 1e-6)  # 3 right-Riemann steps are not exact here


def test_infidelity_exact_values(rng):
    model, w = _linear(rng)
    x = rng.normal(size=(2, 4)).astype("float32")
    fixed = rng.normal(size=(2 * 3, 4)).astype("float32")

    def perturb(xs, _rng):
        return (fixed,), (xs[0] - fixed,)

    attr = rng.normal(size=(2, 4)).astype("float32")
    got = metrics.infidelity(model, x, attr, perturb_func=perturb, n_perturb_samples=3)
    dot = (fixed.reshape(2, 3, 4) * attr[:, None]).sum(-1)
    diff = (fixed.reshape(2, 3, 4) * w).sum(-1)  # f(x) - f(x - I) = w . I
    np.testing.assert_allclose(got, ((dot - diff) ** 2).mean(1), rtol=1e-4)
    grad = Saliency(model).attribute(x, abs=False)
    assert np.all(metrics.infidelity(model, x, grad, seed=1) < 1e-9)
    # normalize=True is scale invariant
    a = metrics.infidelity(model, x, attr, normalize=True, seed=2)
    b = metrics.infidelity(model, x, 10 * attr, normalize=True, seed=2)
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_sensitivity_max(rng):
    model, _ = _linear(rng)
    x = rng.normal(size=(3, 4)).astype("float32")
    s = metrics.sensitivity_max(Saliency(model).attribute, x, seed=0, abs=False)
    np.testing.assert_allclose(s, 0.0, atol=1e-6)
    c = np.array([1.0, -2.0, 0.5, 1.5], "float32")

    def quad(z):
        return tf.reduce_sum(c * z * z, axis=1, keepdims=True)

    r = 0.05
    s = metrics.sensitivity_max(Saliency(quad).attribute, x, perturb_radius=r, seed=0, abs=False)
    bound = r * np.linalg.norm(c) / np.linalg.norm(c * x, axis=1)  # ||2 c d|| / ||2 c x||
    assert np.all(s > 0) and np.all(s <= bound * (1 + 1e-5))
    targets = [0, 0, 0]
    s2 = metrics.sensitivity_max(
        Saliency(quad).attribute, x, perturb_radius=r, seed=0, abs=False, target=targets
    )
    np.testing.assert_allclose(s2, s, rtol=1e-6)


def test_deletion_insertion_whole_tokens():
    # f(x) = sum over tokens t and dims d of v[t] * x[t, d]; x all ones, baseline 0.
    v = np.array([3.0, 1.0, 2.0], "float32")
    model = lambda x: tf.reduce_sum(x * v[None, :, None], axis=(1, 2))[:, None]  # noqa: E731
    x = np.ones((1, 3, 2), "float32")
    scores = np.array([[0.5, 0.1, 0.9]])  # order: token 2, token 0, token 1
    dele = metrics.deletion_curve(model, x, scores, n_steps=3)
    np.testing.assert_allclose(dele.fractions, [0, 1 / 3, 2 / 3, 1], rtol=1e-6)
    np.testing.assert_allclose(dele.scores, [[12.0, 8.0, 2.0, 0.0]])
    np.testing.assert_allclose(dele.aopc, [(0 + 4 + 10 + 12) / 4])
    ins = metrics.insertion_curve(model, x, scores, n_steps=3)
    np.testing.assert_allclose(ins.scores, [[0.0, 4.0, 10.0, 12.0]])
    np.testing.assert_allclose(
        ins.auc, [np.trapezoid([0, 4, 10, 12], [0, 1 / 3, 2 / 3, 1])], rtol=1e-5
    )
    with pytest.raises(ValueError, match="attributions"):
        metrics.deletion_curve(model, x, np.ones((1, 2)))


def test_spearman_ties():
    # scipy.stats.spearmanr([1, 2, 2, 3], [1, 3, 2, 4]) = 0.9486832980505138
    np.testing.assert_allclose(
        metrics.spearman([[1, 2, 2, 3]], [[1, 3, 2, 4]]), [0.9486832980505138], rtol=1e-12
    )
