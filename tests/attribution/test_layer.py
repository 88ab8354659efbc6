import keras
import numpy as np
import pytest
import tensorflow as tf
from attr_models import smooth_mlp, text_model

from kerastrace.attribution import (
    IntegratedGradients,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    token_scores,
)

TOKENS = np.array([[5, 3, 9, 12, 0, 0], [7, 7, 1, 2, 4, 0]], "int32")


def _oracle(model, acts, tokens, cls):
    """Independent eager re-implementation of the model above the embedding."""
    mask = tf.not_equal(tokens, 0)
    h, _ = model.get_layer("block")(tf.constant(acts), mask=mask)
    m = tf.cast(mask, "float32")[..., None]
    pooled = tf.reduce_sum(h * m, 1) / tf.reduce_sum(m, 1)
    return model.get_layer("head")(pooled).numpy()[:, cls]


def test_layer_ig_transformer_completeness():
    model = text_model()
    lig = LayerIntegratedGradients(model, model.get_layer("emb"))
    attr, delta = lig.attribute(
        TOKENS,
        baselines=0,
        target=1,
        n_steps=64,
        return_convergence_delta=True,
        internal_batch_size=40,
    )
    assert attr.shape == (2, 6, 8)
    table = model.get_layer("emb").get_weights()[0]
    act_x, act_b = table[TOKENS], np.broadcast_to(table[0], (2, 6, 8))
    expected = _oracle(model, act_x, TOKENS, 1) - _oracle(model, act_b, TOKENS, 1)
    assert np.all(np.abs(expected) > 1e-2)  # non-trivial
    np.testing.assert_allclose(attr.reshape(2, -1).sum(1), expected, atol=2e-3)
    assert np.all(np.abs(delta) < 2e-3)
    # the model output itself is unchanged and the model is not patched afterwards
    assert "call" not in model.get_layer("emb").__dict__
    np.testing.assert_allclose(
        model(TOKENS).numpy()[:, 1], _oracle(model, act_x, TOKENS, 1), atol=1e-5
    )
    scores = token_scores(attr)
    assert scores.shape == (2, 6)
    np.testing.assert_allclose(scores[:, :][TOKENS == 0], 0.0, atol=1e-7)  # pad == baseline
    norms = token_scores(attr, "norm")
    np.testing.assert_allclose(norms, np.linalg.norm(attr, axis=-1), rtol=1e-6)


def test_layer_ig_chunking_and_no_retrace():
    model = text_model(seed=1)
    lig = LayerIntegratedGradients(model, "emb")
    ref = lig.attribute(TOKENS, target=0, n_steps=10)
    for chunk in (3, 7, 20):
        np.testing.assert_allclose(
            lig.attribute(TOKENS, target=0, n_steps=10, internal_batch_size=chunk),
            ref,
            rtol=1e-4,
            atol=1e-6,
        )
    one = lig.attribute(TOKENS[1:], target=0, n_steps=10)
    np.testing.assert_allclose(one, ref[1:], rtol=1e-4, atol=1e-6)
    assert lig.engine.trace_count == 1


def test_layer_ig_on_input_of_first_layer_equals_ig(rng):
    model = smooth_mlp()
    x = rng.normal(size=(3, 5)).astype("float32")
    ig = IntegratedGradients(model).attribute(x, baselines=0.2, target=2, n_steps=20)
    lig = LayerIntegratedGradients(model, model.layers[0]).attribute(
        x, baselines=0.2, target=2, n_steps=20, attribute_to_layer_input=True
    )
    np.testing.assert_allclose(lig, ig, rtol=1e-5, atol=1e-6)


def test_layer_grad_x_activation_linear_embedding():
    keras.utils.set_random_seed(0)
    tokens = keras.Input((3,), dtype="int32")
    h = keras.layers.Embedding(6, 2, name="emb")(tokens)
    model = keras.Model(tokens, keras.layers.Dense(1, name="d")(keras.layers.Flatten()(h)))
    t = np.array([[1, 4, 2]])
    attr = LayerGradientXActivation(model, "emb").attribute(t)
    table = model.get_layer("emb").get_weights()[0]
    w = model.get_layer("d").get_weights()[0][:, 0].reshape(3, 2)
    np.testing.assert_allclose(attr[0], table[t[0]] * w, rtol=1e-5)
    grad = LayerGradientXActivation(model, "emb", multiply_by_inputs=False).attribute(t)
    np.testing.assert_allclose(grad[0], w, rtol=1e-5)


def test_layer_errors():
    model = text_model()
    with pytest.raises(ValueError):
        LayerIntegratedGradients(model, "nope")
    with pytest.raises(TypeError, match="layer"):
        LayerIntegratedGradients(model, 3)
    lig = LayerIntegratedGradients(model, "emb")
    with pytest.raises(ValueError, match="explicit target"):
        lig.attribute(TOKENS)
    with pytest.raises(ValueError, match="n_steps"):
        lig.attribute(TOKENS, target=0, n_steps=0)
    other = keras.layers.Dense(3)
    other.build((None, 8))
    with pytest.raises(ValueError, match="not a layer of the model"):
        LayerIntegratedGradients(model, other)
    # The embedding is called once per forward pass: call 3 does not exist.
    with pytest.raises(ValueError, match=r"called 1 time\(s\).*layer_call=3"):
        LayerIntegratedGradients(model, "emb", layer_call=3).attribute(TOKENS, target=0)


def test_layer_ig_on_tuple_output_of_transformer_block():
    model = text_model(seed=3)
    lig = LayerIntegratedGradients(model, "block")
    attr, delta = lig.attribute(
        TOKENS, baselines=0, target=0, n_steps=32, return_convergence_delta=True
    )
    assert attr.shape == (2, 6, 8)
    # the head is linear in the block output through a masked mean: IG is exact there
    assert np.all(np.abs(delta) < 1e-4)
    assert np.abs(attr).sum() > 0
    np.testing.assert_allclose(attr[TOKENS == 0], 0.0, atol=1e-7)  # masked out of the mean
