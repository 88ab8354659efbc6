"""Planted-feature and randomization tests on a small trained model."""

import keras
import numpy as np
import pytest

from kerastrace.attribution import IntegratedGradients, NoiseTunnel, Saliency, metrics

N_FEATURES, KEY = 16, 3


def _data(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES)).astype("float32")
    sign = rng.choice([-1.0, 1.0], size=n)
    x[:, KEY] = sign * rng.uniform(0.5, 2.0, size=n)  # the only feature that decides
    return x, (sign > 0).astype("int32")


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    x, y = _data(2000, 0)
    model = keras.Sequential(
        [
            keras.Input((N_FEATURES,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(2),
        ]
    )
    model.compile(
        keras.optimizers.Adam(0.01),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=15, batch_size=100, verbose=0)
    xt, yt = _data(200, 1)
    acc = (model.predict(xt, verbose=0).argmax(1) == yt).mean()
    assert acc > 0.97
    return model, xt, yt


def test_planted_feature_ranked_first_by_ig(trained):
    model, x, y = trained
    attr = IntegratedGradients(model).attribute(x, target=y, n_steps=32, internal_batch_size=1600)
    top = np.abs(attr).argmax(axis=1)
    assert (top == KEY).mean() >= 0.9


@pytest.mark.parametrize("name", ["saliency", "ig", "smoothgrad"])
def test_randomization_sanity_check_separates(trained, name):
    model, x, y = trained
    x, y = x[:40], y[:40]
    explain = {
        "saliency": lambda m: Saliency(m).attribute(x, target=y),
        "ig": lambda m: IntegratedGradients(m).attribute(x, target=y, n_steps=16),
        "smoothgrad": lambda m: NoiseTunnel(Saliency(m)).attribute(
            x, target=y, nt_samples=8, stdevs=0.2, seed=0
        ),
    }[name]
    # |IG| = |x| * |avg grad| keeps the input's magnitude pattern after randomization
    # (Adebayo et al. 2018 report the same for gradient x input / IG: ~0.53 here), so
    # IG is compared signed; saliency and SmoothGrad by absolute value.
    absolute = name != "ig"
    # saved BEFORE the check: the model must come out of it exactly as it went in
    weights_before = [np.array(w) for w in model.get_weights()]
    attr_before = np.asarray(explain(model))
    result = metrics.randomization_sanity_check(model, explain, absolute=absolute, seed=0)
    assert [s for s, _ in result] == ["original", model.layers[1].name, model.layers[0].name]
    assert result[0][1] == 1.0
    assert result[-1][1] < 0.5, result
    _assert_untouched(model, weights_before, explain, attr_before)  # randomized a copy
    # in place (what happens when no copy can be made): randomized, then restored
    again = metrics.randomization_sanity_check(
        model, explain, absolute=absolute, seed=0, copy="never"
    )
    assert again == result  # seeded: the same stages and correlations
    _assert_untouched(model, weights_before, explain, attr_before)


def _assert_untouched(model, weights_before, explain, attr_before):
    after = model.get_weights()
    assert len(after) == len(weights_before)
    for w, w0 in zip(after, weights_before):
        np.testing.assert_array_equal(w, w0)
    np.testing.assert_allclose(np.asarray(explain(model)), attr_before, rtol=1e-5, atol=1e-7)
