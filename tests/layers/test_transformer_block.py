import keras
import numpy as np
import pytest

from kerastrace.layers import SelfAttention, TokenAndPositionEmbedding, TransformerBlock
from kerastrace.testing import LayerHarness


def _x(b=2, t=6, d=8, seed=0):
    return np.random.default_rng(seed).normal(size=(b, t, d)).astype("float32")


@pytest.mark.parametrize("norm_first", [False, True])
def test_layer_harness(norm_first, tmp_path):
    harness = LayerHarness(
        TransformerBlock,
        {"num_heads": 2, "ff_dim": 16, "norm_first": norm_first, "dropout": 0.1},
        input_shape=(4, 6, 8),
        atol=1e-5,
    )
    harness.run_all(expected_shapes=[(None, 6, 8), (None, 2, 6, 6)], directory=str(tmp_path))


def _reference_block(block, x, norm_first, mask=None):
    """The block recomputed with stock Keras layers and the block's weights."""
    att = block.attention
    mha = keras.layers.MultiHeadAttention(att.num_heads, att.key_dim)
    mha(x, x)
    d, h, k = x.shape[-1], att.num_heads, att.key_dim
    qkv = att.qkv_kernel.numpy()
    qb = att.qkv_bias.numpy()
    mha.query_dense.kernel.assign(qkv[:, : h * k].reshape(d, h, k))
    mha.key_dense.kernel.assign(qkv[:, h * k : 2 * h * k].reshape(d, h, k))
    mha.value_dense.kernel.assign(qkv[:, 2 * h * k :].reshape(d, h, k))
    mha.query_dense.bias.assign(qb[: h * k].reshape(h, k))
    mha.key_dense.bias.assign(qb[h * k : 2 * h * k].reshape(h, k))
    mha.value_dense.bias.assign(qb[2 * h * k :].reshape(h, k))
    mha.output_dense.kernel.assign(att.output_kernel.numpy().reshape(h, k, d))
    mha.output_dense.bias.assign(att.output_bias.numpy())
    ln1, ln2 = block.attention_norm, block.ffn_norm

    def ffn(z):
        return block.ffn_outer(block.ffn_inner(z))

    am = None if mask is None else mask[:, None, :]
    if norm_first:
        h1 = ln1(x)
        y = x + mha(h1, h1, attention_mask=am)
        return y + ffn(ln2(y))
    y = ln1(x + mha(x, x, attention_mask=am))
    return ln2(y + ffn(y))


@pytest.mark.parametrize("norm_first", [False, True])
def test_block_equals_its_formula_with_keras_layers(norm_first):
    block = TransformerBlock(
        num_heads=2, ff_dim=16, norm_first=norm_first, bias_initializer="random_normal"
    )
    x = _x(2, 5, 8, seed=7)
    out, w = block(x)
    ref = _reference_block(block, x, norm_first)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert w.shape == (2, 2, 5, 5)
    # key padding mask: keys 3,4 of example 0 are masked
    key_mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    out, w = block(x, attention_mask=key_mask)
    ref = _reference_block(block, x, norm_first, mask=key_mask)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert np.all(np.asarray(w)[0, :, :, 3:] == 0.0)


def test_keras_mask_is_used_and_propagated():
    ids = keras.Input((6,), dtype="int32")
    x = TokenAndPositionEmbedding(20, 6, 8)(ids)
    x, w1 = TransformerBlock(2, 16, name="b1")(x)
    assert x._keras_mask is not None
    x, w2 = TransformerBlock(2, 16, name="b2")(x)
    model = keras.Model(ids, [x, w1, w2])
    _, w1, w2 = model(np.array([[3, 4, 5, 0, 0, 0]]))
    for w in (np.asarray(w1), np.asarray(w2)):
        assert np.all(w[0, :, :3, 3:] == 0.0)
        np.testing.assert_allclose(w[0, :, :3].sum(-1), 1.0, atol=1e-6)


def test_attention_sublayer_is_a_self_attention():
    block = TransformerBlock(4, 32)
    block(_x(1, 3, 16))
    assert isinstance(block.attention, SelfAttention)
    assert block.attention.key_dim == 4


def test_causal_mask_passes_through():
    _, w = TransformerBlock(2, 16)(_x(1, 4, 8), use_causal_mask=True)
    upper = np.triu(np.ones((4, 4), bool), k=1)
    assert np.all(np.asarray(w)[..., upper] == 0.0)


def test_plain_output_in_sequential():
    model = keras.Sequential(
        [
            keras.Input((6, 8)),
            TransformerBlock(2, 16, return_attention_scores=False),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3),
        ]
    )
    assert model(_x(2, 6, 8)).shape == (2, 3)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"num_heads": 0, "ff_dim": 8}, r"`num_heads`.*Received: num_heads=0"),
        ({"num_heads": 2, "ff_dim": -3}, r"`ff_dim`.*Received: ff_dim=-3"),
        ({"num_heads": 2, "ff_dim": 8, "dropout": 1.5}, r"`dropout`.*Received: dropout=1.5"),
        (
            {"num_heads": 2, "ff_dim": 8, "attention_dropout": -0.1},
            r"`attention_dropout`.*Received: attention_dropout=-0.1",
        ),
        ({"num_heads": 2, "ff_dim": 8, "key_dim": -1}, r"`key_dim`.*Received: key_dim=-1"),
    ],
)
def test_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        TransformerBlock(**kwargs)


def test_heads_must_divide_width_without_key_dim():
    with pytest.raises(ValueError, match=r"`num_heads`.*divisible.*Received: num_heads=3"):
        TransformerBlock(3, 16)(_x(1, 4, 8))
    out, _ = TransformerBlock(3, 16, key_dim=4)(_x(1, 4, 8))
    assert out.shape == (1, 4, 8)


def test_rank_two_inputs_are_rejected():
    with pytest.raises(ValueError, match=r"`inputs`.*rank 3"):
        TransformerBlock(2, 8)(np.zeros((2, 8), "float32"))


def test_embedding_config_and_save_round_trip(tmp_path):
    layer = TokenAndPositionEmbedding(12, 5, 4, name="emb")
    clone = TokenAndPositionEmbedding.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    ids = keras.Input((5,), dtype="int32")
    model = keras.Model(ids, layer(ids))
    x = np.array([[1, 2, 3, 0, 0]])
    ref = model(x)
    model.save(tmp_path / "m.keras")
    got = keras.saving.load_model(tmp_path / "m.keras")(x)
    np.testing.assert_array_equal(ref, got)
    # the output is token row + position row
    tok = layer.token_embedding.embeddings.numpy()
    pos = layer.position_embeddings.numpy()
    np.testing.assert_allclose(np.asarray(ref)[0, 1], tok[2] + pos[1], atol=1e-7)


def test_embedding_rejects_long_or_misshaped_inputs():
    with pytest.raises(ValueError, match=r"longer than sequence_length=4"):
        TokenAndPositionEmbedding(10, 4, 3)(np.ones((1, 6), "int32"))
    with pytest.raises(ValueError, match=r"`vocab_size`.*Received: vocab_size=0"):
        TokenAndPositionEmbedding(0, 4, 3)
