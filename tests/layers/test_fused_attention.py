"""The fused path (`keras.ops.dot_product_attention`) against the explicit path.

A `SelfAttention` whose weights nobody reads computes through
`keras.ops.dot_product_attention`; these tests pin that it gives what the
explicit path (`_compute_attention`) gives, with every kind of mask, and
that it steps aside whenever the weights are needed (returned, read through
the `_compute_attention` seam, or used by attention dropout).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from kerastrace._utils import instrument
from kerastrace.attention import collect
from kerastrace.layers import SelfAttention, TransformerBlock
from kerastrace.layers import self_attention as sa_module
from kerastrace.testing import LayerHarness


def _x(b=2, t=6, d=8, seed=0, scale=1.0):
    return (scale * np.random.default_rng(seed).normal(size=(b, t, d))).astype("float32")


@pytest.fixture
def fused_calls(monkeypatch):
    """Count the calls of `keras.ops.dot_product_attention` (the fused path)."""
    calls = []
    original = ops.dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("is_causal", False))
        return original(*args, **kwargs)

    monkeypatch.setattr(keras.ops, "dot_product_attention", spy)
    return calls


def _pair(key_dim=3, value_dim=None, d=8, **kwargs):
    """An explicit (weights) layer and a fused (no weights) layer with the same weights.

    key_dim=3 makes the scale 1/sqrt(3), not a power of two, so the two
    paths round differently and equality is not trivially bitwise.
    """
    kw = {"num_heads": 2, "key_dim": key_dim, "value_dim": value_dim, **kwargs}
    explicit = SelfAttention(**kw, bias_initializer="random_normal")
    explicit.build((None, None, d))
    fused = SelfAttention(**kw, return_attention_scores=False)
    fused.build((None, None, d))
    fused.set_weights(explicit.get_weights())
    return explicit, fused


def _masks():
    rng = np.random.default_rng(3)
    key2 = np.array([[1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0]], bool)  # example 1: no key at all
    full3 = rng.random((2, 6, 6)) > 0.5
    full3[0, 2] = False  # a query with no allowed key
    head4 = rng.random((2, 2, 6, 6)) > 0.4
    shared4 = rng.random((1, 1, 6, 6)) > 0.4
    return {
        "none": {},
        "key_mask_2d": {"attention_mask": key2},
        "mask_3d": {"attention_mask": full3},
        "per_head_4d": {"attention_mask": head4},
        "broadcast_4d": {"attention_mask": shared4},
        "causal": {"use_causal_mask": True},
        "causal_and_key_mask": {"attention_mask": key2, "use_causal_mask": True},
        "causal_and_3d": {"attention_mask": full3, "use_causal_mask": True},
    }


# ---------------------------------------------------- fused == explicit
@pytest.mark.parametrize("case", list(_masks()))
def test_fused_path_equals_explicit_path(case, fused_calls):
    kwargs = _masks()[case]
    explicit, fused = _pair()
    x = _x(seed=1)
    ref, weights = explicit(x, **kwargs)
    assert fused_calls == []  # returning weights never takes the fused path
    got = fused(x, **kwargs)
    assert len(fused_calls) == 1
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=2e-6)
    # Queries with no allowed key: output is exactly the output bias on both paths.
    empty = np.asarray(weights).sum(-1) == 0.0  # (B, H, T)
    if empty.any():
        b, _, t = np.nonzero(empty)
        np.testing.assert_allclose(
            np.asarray(got)[b, t], np.broadcast_to(explicit.output_bias.numpy(), (len(b), 8))
        )


def test_fused_path_with_output_dim_and_causal_kernel(fused_calls):
    explicit, fused = _pair(key_dim=3, output_dim=7)
    x = _x(seed=2)
    ref, _ = explicit(x, use_causal_mask=True)
    got = fused(x, use_causal_mask=True)
    assert fused_calls == [True]  # causal only: the kernel's own causal mask, no mask tensor
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=2e-6)


def test_value_dim_other_than_key_dim_takes_the_explicit_path(fused_calls):
    """JAX's fused kernels need value heads of the key heads' size: no fused path then."""
    explicit, fused = _pair(key_dim=3, value_dim=5, output_dim=7)
    x = _x(seed=2)
    ref, _ = explicit(x, use_causal_mask=True)
    got = fused(x, use_causal_mask=True)
    assert fused_calls == []
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-6)


def test_fused_path_with_keras_padding_mask_through_a_model(fused_calls):
    explicit, fused = _pair(d=8)
    inp = keras.Input((6,), dtype="int32")
    emb = keras.layers.Embedding(20, 8, mask_zero=True)
    e = emb(inp)
    ref_model = keras.Model(inp, explicit(e)[0])
    fused_model = keras.Model(inp, fused(e))
    ids = np.array([[3, 4, 5, 0, 0, 0], [1, 2, 3, 4, 5, 6]])
    ref = np.asarray(ref_model(ids))
    got = np.asarray(fused_model(ids))
    assert fused_calls
    np.testing.assert_allclose(got, ref, atol=2e-6)  # padded queries included (bias only)
    np.testing.assert_allclose(got[0, 3:], np.tile(explicit.output_bias.numpy(), (3, 1)))


def test_fused_gradients_equal_explicit_gradients():
    explicit, fused = _pair()
    x = tf.constant(_x(seed=4))
    am = np.random.default_rng(5).random((2, 6, 6)) > 0.3

    def grads(layer, pick):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = pick(layer(x, attention_mask=am, use_causal_mask=True))
            loss = tf.reduce_sum(out * out)
        return tape.gradient(loss, [x, *layer.trainable_variables])

    ref = grads(explicit, lambda o: o[0])
    got = grads(fused, lambda o: o)
    for r, g in zip(ref, got):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-5)


def test_fused_path_under_xla_and_in_a_training_step():
    harness = LayerHarness(
        SelfAttention,
        {"num_heads": 2, "key_dim": 3, "return_attention_scores": False},
        input_shape=(4, 6, 8),
        aux_dtypes=(),
    )
    harness.check_xla()
    harness.check_training_step()
    harness.check_mixed_precision("mixed_bfloat16", rtol=1e-1)


def test_no_weights_layer_trains_inside_sequential(fused_calls):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6, 8)),
            SelfAttention(2, 4, return_attention_scores=False, name="sa"),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    x = _x(8, 6, 8, seed=6)
    y = x.mean(axis=(1, 2), keepdims=False)[:, None] * 3.0
    before = [np.array(w) for w in model.get_layer("sa").get_weights()]
    history = model.fit(x, y, epochs=5, batch_size=8, verbose=0)
    losses = history.history["loss"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    after = model.get_layer("sa").get_weights()
    assert not any(np.array_equal(a, b) for a, b in zip(before, after))
    assert fused_calls  # the training graph used the fused path


# ---------------------------------------------------------------- dropout
def test_dropout_in_training_falls_back_to_the_explicit_path(fused_calls):
    explicit, fused = _pair(dropout=0.5, seed=7)
    x = _x(seed=8)
    # Inference: dropout is off, the fused path runs and matches.
    np.testing.assert_allclose(fused(x), explicit(x)[0], atol=2e-6)
    assert len(fused_calls) == 1
    # Training: the weights are dropped, so the explicit path runs, with the
    # same seed and therefore the same dropout mask as the weights layer.
    got = np.asarray(fused(x, training=True))
    ref = np.asarray(explicit(x, training=True)[0])
    assert len(fused_calls) == 1
    np.testing.assert_allclose(got, ref, atol=2e-6)
    assert not np.allclose(got, np.asarray(fused(x)), atol=1e-3)


# ------------------------------------------------------------ the seam
def test_wrapped_seam_sees_the_weights_of_a_no_weights_layer(fused_calls):
    explicit, fused = _pair()
    x = _x(seed=9)
    ref_out, ref_w = explicit(x, use_causal_mask=True)
    seen = []
    with instrument.attention_seams({"sa": fused}, lambda site, w: seen.append(w)):
        out = fused(x, use_causal_mask=True)
    assert fused_calls == []  # the wrapped seam forces the explicit path
    np.testing.assert_allclose(np.asarray(seen[0]), np.asarray(ref_w), atol=1e-7)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), atol=1e-6)
    fused(x)  # unwrapped again: back on the fused path
    assert len(fused_calls) == 1


def test_probe_through_the_seam_gives_the_weights_gradient():
    """d(loss)/d(weights) through the seam's probe equals the hand formula."""
    _, fused = _pair()
    x = tf.constant(_x(1, 4, 8, seed=10))
    probe = tf.Variable(tf.zeros((1, 2, 4, 4)))
    with tf.GradientTape() as tape:
        with instrument.attention_seams({"sa": fused}, lambda site, w: probe):
            out = fused(x)
        loss = tf.reduce_sum(out)
    g = tape.gradient(loss, probe).numpy()
    # out = concat_h(A_h V_h) W_o + b -> d sum(out) / dA_h[q, k] = V_h[k] . rowsum(W_o_h)
    d, h, kd = 8, 2, 3
    qkv = fused.qkv_kernel.numpy()
    v = (x.numpy()[0] @ qkv[:, 2 * h * kd :] + fused.qkv_bias.numpy()[2 * h * kd :]).reshape(
        4, h, kd
    )
    wo = fused.output_kernel.numpy().reshape(h, kd, d).sum(-1)  # (h, kd)
    expected = np.einsum("khd,hd->hk", v, wo)[:, None, :].repeat(4, axis=1)
    np.testing.assert_allclose(g[0], expected, rtol=1e-5, atol=1e-5)


def test_subclass_overriding_compute_attention_is_honoured(fused_calls):
    class Doubled(SelfAttention):
        def _compute_attention(self, query, key, value, attention_mask=None, training=None):
            context, weights = super()._compute_attention(query, key, value, attention_mask)
            return 2.0 * context, weights

    layer = Doubled(2, 3, use_bias=False, return_attention_scores=False)
    x = _x(seed=11)
    out = np.asarray(layer(x))
    base = SelfAttention(2, 3, use_bias=False)
    base.build(x.shape)
    base.set_weights(layer.get_weights())
    np.testing.assert_allclose(out, 2.0 * np.asarray(base(x)[0]), rtol=1e-5, atol=1e-6)
    assert fused_calls == []


def test_collect_reads_a_no_weights_transformer_block():
    keras.utils.set_random_seed(2)
    inp = keras.Input((5, 8))
    block = TransformerBlock(2, 16, return_attention_scores=False, name="block")
    model = keras.Model(inp, block(inp))
    x = _x(2, 5, 8, seed=12)
    got = collect(model, x)["block/attention"]
    ref_block = TransformerBlock(2, 16, name="ref")
    ref_block.build(x.shape)
    ref_block.set_weights(block.get_weights())
    ref_out, ref_w = ref_block(x)
    np.testing.assert_allclose(got, np.asarray(ref_w), atol=1e-6)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(ref_out), atol=2e-6)


# ---------------------------------------------- the fused context beside weights
def test_weights_path_with_a_fused_kernel_matches_the_explicit_path(monkeypatch, fused_calls):
    """Where a fused kernel exists (GPU), `_compute_attention` takes its context from it."""
    explicit = SelfAttention(2, 3, bias_initializer="random_normal")
    x = _x(seed=13)
    am = np.random.default_rng(14).random((2, 6, 6)) > 0.5
    am[1, 4] = False  # a query with no allowed key
    ref_out, ref_w = explicit(x, attention_mask=am, use_causal_mask=True)
    monkeypatch.setattr(sa_module, "fused_attention_kernel_available", lambda dtype: True)
    out, w = explicit(x, attention_mask=am, use_causal_mask=True)
    assert len(fused_calls) == 1
    np.testing.assert_array_equal(np.asarray(w), np.asarray(ref_w))
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), atol=2e-6)
    # With dropout active the weights are dropped: no fused context then.
    dropping = SelfAttention(2, 3, dropout=0.5)
    dropping(x, training=True)
    assert len(fused_calls) == 1


# ------------------------------------------------------ routing by dtype
def test_float16_on_tensorflow_takes_the_explicit_path(fused_calls):
    layer = SelfAttention(2, 3, return_attention_scores=False, dtype="mixed_float16")
    out = layer(_x(seed=15))
    assert fused_calls == []  # TF forms the fused scores in float16
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    layer = SelfAttention(2, 3, return_attention_scores=False, dtype="mixed_bfloat16")
    layer(_x(seed=15))
    assert len(fused_calls) == 1


def test_flash_attention_setting_follows_keras_config(fused_calls):
    from keras.src.backend.common import global_state

    from kerastrace.layers._common import flash_attention_setting

    assert flash_attention_setting() is None
    previous = global_state.get_global_attribute("flash_attention", default=None)
    keras.config.disable_flash_attention()
    try:
        assert flash_attention_setting() is False
        _, fused = _pair()
        fused(_x(seed=16))  # TF has no flash kernel: still the fused op, flash off
        assert len(fused_calls) == 1
    finally:
        global_state.set_global_attribute("flash_attention", previous)


@pytest.mark.parametrize("norm_first", [False, True])
def test_no_weights_transformer_block_equals_the_weights_block(norm_first, fused_calls):
    keras.utils.set_random_seed(3)
    ids = keras.Input((6,), dtype="int32")
    emb = keras.layers.Embedding(20, 8, mask_zero=True)
    e = emb(ids)
    with_w = TransformerBlock(2, 16, key_dim=3, norm_first=norm_first, name="with_w")
    without = TransformerBlock(
        2, 16, key_dim=3, norm_first=norm_first, return_attention_scores=False, name="without"
    )
    ref_model = keras.Model(ids, with_w(e, use_causal_mask=True)[0])
    model = keras.Model(ids, without(e, use_causal_mask=True))
    without.set_weights(with_w.get_weights())
    x = np.array([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])  # left padding + causal
    fused_calls.clear()
    got = np.asarray(model(x))
    assert fused_calls
    np.testing.assert_allclose(got, np.asarray(ref_model(x)), atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 5), (2, 6, 5), (2, 3, 6, 6), (2,)])
def test_fused_layer_rejects_misshaped_masks(shape):
    layer = SelfAttention(2, 4, return_attention_scores=False)
    with pytest.raises(ValueError, match=r"`attention_mask`.*Received: attention_mask.shape"):
        layer(_x(2, 6, 8), attention_mask=np.ones(shape, bool))
