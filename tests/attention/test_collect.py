import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastrace.attention import attention_layers, collect
from kerastrace.layers import SelfAttention, TransformerBlock


def _x(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _functional_mixed():
    keras.utils.set_random_seed(1)
    inp = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(30, 16, name="emb")(inp)
    x, _ = TransformerBlock(2, 32, name="block")(x)
    mha = keras.layers.MultiHeadAttention(4, 4, name="mha")
    x = mha(x, x)
    inner_in = keras.Input((6, 16))
    inner_out = SelfAttention(2, 8, return_attention_scores=False, name="sa")(inner_in)
    inner = keras.Model(inner_in, inner_out, name="encoder")
    x = inner(x)
    out = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inp, keras.layers.Dense(3)(out)), mha


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.proj = keras.layers.Dense(8)
        self.mha = keras.layers.MultiHeadAttention(2, 4, name="mha")
        self.block = TransformerBlock(2, 16, return_attention_scores=False, name="block")

    def call(self, x):
        h = self.proj(x)
        h = self.mha(h, h)
        return self.block(h)


def test_paths_found_at_every_depth():
    model, _ = _functional_mixed()
    assert list(attention_layers(model)) == ["block/attention", "mha", "encoder/sa"]


@pytest.mark.parametrize("compiled", [True, False])
def test_mha_weights_match_direct_call_and_model_unchanged(compiled):
    model, mha = _functional_mixed()
    ids = np.array([[1, 2, 3, 4, 5, 6], [7, 8, 9, 1, 2, 3]])
    before_out = np.asarray(model(ids))
    before_w = [np.array(w) for w in model.get_weights()]
    got = collect(model, ids, compiled=compiled)
    assert set(got) == {"block/attention", "mha", "encoder/sa"}
    # Oracle: the stock MHA called directly with return_attention_scores=True
    # on the exact input it sees inside the model.
    feat = keras.Model(model.inputs[0], model.get_layer("block").output[0])(ids)
    _, ref = mha(feat, feat, return_attention_scores=True)
    np.testing.assert_allclose(got["mha"], np.asarray(ref), atol=1e-5)
    assert got["mha"].dtype == np.float32 and got["mha"].shape == (2, 4, 6, 6)
    _, ref_block = model.get_layer("block")(model.get_layer("emb")(ids))
    np.testing.assert_allclose(got["block/attention"], np.asarray(ref_block), atol=1e-5)
    np.testing.assert_allclose(got["encoder/sa"].sum(-1), 1.0, atol=1e-5)
    # Nothing changed: outputs, weights, no leftover patch, flags restored.
    np.testing.assert_allclose(np.asarray(model(ids)), before_out, atol=1e-6)
    for a, b in zip(model.get_weights(), before_w):
        np.testing.assert_array_equal(a, b)
    for layer in attention_layers(model).values():
        assert "call" not in layer.__dict__
    assert model.get_layer("encoder").get_layer("sa").return_attention_scores is False


def test_subclassed_model_and_drop_in_flag():
    keras.utils.set_random_seed(2)
    model = Subclassed()
    x = _x((2, 5, 3))
    ref = np.asarray(model(x))
    got = collect(model, x)
    assert list(got) == ["mha", "block/attention"]
    np.testing.assert_allclose(np.asarray(model(x)), ref, atol=1e-6)
    h = model.proj(x)
    _, ref_w = model.mha(h, h, return_attention_scores=True)
    np.testing.assert_allclose(got["mha"], np.asarray(ref_w), atol=1e-5)
    assert model.block.return_attention_scores is False


def test_compiled_equals_eager_and_does_not_retrace_on_values():
    model, _ = _functional_mixed()
    a = collect(model, np.array([[1, 2, 3, 4, 5, 6]]), compiled=True)
    b = collect(model, np.array([[1, 2, 3, 4, 5, 6]]), compiled=False)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5)
    from kerastrace.attention._collect import _CACHE

    fn = _CACHE[model][1]
    n = fn.experimental_get_tracing_count()
    collect(model, np.array([[3, 2, 1, 4, 5, 6]]))
    assert fn.experimental_get_tracing_count() == n


def test_compiled_sees_weight_updates():
    model, _ = _functional_mixed()
    ids = np.array([[1, 2, 3, 4, 5, 6]])
    a = collect(model, ids)["mha"]
    mha = model.get_layer("mha")
    mha.query_dense.kernel.assign(mha.query_dense.kernel * 3.0)
    b = collect(model, ids)["mha"]
    assert not np.allclose(a, b)
    np.testing.assert_allclose(b, collect(model, ids, compiled=False)["mha"], atol=1e-5)


def test_masked_keys_get_zero_weight():
    inp = keras.Input((5,), dtype="int32")
    x = keras.layers.Embedding(20, 8, mask_zero=True)(inp)
    x, _ = TransformerBlock(2, 16, name="block")(x)
    model = keras.Model(inp, x)
    w = collect(model, np.array([[3, 4, 5, 0, 0]]))["block/attention"]
    np.testing.assert_array_equal(w[0, :, :3, 3:], 0.0)
    np.testing.assert_allclose(w[0, :, :3].sum(-1), 1.0, atol=1e-6)


def test_layers_filter_and_errors():
    model, _ = _functional_mixed()
    assert list(collect(model, np.ones((1, 6), "int32"), layers=["mha"])) == ["mha"]
    with pytest.raises(ValueError, match="layers"):
        collect(model, np.ones((1, 6), "int32"), layers=["nope"])
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no attention layer"):
        collect(plain, np.ones((1, 3)))


def test_shared_layer_called_twice_gets_two_keys():
    inp = keras.Input((4, 8))
    sa = SelfAttention(2, 4, return_attention_scores=False, name="shared")
    out = sa(sa(inp))
    model = keras.Model(inp, out)
    got = collect(model, _x((1, 4, 8)))
    assert list(got) == ["shared", "shared:1"]
    assert not np.allclose(got["shared"], got["shared:1"])


def test_works_inside_tf_function_callers():
    model, _ = _functional_mixed()
    x = tf.constant([[1, 2, 3, 4, 5, 6]])
    assert collect(model, x)["mha"].shape == (1, 4, 6, 6)
