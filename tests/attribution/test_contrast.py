"""Contrastive targets ("class a rather than b") for every method, and score spaces."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastrace.attribution import (
    Contrast,
    InputXGradient,
    IntegratedGradients,
    LayerIntegratedGradients,
    Occlusion,
    Saliency,
)


@pytest.fixture(scope="module")
def classifier():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((5,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(4)
    ])


def test_contrast_is_the_difference_for_linear_methods(classifier, rng):
    x = rng.normal(size=(3, 5)).astype("float32")
    for method in (InputXGradient(classifier), IntegratedGradients(classifier)):
        a = method.attribute(x, target=2)
        b = method.attribute(x, target=[1, 0, 3])
        both = method.attribute(x, target=Contrast(2, foil=[1, 0, 3]))
        np.testing.assert_allclose(both, a - b, rtol=1e-5, atol=1e-6)
    occ = Occlusion(classifier)
    diff = occ.attribute(x, (1,), target=Contrast(2, 1))
    np.testing.assert_allclose(
        diff, occ.attribute(x, (1,), target=2) - occ.attribute(x, (1,), target=1), atol=1e-5
    )


def test_probability_space_matches_a_hand_written_callable(classifier, rng):
    x = rng.normal(size=(2, 5)).astype("float32")
    got = Saliency(classifier).attribute(
        x, target=Contrast(1, foil=3, space="probability"), abs=False
    )
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        p = tf.nn.softmax(classifier(xt), -1)
        score = p[:, 1] - p[:, 3]
    np.testing.assert_allclose(got, tape.gradient(score, xt).numpy(), rtol=1e-4, atol=1e-7)
    got = Saliency(classifier).attribute(x, target=Contrast(0, space="log_probability"), abs=False)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        score = tf.nn.log_softmax(classifier(xt), -1)[:, 0]
    np.testing.assert_allclose(got, tape.gradient(score, xt).numpy(), rtol=1e-4, atol=1e-7)


def test_new_contrast_values_do_not_retrace(classifier, rng):
    x = rng.normal(size=(2, 5)).astype("float32")
    ig = IntegratedGradients(classifier)
    ig.attribute(x, target=Contrast(0, 1), n_steps=4)
    ig.attribute(x, target=Contrast([2, 3], [1, 0]), n_steps=4)
    ig.attribute(x, target=3, n_steps=4)  # a plain target is a contrast with no foil
    assert ig.engine.trace_count == 1


def test_sequence_model_contrast_on_the_token_embedding():
    keras.utils.set_random_seed(1)
    ids_in = keras.Input((6,), dtype="int32")
    emb = keras.layers.Embedding(10, 4, name="emb")
    model = keras.Model(ids_in, keras.layers.Dense(10)(emb(ids_in)))  # (B, T, V) logits
    ids = np.array([[1, 2, 3, 4, 5, 6]])
    lig = LayerIntegratedGradients(model, "emb")
    pos, v = 2, 10
    a = lig.attribute(ids, baselines=0, target=pos * v + 7, n_steps=8)
    b = lig.attribute(ids, baselines=0, target=pos * v + 4, n_steps=8)
    both, delta = lig.attribute(ids, baselines=0, target=Contrast(pos * v + 7, pos * v + 4),
                                n_steps=8, return_convergence_delta=True)
    np.testing.assert_allclose(both, a - b, rtol=1e-5, atol=1e-6)
    assert np.abs(delta).max() < 1e-4  # a linear head: IG is exact


def test_bad_contrasts():
    with pytest.raises(ValueError, match="`space`.*Received: space='softmax'"):
        Contrast(1, 2, space="softmax")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    x = np.ones((1, 2), "float32")
    with pytest.raises(ValueError, match="out of range"):
        Saliency(model).attribute(x, target=Contrast(1, 7))
    with pytest.raises(ValueError, match="1.7"):
        Saliency(model).attribute(x, target=1.7)
