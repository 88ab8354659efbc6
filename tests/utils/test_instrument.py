"""The instrumentation core: one walker, one path scheme, one interceptor, attention seams."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastrace._utils import instrument
from kerastrace.layers import SelfAttention, TransformerBlock


def _nested_model():
    shared = keras.layers.Dense(4, name="shared")
    inner_in = keras.Input((4,))
    inner = keras.Model(inner_in, shared(keras.layers.Dense(4, name="d1")(inner_in)), name="inner")
    x_in = keras.Input((4,))
    h = inner(x_in)
    out = keras.layers.Dense(2, name="head")(shared(h))  # `shared` is called twice
    return keras.Model(x_in, out, name="outer"), shared


def test_walk_one_path_per_layer_without_model_name():
    model, shared = _nested_model()
    paths = [n.path for n in instrument.walk(model)]
    assert paths == ["inner", "inner/d1", "inner/shared", "head"]
    assert instrument.path_of(model, shared) == "inner/shared"  # first path, listed once
    assert instrument.resolve_layer(model, "d1")[0] == "inner/d1"
    assert instrument.resolve_layer(model, "inner/shared")[1] is shared
    with pytest.raises(ValueError, match="no layer with that path or name.*Received: layer='nope'"):
        instrument.resolve_layer(model, "nope")
    with pytest.raises(TypeError, match="layer=3"):
        instrument.resolve_layer(model, 3)


def test_intercept_one_call_and_always_restore():
    model, shared = _nested_model()
    x = np.ones((1, 4), "float32")
    ref = model(x).numpy()
    seen = []

    def zero_out(original, *args, **kwargs):
        seen.append(True)
        return tf.zeros_like(original(*args, **kwargs))

    with instrument.intercept(shared, zero_out, call=1) as state:
        changed = model(x).numpy()
    assert state.count == 2 and state.hits == 1 and seen == [True]
    head = model.get_layer("head")
    np.testing.assert_allclose(changed, head.bias.numpy()[None], atol=1e-6)  # head sees zeros
    assert "call" not in vars(shared)
    np.testing.assert_allclose(model(x).numpy(), ref)
    with pytest.raises(RuntimeError, match="boom"):
        with instrument.intercept(shared, lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom"))):
            model(x)
    assert "call" not in vars(shared)  # restored after the error too
    with instrument.capture(shared, call=3) as state:
        model(x)
    with pytest.raises(ValueError, match=r"called 2 time\(s\).*layer_call=3"):
        state.check("inner/shared")


def test_patch_method_keeps_an_existing_instance_attribute():
    layer = keras.layers.Dense(2)
    own = lambda *a, **k: "own"  # noqa: E731
    object.__setattr__(layer, "call", own)
    with instrument.patch_method(layer, "call", lambda cur: lambda *a, **k: ("wrapped", cur())):
        assert layer.call() == ("wrapped", "own")
    assert layer.call is own


def test_keras_mha_seam_reads_the_weights_keras_returns_and_probes_them():
    keras.utils.set_random_seed(0)
    q_in, kv_in = keras.Input((5, 8)), keras.Input((3, 8))
    self_att = keras.layers.MultiHeadAttention(2, 4, name="self_att")
    cross = keras.layers.MultiHeadAttention(2, 4, name="cross")
    h = self_att(q_in, q_in)
    out = cross(h, kv_in)
    model = keras.Model([q_in, kv_in], out)
    rng = np.random.default_rng(0)
    q = rng.normal(size=(2, 5, 8)).astype("float32")
    kv = rng.normal(size=(2, 3, 8)).astype("float32")
    _, ref_self = self_att(q, q, return_attention_scores=True)
    h_val = self_att(q, q)
    _, ref_cross = cross(h_val, kv, return_attention_scores=True)
    got = []
    layers = instrument.attention_layers(model)
    with instrument.attention_seams(layers, lambda site, w: got.append((site, w))) as sites:
        model([q, kv])
    # One block holds both, so its self-attention is the decoder's (AttentionSite.stack).
    assert [(s.path, s.kind, s.stack) for s in sites] == [
        ("self_att", "self", "decoder"), ("cross", "cross", "cross")
    ]
    np.testing.assert_allclose(got[0][1], ref_self, atol=1e-6)
    np.testing.assert_allclose(got[1][1], ref_cross, atol=1e-6)
    # A probe P shifts the weights the layer uses: its output is computed with A + P.
    probe = rng.normal(size=ref_self.shape).astype("float32") * 0.1
    with instrument.attention_seams({"self_att": self_att}, lambda s, w: tf.constant(probe)):
        shifted = self_att(q, q)
    value = self_att.value_dense(q)
    ctx = np.einsum("bnts,bsnh->btnh", ref_self.numpy() + probe, value.numpy())
    expected = self_att.output_dense(ctx)
    np.testing.assert_allclose(shifted, expected, rtol=1e-5, atol=1e-5)
    assert "_compute_attention" not in vars(self_att) and "call" not in vars(self_att)


def test_self_attention_seam_and_mixed_precision_self_detection():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        inp = keras.Input((4, 8))
        x, _ = TransformerBlock(2, 8, name="blk")(inp)
        x = keras.layers.MultiHeadAttention(2, 4, name="mha")(x, x)
        model = keras.Model(inp, x)
        sites_out = []
        with instrument.attention_seams(
            instrument.attention_layers(model), lambda s, w: sites_out.append(w.dtype)
        ) as sites:
            model(np.ones((1, 4, 8), "float32"))
    finally:
        keras.config.set_dtype_policy("float32")
    assert [(s.path, s.kind, s.family) for s in sites] == [
        ("blk/attention", "self", "kerastrace"), ("mha", "self", "keras")
    ]
    assert sites_out == [tf.float32, tf.float32]


def test_find_token_embedding_skips_position_embeddings():
    ids = keras.Input((6,), dtype="int32")
    seg = keras.Input((6,), dtype="int32")

    class Positions(keras.layers.Layer):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.emb = keras.layers.Embedding(6, 4, name="position_table")

        def call(self, x):
            return x + self.emb(keras.ops.arange(6))[None]

    tok = keras.layers.Embedding(10, 4, name="words")
    x = tok(ids) + keras.layers.Embedding(2, 4, name="segment_emb")(seg)
    x = Positions()(x)
    model = keras.Model([ids, seg], keras.layers.Dense(1)(keras.layers.Flatten()(x)))
    assert instrument.find_token_embedding(model) is tok

    images = keras.Input((4,))
    pos_only = Positions()(keras.layers.Reshape((1, 4))(images))
    vision = keras.Model(images, pos_only)
    assert instrument.find_token_embedding(vision) is None


def test_find_token_embedding_on_a_subclassed_model_with_specs():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.pos = keras.layers.Embedding(5, 3, name="pos")
            self.tok = keras.layers.Embedding(9, 3, name="tok")

        def call(self, x):
            return self.tok(x) + self.pos(keras.ops.arange(5))[None]

    model = Sub()
    model(np.zeros((1, 5), "int32"))
    spec = tf.TensorSpec((None, 5), tf.int32)
    assert instrument.find_token_embedding(model, spec) is model.tok


def test_self_attention_compute_attention_is_the_seam():
    layer = SelfAttention(2, 3)
    x = np.random.default_rng(1).normal(size=(1, 4, 6)).astype("float32")
    _, ref = layer(x)
    got = []
    with instrument.attention_seams({"sa": layer}, lambda s, w: got.append(w)):
        layer(x)
    np.testing.assert_allclose(got[0], ref, atol=1e-7)
