import keras
import numpy as np
import pytest
from attr_models import text_model

from kerastrace.attribution import AttentionXGradient, GradientWeightedRollout
from kerastrace.layers import SelfAttention

T, D, H, KD = 4, 6, 2, 3


def _single_layer_model():
    keras.utils.set_random_seed(2)
    x_in = keras.Input((T, D))
    att = SelfAttention(num_heads=H, key_dim=KD, name="att")
    out, _ = att(x_in)
    pooled = keras.layers.GlobalAveragePooling1D()(out)
    return keras.Model(x_in, keras.layers.Dense(1, name="head")(pooled)), att


def _oracle_grad(att, head, x):
    """d score / d A[h, i, j] = (1/T) V_h[j] . (W_o w)_h for mean-pool + Dense."""
    qkv = x @ att.qkv_kernel.numpy() + att.qkv_bias.numpy()
    val = qkv[..., 2 * H * KD :].reshape(x.shape[0], T, H, KD)  # (B, T, H, Vd)
    u = att.output_kernel.numpy() @ head.get_weights()[0][:, 0]  # (H*Vd,)
    u = u.reshape(H, KD)
    g = np.einsum("bjhv,hv->bhj", val, u) / T  # (B, H, j)
    return np.broadcast_to(g[:, :, None, :], (x.shape[0], H, T, T))


def test_attention_x_gradient_matches_analytic(rng):
    model, att = _single_layer_model()
    x = rng.normal(size=(3, T, D)).astype("float32")
    axg = AttentionXGradient(model)
    wg = axg.weights_and_gradients(x, internal_batch_size=2)
    (name,) = wg
    weights, grads = wg[name]
    _, ref_w = att(x)
    np.testing.assert_allclose(weights, ref_w.numpy(), atol=1e-6)
    oracle = _oracle_grad(att, model.get_layer("head"), x)
    np.testing.assert_allclose(grads, oracle, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(axg.attribute(x)[name], ref_w.numpy() * oracle, rtol=1e-4, atol=1e-7)
    assert "_compute_attention" not in att.__dict__ and "call" not in att.__dict__
    assert axg.trace_count == 1  # padded chunks of 2 share one trace


def test_rollout_single_layer_formula(rng):
    model, att = _single_layer_model()
    x = rng.normal(size=(2, T, D)).astype("float32")
    _, w = att(x)
    abar = np.maximum(w.numpy() * _oracle_grad(att, model.get_layer("head"), x), 0).mean(1)
    expected = np.eye(T) + abar
    rollout = GradientWeightedRollout(model)
    np.testing.assert_allclose(rollout.attribute_matrix(x), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        rollout.attribute(x, query_index=1), expected[:, 1], rtol=1e-4, atol=1e-6
    )
    # "auto" reads the mean row of a mean-pooled model, as its head does.
    np.testing.assert_allclose(rollout.attribute(x), expected.mean(1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(rollout.attribute(x, query="last"), expected[:, -1], rtol=1e-4)
    with pytest.raises(ValueError, match="`query`.*Received: query=9"):
        rollout.attribute(x, query=9)


def test_transformer_text_model_two_blocks_and_padding():
    model = text_model()
    tokens = np.array([[5, 3, 9, 0, 0, 0], [1, 2, 3, 4, 5, 6]], "int32")
    before = model(tokens).numpy()
    maps = AttentionXGradient(model).attribute(tokens, target=1)
    assert list(maps) == ["block/attention"]
    m = maps["block/attention"]
    assert m.shape == (2, 2, 6, 6)
    np.testing.assert_allclose(m[0, :, :, 3:], 0.0)  # padded keys have zero weight
    assert np.abs(m).sum() > 0
    rel = GradientWeightedRollout(model).attribute_matrix(tokens, target=1)
    assert rel.shape == (2, 6, 6) and np.all(rel >= 0)
    # outputs unchanged after the methods ran
    np.testing.assert_allclose(model(tokens).numpy(), before, rtol=1e-6)


def test_no_attention_layers():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="SelfAttention"):
        AttentionXGradient(model)


def test_attention_x_gradient_on_keras_mha_matches_analytic(rng):
    """Stock keras MultiHeadAttention: d score / d A[n, t, s] = (1/T) V[s, n] . (W_o[n] w)."""
    keras.utils.set_random_seed(3)
    x_in = keras.Input((T, D))
    mha = keras.layers.MultiHeadAttention(num_heads=H, key_dim=KD, name="mha")
    pooled = keras.layers.GlobalAveragePooling1D()(mha(x_in, x_in))
    model = keras.Model(x_in, keras.layers.Dense(1, name="head")(pooled))
    x = rng.normal(size=(3, T, D)).astype("float32")
    _, ref_w = mha(x, x, return_attention_scores=True)
    value = mha.value_dense(x).numpy()  # (B, S, N, H)
    w_head = model.get_layer("head").get_weights()[0][:, 0]  # (D,)
    u = np.einsum("nhd,d->nh", mha.output_dense.kernel.numpy(), w_head)
    oracle = np.einsum("bsnh,nh->bns", value, u)[:, :, None, :] / T  # same for every query t
    oracle = np.broadcast_to(oracle, ref_w.shape)
    wg = AttentionXGradient(model).weights_and_gradients(x)
    (weights, grads), = wg.values()
    np.testing.assert_allclose(weights, ref_w.numpy(), atol=1e-6)
    np.testing.assert_allclose(grads, oracle, rtol=1e-4, atol=1e-6)
    assert wg.sites["mha"].family == "keras"
