import keras
import numpy as np
import pytest
from attr_models import smooth_mlp, text_model

from kerastrace.attribution import Occlusion


def test_linear_single_feature_windows(rng):
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2)])
    w = model.layers[0].get_weights()[0][:, 1]
    x = rng.normal(size=(3, 6)).astype("float32")
    attr = Occlusion(model).attribute(x, (1,), baselines=0.5, target=1, internal_batch_size=4)
    np.testing.assert_allclose(attr, w * (x - 0.5), rtol=1e-4, atol=1e-5)


def test_overlapping_windows_2d(rng):
    # 2x2 windows, stride 1 on a 3x3 input of f = sum(x): each window removes the sum of
    # its 4 cells; a cell's attribution is the mean over the windows covering it.
    f = lambda x: np.sum(x, axis=(1, 2))[:, None]  # noqa: E731
    import tensorflow as tf

    model = lambda x: tf.reduce_sum(x, axis=(1, 2))[:, None]  # noqa: E731
    x = rng.normal(size=(2, 3, 3)).astype("float32")
    attr = Occlusion(model).attribute(x, (2, 2), strides=1)
    expected = np.zeros_like(x)
    count = np.zeros((3, 3))
    for i in range(2):
        for j in range(2):
            occ = x.copy()
            occ[:, i : i + 2, j : j + 2] = 0
            d = f(x)[:, 0] - f(occ)[:, 0]
            expected[:, i : i + 2, j : j + 2] += d[:, None, None]
            count[i : i + 2, j : j + 2] += 1
    np.testing.assert_allclose(attr, expected / count, rtol=1e-5, atol=1e-6)


def test_token_positions():
    model = text_model()
    tokens = np.array([[5, 3, 9, 12, 0, 0]], "int32")
    attr = Occlusion(model).attribute(tokens, (1,), baselines=0, target=0, internal_batch_size=5)
    base = model(tokens).numpy()[0, 0]
    for t in range(6):
        occ = tokens.copy()
        occ[0, t] = 0
        assert attr[0, t] == pytest.approx(base - model(occ).numpy()[0, 0], abs=1e-5)
    assert np.all(attr[0, 4:] == 0)


def test_batch_invariance_and_errors(rng):
    model = smooth_mlp()
    x = rng.normal(size=(3, 5)).astype("float32")
    occ = Occlusion(model)
    full = occ.attribute(x, (2,), strides=1, target=[0, 1, 2], internal_batch_size=7)
    for i, t in enumerate([0, 1, 2]):
        np.testing.assert_allclose(
            occ.attribute(x[i : i + 1], (2,), target=t), full[i : i + 1], rtol=1e-5, atol=1e-6
        )
    with pytest.raises(ValueError, match="sliding_window_shapes"):
        occ.attribute(x, (6,), target=0)
    with pytest.raises(ValueError, match="strides"):
        occ.attribute(x, (2,), strides=0, target=0)
