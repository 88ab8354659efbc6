import math

import keras
import numpy as np
import pytest

from kerastrace.layers import SelfAttention
from kerastrace.testing import LayerHarness

RNG = np.random.default_rng(42)


def _x(b=2, t=6, d=8, seed=0):
    return np.random.default_rng(seed).normal(size=(b, t, d)).astype("float32")


# ---------------------------------------------------------------- harness
@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_heads": 2, "key_dim": 4},
        {"num_heads": 3, "key_dim": 4, "value_dim": 5, "output_dim": 7, "dropout": 0.1},
        {"num_heads": 1, "key_dim": 8, "use_bias": False},
    ],
)
def test_layer_harness(kwargs, tmp_path):
    harness = LayerHarness(SelfAttention, kwargs, input_shape=(4, 6, 8))
    out_dim = kwargs.get("output_dim", 8)
    harness.run_all(
        expected_shapes=[(None, 6, out_dim), (None, kwargs["num_heads"], 6, 6)],
        directory=str(tmp_path),
    )


def test_no_aux_output_is_a_sequential_drop_in():
    harness = LayerHarness(
        SelfAttention,
        {"num_heads": 2, "key_dim": 4, "return_attention_scores": False},
        input_shape=(2, 5, 8),
        aux_dtypes=(),
    )
    harness.check_symbolic_and_eager(expected_shapes=[(None, 5, 8)])
    model = keras.Sequential(
        [
            keras.Input((5, 8)),
            SelfAttention(2, 4, return_attention_scores=False),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1),
        ]
    )
    assert model(_x(2, 5, 8)).shape == (2, 1)


# ------------------------------------------------- hand-computed oracle
def test_identity_kernels_match_hand_computed_attention():
    layer = SelfAttention(num_heads=1, key_dim=2, use_bias=False)
    layer.build((None, 2, 2))
    eye = np.eye(2, dtype="float32")
    layer.qkv_kernel.assign(np.concatenate([eye, eye, eye], axis=1))
    layer.output_kernel.assign(eye)
    x = np.array([[[1.0, 0.0], [0.0, 1.0]]], dtype="float32")
    out, w = layer(x)
    # scores = x x^T / sqrt(2) = diag(1/sqrt(2)); softmax of [a, 0] per row.
    a = 1.0 / math.sqrt(2.0)
    p = math.exp(a) / (math.exp(a) + 1.0)
    expected_w = np.array([[p, 1 - p], [1 - p, p]], dtype="float32")
    np.testing.assert_allclose(np.asarray(w)[0, 0], expected_w, atol=1e-6)
    # outputs = W @ V with V = x = I, output projection = I.
    np.testing.assert_allclose(np.asarray(out)[0], expected_w, atol=1e-6)


def test_two_heads_split_features_hand_computed():
    # Head 0 sees feature 0, head 1 sees feature 1; both value heads copy x.
    layer = SelfAttention(num_heads=2, key_dim=1, use_bias=False)
    layer.build((None, 3, 2))
    eye = np.eye(2, dtype="float32")
    layer.qkv_kernel.assign(np.concatenate([eye, eye, eye], axis=1))
    layer.output_kernel.assign(eye)
    x = np.array([[[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]]], dtype="float32")
    _, w = layer(x)
    w = np.asarray(w)[0]
    for h in range(2):
        f = x[0, :, h]
        scores = np.outer(f, f)  # key_dim=1 -> scale 1
        e = np.exp(scores - scores.max(-1, keepdims=True))
        np.testing.assert_allclose(w[h], e / e.sum(-1, keepdims=True), atol=1e-6)


# ------------------------------------------- oracle: keras MultiHeadAttention
def _mha(num_heads=2, key_dim=4, value_dim=None, output_shape=None, use_bias=True, d=8, t=6):
    mha = keras.layers.MultiHeadAttention(
        num_heads=num_heads,
        key_dim=key_dim,
        value_dim=value_dim,
        output_shape=output_shape,
        use_bias=use_bias,
        bias_initializer="random_normal",
        seed=1,
    )
    x = _x(2, t, d)
    mha(x, x)
    return mha


@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"num_heads": 4, "key_dim": 3, "value_dim": 5},
        {"output_shape": 6},
        {"use_bias": False},
    ],
)
def test_from_keras_matches_multi_head_attention(cfg):
    mha = _mha(**cfg)
    layer = SelfAttention.from_keras(mha)
    x = _x(3, 6, 8, seed=5)
    ref_out, ref_w = mha(x, x, return_attention_scores=True)
    out, w = layer(x)
    np.testing.assert_allclose(out, ref_out, atol=1e-6)
    np.testing.assert_allclose(w, ref_w, atol=1e-6)
    # causal
    ref_out, ref_w = mha(x, x, return_attention_scores=True, use_causal_mask=True)
    out, w = layer(x, use_causal_mask=True)
    np.testing.assert_allclose(out, ref_out, atol=1e-6)
    np.testing.assert_allclose(w, ref_w, atol=1e-6)


def test_from_keras_matches_with_attention_mask_and_keras_mask():
    mha = _mha()
    layer = SelfAttention.from_keras(mha)
    x = _x(2, 6, 8, seed=3)
    am = RNG.random((2, 6, 6)) > 0.4
    am[:, np.arange(6), np.arange(6)] = True  # every row keeps at least one key
    ref_out, ref_w = mha(x, x, attention_mask=am, return_attention_scores=True)
    out, w = layer(x, attention_mask=am)
    np.testing.assert_allclose(out, ref_out, atol=1e-6)
    np.testing.assert_allclose(w, ref_w, atol=1e-6)
    out_c, w_c = layer(x, attention_mask=am, use_causal_mask=True)
    ref_out_c, ref_w_c = mha(
        x, x, attention_mask=am, use_causal_mask=True, return_attention_scores=True
    )
    np.testing.assert_allclose(out_c, ref_out_c, atol=1e-6)
    np.testing.assert_allclose(w_c, ref_w_c, atol=1e-6)

    # Keras (padding) masks through a functional model: compare unpadded queries.
    ids = np.array([[3, 4, 5, 6, 0, 0], [1, 2, 3, 4, 5, 6]])
    inp = keras.Input((6,), dtype="int32")
    emb = keras.layers.Embedding(10, 8, mask_zero=True)
    e = emb(inp)
    ref_model = keras.Model(inp, mha(e, e, return_attention_scores=True))
    our_model = keras.Model(inp, layer(e))
    ref_out, ref_w = ref_model(ids)
    out, w = our_model(ids)
    valid = ids != 0
    for b in range(2):
        q = valid[b]
        np.testing.assert_allclose(np.asarray(out)[b, q], np.asarray(ref_out)[b, q], atol=1e-6)
        np.testing.assert_allclose(np.asarray(w)[b][:, q], np.asarray(ref_w)[b][:, q], atol=1e-6)


def test_from_keras_rejects_bad_layers():
    with pytest.raises(TypeError, match="`layer`.*Received: layer=Dense"):
        SelfAttention.from_keras(keras.layers.Dense(3))
    with pytest.raises(ValueError, match="not built"):
        SelfAttention.from_keras(keras.layers.MultiHeadAttention(2, 4))
    cross = keras.layers.MultiHeadAttention(2, 4)
    cross(_x(1, 3, 8), _x(1, 4, 6))
    with pytest.raises(ValueError, match="not used as self-attention"):
        SelfAttention.from_keras(cross)


# --------------------------------------------------------------- masking
def test_masked_keys_get_exactly_zero_and_rows_sum_to_one():
    layer = SelfAttention(2, 4)
    x = _x(2, 5, 8)
    key_mask = np.array([[1, 1, 1, 0, 0], [1, 0, 1, 1, 1]], dtype=bool)
    _, w = layer(x, attention_mask=key_mask)
    w = np.asarray(w)
    assert np.all(w[0, :, :, 3:] == 0.0)
    assert np.all(w[1, :, :, 1] == 0.0)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)


def test_fully_masked_row_is_zero_with_defined_output():
    layer = SelfAttention(2, 4, bias_initializer="random_normal")
    x = _x(1, 4, 8)
    am = np.ones((1, 4, 4), dtype=bool)
    am[0, 2, :] = False  # query 2 may attend to nothing
    out, w = layer(x, attention_mask=am)
    w, out = np.asarray(w), np.asarray(out)
    assert np.all(w[0, :, 2, :] == 0.0)
    np.testing.assert_allclose(w[0, :, [0, 1, 3], :].sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(out[0, 2], layer.output_bias.numpy(), atol=1e-7)
    assert np.all(np.isfinite(out))


def test_keras_mask_masks_queries_and_keys():
    inp = keras.Input((5,), dtype="int32")
    e = keras.layers.Embedding(10, 8, mask_zero=True)(inp)
    out, w = SelfAttention(2, 4)(e)
    assert out._keras_mask is not None
    model = keras.Model(inp, w)
    w = np.asarray(model(np.array([[4, 5, 6, 0, 0]])))
    assert np.all(w[0, :, :3, 3:] == 0.0)
    assert np.all(w[0, :, 3:, :] == 0.0)  # padded queries: all-zero rows
    np.testing.assert_allclose(w[0, :, :3].sum(-1), 1.0, atol=1e-6)


def test_causal_mask_zeroes_the_future():
    _, w = SelfAttention(2, 4)(_x(2, 5, 8), use_causal_mask=True)
    w = np.asarray(w)
    upper = np.triu(np.ones((5, 5), bool), k=1)
    assert np.all(w[..., upper] == 0.0)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)


def test_four_dimensional_per_head_mask():
    layer = SelfAttention(2, 4)
    am = np.ones((1, 2, 4, 4), dtype=bool)
    am[0, 1, :, 0] = False  # head 1 never looks at key 0
    _, w = layer(_x(1, 4, 8), attention_mask=am)
    w = np.asarray(w)
    assert np.all(w[0, 1, :, 0] == 0.0)
    assert np.all(w[0, 0, :, 0] > 0.0)


# --------------------------------------------------------------- dropout
def test_dropout_only_in_training_and_weights_stay_normalized():
    layer = SelfAttention(2, 4, dropout=0.5, seed=3)
    x = _x(2, 6, 8)
    a, wa = layer(x, training=False)
    b, wb = layer(x, training=False)
    np.testing.assert_array_equal(a, b)
    c, wc = layer(x, training=True)
    assert not np.allclose(a, c)
    np.testing.assert_allclose(np.asarray(wc).sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(wa, wc, atol=1e-6)  # weights are pre-dropout


# ------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"num_heads": 0, "key_dim": 4}, r"`num_heads`.*Received: num_heads=0"),
        ({"num_heads": 2, "key_dim": -1}, r"`key_dim`.*Received: key_dim=-1"),
        ({"num_heads": 2, "key_dim": 4, "dropout": 1.5}, r"`dropout`.*Received: dropout=1.5"),
        ({"num_heads": 2.5, "key_dim": 4}, r"`num_heads`.*Received: num_heads=2.5"),
        ({"num_heads": 2, "key_dim": 4, "value_dim": 0}, r"`value_dim`.*Received: value_dim=0"),
    ],
)
def test_bad_constructor_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        SelfAttention(**kwargs)


def test_rank_two_inputs_are_rejected():
    with pytest.raises(ValueError, match=r"`inputs`.*rank 3.*Received: inputs.shape=\(2, 8\)"):
        SelfAttention(2, 4)(np.zeros((2, 8), "float32"))


@pytest.mark.parametrize(
    "shape",
    [(2, 5), (2, 6, 5), (2, 3, 6, 6), (3, 6, 6)],
)
def test_mismatched_attention_mask_shapes_are_rejected(shape):
    layer = SelfAttention(2, 4)
    with pytest.raises(ValueError, match=r"`attention_mask`.*Received: attention_mask.shape"):
        layer(_x(2, 6, 8), attention_mask=np.ones(shape, bool))


def test_attention_mask_of_wrong_rank_is_rejected():
    with pytest.raises(ValueError, match=r"`attention_mask`.*Received: attention_mask.shape=\(2,\)"):
        SelfAttention(2, 4)(_x(2, 6, 8), attention_mask=np.ones((2,), bool))
