"""Shapley methods against an exact oracle and the Shapley axioms.

The oracle is written here from the definition, independently of the
library: every coalition of at most 10 features is evaluated by building the
perturbed input with numpy and calling the model directly, and
`phi_i = sum_{S without i} |S|! (F-|S|-1)! / F! (v(S + i) - v(S))`.
"""

import itertools
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastrace.attribution import KernelShap, ShapleyValues, ShapleyValueSampling


def oracle(model, x, baseline, mask, target):
    """Exact Shapley values of one example `x` (no batch axis) by enumeration."""
    f = int(mask.max()) + 1
    coalitions = list(itertools.product([0, 1], repeat=f))
    rows = np.stack([np.where(np.isin(mask, np.flatnonzero(z)) | (mask < 0), x, baseline)
                     for z in coalitions])
    out = np.asarray(model(rows)).reshape(len(rows), -1)[:, target].astype(np.float64)
    value = dict(zip(coalitions, out))
    phi = np.zeros(f)
    for z, v_s in value.items():
        s = sum(z)
        for i in range(f):
            if z[i] == 0:
                with_i = z[:i] + (1,) + z[i + 1 :]
                w = math.factorial(s) * math.factorial(f - s - 1) / math.factorial(f)
                phi[i] += w * (value[with_i] - v_s)
    return phi, value[(1,) * f], value[(0,) * f]


@pytest.fixture(scope="module")
def mlp():
    keras.utils.set_random_seed(3)
    return keras.Sequential([
        keras.Input((10,)),
        keras.layers.Dense(16, activation="tanh"),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(3),
    ])


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 10)).astype("float32")
    base = rng.normal(size=(1, 10)).astype("float32") * 0.1
    return x, base


def _oracles(model, x, base, mask, target):
    return np.stack([oracle(model, x[b], base[0], mask, target)[0] for b in range(len(x))])


def test_exact_shapley_values_match_the_oracle(mlp, data):
    x, base = data
    mask = np.arange(10)
    ref = _oracles(mlp, x, base, mask, 2)
    got, info = ShapleyValues(mlp).attribute(x, baselines=base, target=2, return_info=True)
    np.testing.assert_allclose(got, ref, atol=2e-6)
    assert info.evaluations.tolist() == [1024] * 3


def test_kernel_shap_with_all_coalitions_equals_the_oracle(mlp, data):
    x, base = data
    mask = np.array([0, 0, 1, 2, 3, 3, 4, 5, -1, 6])  # 7 groups, one element kept
    ref = _oracles(mlp, x, base, mask, 1)
    got, info = KernelShap(mlp).attribute(
        x, baselines=base, target=1, feature_mask=mask, n_samples=128,
        return_input_shape=False, return_info=True,
    )
    np.testing.assert_allclose(got, ref, atol=2e-5)
    assert info.evaluations.tolist() == [128] * 3
    # A larger budget cannot buy more than all 2**F coalitions.
    _, info = KernelShap(mlp).attribute(x, baselines=base, target=1, feature_mask=mask,
                                        n_samples=500, return_info=True)
    assert info.evaluations.tolist() == [128] * 3


def test_shapley_sampling_converges_to_the_oracle(mlp, data):
    x, base = data
    ref = _oracles(mlp, x, base, np.arange(10), 0)
    svs = ShapleyValueSampling(mlp)
    errors = []
    for n in (2, 16, 128, 1024):
        got, info = svs.attribute(x, baselines=base, target=0, n_samples=n, seed=1,
                                  return_info=True)
        errors.append(np.abs(got - ref).mean())
        assert info.evaluations.tolist() == [2 + n * 9] * 3
        # Efficiency holds exactly for any number of permutations.
        np.testing.assert_allclose(info.delta, 0, atol=1e-5)
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < 0.1 * errors[0]
    assert errors[-1] < 0.02 * np.abs(ref).mean()


def test_kernel_shap_error_falls_with_the_budget(mlp, data):
    x, base = data
    ref = _oracles(mlp, x, base, np.arange(10), 0)
    errors = []
    for n in (24, 200, 1000):
        got, info = KernelShap(mlp).attribute(x, baselines=base, target=0, n_samples=n, seed=0,
                                              return_info=True)
        errors.append(np.abs(got - ref).mean())
        assert np.all(info.evaluations <= n)
        np.testing.assert_allclose(info.delta, 0, atol=1e-5)
    assert errors[2] < errors[0] and errors[2] < 0.5 * errors[0], errors


def max_model(x):
    return tf.reduce_max(x, axis=1, keepdims=True)


def test_hand_derived_max_game():
    # v(S) = max of S (0 for the empty set) on x = (1, 2, 3) = sorted (a_1, a_2, a_3):
    # phi_k = sum_{j <= k} (a_j - a_{j-1}) / (F - j + 1) = (1/3, 1/3 + 1/2, 1/3 + 1/2 + 1).
    x = np.array([[1.0, 2.0, 3.0]], "float32")
    expected = np.array([[1 / 3, 1 / 3 + 1 / 2, 1 / 3 + 1 / 2 + 1]])
    np.testing.assert_allclose(ShapleyValues(max_model).attribute(x), expected, rtol=1e-6)
    np.testing.assert_allclose(KernelShap(max_model).attribute(x, n_samples=8), expected,
                               rtol=1e-5)
    # Sampling converges to it.
    got = ShapleyValueSampling(max_model).attribute(x, n_samples=3000, seed=0)
    np.testing.assert_allclose(got, expected, atol=0.02)


def symmetric_model(x):
    """f = tanh(x0 + x1) * x2 + x0 * x1 + 0 * x3: x0, x1 symmetric, x3 a dummy."""
    return (tf.tanh(x[:, :1] + x[:, 1:2]) * x[:, 2:3] + x[:, :1] * x[:, 1:2]
            + 0.0 * x[:, 3:4])


@pytest.mark.parametrize("method", ["exact", "kernel_all", "sampling"])
def test_efficiency_symmetry_dummy(method):
    x = np.array([[0.7, 0.7, -1.5, 4.0], [-0.3, -0.3, 2.0, 1.0]], "float32")
    if method == "exact":
        attr, info = ShapleyValues(symmetric_model).attribute(x, return_info=True)
    elif method == "kernel_all":
        attr, info = KernelShap(symmetric_model).attribute(x, n_samples=16, return_info=True)
    else:
        attr, info = ShapleyValueSampling(symmetric_model).attribute(
            x, n_samples=400, seed=0, return_info=True)
    f_x = symmetric_model(x).numpy()[:, 0]
    f_0 = symmetric_model(np.zeros_like(x)).numpy()[:, 0]
    # efficiency (exact for every method)
    np.testing.assert_allclose(attr.sum(axis=1), f_x - f_0, atol=1e-5)
    np.testing.assert_allclose(info.f_inputs, f_x, atol=1e-6)
    np.testing.assert_allclose(info.f_baselines, f_0, atol=1e-6)
    # dummy: exactly 0 where the model ignores the feature (up to regression rounding)
    if method == "kernel_all":
        np.testing.assert_allclose(attr[:, 3], 0, atol=1e-6)
    else:
        assert np.all(attr[:, 3] == 0)
    # symmetry: equal inputs of symmetric features get equal scores
    tol = 1e-6 if method != "sampling" else 0.05
    np.testing.assert_allclose(attr[:, 0], attr[:, 1], atol=tol)


def test_exact_shapley_refuses_too_many_features():
    with pytest.raises(ValueError, match="feature_mask.*ShapleyValueSampling"):
        ShapleyValues(max_model).attribute(np.ones((1, 21), "float32"))


def test_models_without_gradients():
    # f = [x0 > 0.5] * x1 has no useful gradient; its Shapley values on x = (1, 2) with
    # baseline 0: v({}) = v({0}) = v({1}) = 0, v({0, 1}) = 2, so phi = (1, 1).
    def step(x):
        return tf.cast(x[:, :1] > 0.5, tf.float32) * x[:, 1:2]

    x = np.array([[1.0, 2.0]], "float32")
    np.testing.assert_allclose(ShapleyValues(step).attribute(x), [[1.0, 1.0]])
    np.testing.assert_allclose(KernelShap(step).attribute(x, n_samples=4), [[1.0, 1.0]],
                               atol=1e-6)
    np.testing.assert_allclose(ShapleyValueSampling(step).attribute(x, n_samples=2, seed=0),
                               [[1.0, 1.0]])
