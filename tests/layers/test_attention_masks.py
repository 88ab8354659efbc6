"""`attention_mask` values: boolean, 0/1 integers or floats; additive masks refused."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastrace.layers import SelfAttention, TransformerBlock

B, T, D = 2, 5, 8


@pytest.fixture
def x():
    return np.random.default_rng(0).normal(size=(B, T, D)).astype("float32")


def _keep():
    keep = np.ones((B, T), bool)
    keep[0, 3:] = False  # example 0: the last two keys are padding
    keep[1, 0] = False
    return keep


def _additive(keep):
    return np.where(keep, 0.0, -1e9).astype("float32")


def _attention(**kwargs):
    layer = SelfAttention(2, 4, **kwargs)
    layer.build((B, T, D))
    return layer


@pytest.mark.parametrize("dtype", ["float32", "float16", "int32"])
def test_zero_one_masks_equal_boolean_mask(x, dtype):
    layer = _attention()
    keep = _keep()
    out_b, w_b = layer(x, attention_mask=keep)
    out_n, w_n = layer(x, attention_mask=keep.astype(dtype))
    np.testing.assert_array_equal(np.asarray(out_n), np.asarray(out_b))
    np.testing.assert_array_equal(np.asarray(w_n), np.asarray(w_b))
    # blocked keys get exactly zero weight, the others sum to 1
    w = np.asarray(w_b)
    assert np.all(w[0, :, :, 3:] == 0) and np.all(w[1, :, :, 0] == 0)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("fused", [False, True])
def test_additive_mask_is_refused_with_the_fix(x, fused):
    layer = _attention(return_attention_scores=not fused)
    with pytest.raises(ValueError, match="`attention_mask`") as info:
        layer(x, attention_mask=_additive(_keep()))
    message = str(info.value)
    assert "True where attention is allowed" in message
    assert "attention_mask=(m == 0)" in message
    assert "-1000000000.0" in message  # echoes the offending values


def test_converted_additive_mask_matches_boolean_mask(x):
    layer = _attention()
    keep = _keep()
    additive = _additive(keep)
    out_c, w_c = layer(x, attention_mask=additive == 0)
    out_b, w_b = layer(x, attention_mask=keep)
    np.testing.assert_array_equal(np.asarray(w_c), np.asarray(w_b))
    np.testing.assert_array_equal(np.asarray(out_c), np.asarray(out_b))


def test_other_integer_values_are_refused(x):
    with pytest.raises(ValueError, match=r"`attention_mask`.*\[2\]"):
        _attention()(x, attention_mask=np.full((B, T), 2, "int32"))


@pytest.mark.parametrize("fused", [False, True])
def test_traced_additive_mask_gives_nan_not_plausible_numbers(x, fused):
    layer = _attention(return_attention_scores=not fused)
    keep = _keep()

    @tf.function
    def run(inputs, m):
        return layer(inputs, attention_mask=m)

    good = run(x, keep.astype("float32"))
    bad = run(x, _additive(keep))
    expected = layer(x, attention_mask=keep)
    for g, e in zip(tf.nest.flatten(good), tf.nest.flatten(expected)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-5, atol=1e-6)
    for t in tf.nest.flatten(bad):
        assert np.all(np.isnan(np.asarray(t)))


def test_functional_model_with_float_mask_input(x):
    inputs = keras.Input((T, D))
    mask_in = keras.Input((T,), dtype="float32")
    out, w = SelfAttention(2, 4, name="sa")(inputs, attention_mask=mask_in)
    model = keras.Model([inputs, mask_in], [out, w])
    keep = _keep()
    got = model.predict([x, keep.astype("float32")], verbose=0)
    expected = model.get_layer("sa")(x, attention_mask=keep)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, np.asarray(e), rtol=1e-5, atol=1e-6)
    bad = model.predict([x, _additive(keep)], verbose=0)
    assert all(np.all(np.isnan(b)) for b in bad)
    with pytest.raises(ValueError, match="`attention_mask`"):
        model([x, _additive(keep)])


def test_transformer_block_passes_the_mask_through(x):
    block = TransformerBlock(2, 16)
    keep = _keep()
    out_b, w_b = block(x, attention_mask=keep)
    out_f, w_f = block(x, attention_mask=keep.astype("float32"))
    np.testing.assert_array_equal(np.asarray(out_f), np.asarray(out_b))
    np.testing.assert_array_equal(np.asarray(w_f), np.asarray(w_b))
    assert np.all(np.asarray(w_b)[0, :, :, 3:] == 0)
    with pytest.raises(ValueError, match="`attention_mask`.*True where attention is allowed"):
        block(x, attention_mask=_additive(keep))
