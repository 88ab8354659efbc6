"""Mixed precision: float16 overflow (#15) and the dtype of the returned weights."""

import keras
import numpy as np
import pytest

from kerastrace.layers import SelfAttention, TransformerBlock
from kerastrace.testing import LayerHarness

FP16_MAX = float(np.finfo(np.float16).max)


@pytest.fixture(autouse=True)
def _seeded():
    # With activations of magnitude ~300 the scores are ~1e5 apart and the
    # softmax is nearly one-hot; float16's rounding of Q and K (~50 on the
    # scores) flips a row whose two best keys are closer than that. Fixed
    # initial weights keep these comparisons away from such near-ties.
    keras.utils.set_random_seed(0)


def _x(b=2, t=6, d=8, seed=0, scale=1.0):
    return (scale * np.random.default_rng(seed).normal(size=(b, t, d))).astype("float32")


def _copy(layer_cls, ref, x, **kwargs):
    layer = layer_cls(**kwargs)
    layer.build(x.shape)
    layer.set_weights(ref.get_weights())
    return layer


# ------------------------------------------------------ float16 overflow (#15)
def _scaled_scores(layer, x):
    """float32 `Q K^T / sqrt(key_dim)` of a SelfAttention, computed in numpy."""
    h, kd = layer.num_heads, layer.key_dim
    qkv = x @ layer.qkv_kernel.numpy() + layer.qkv_bias.numpy()
    q = qkv[..., : h * kd].reshape(*x.shape[:2], h, kd)
    k = qkv[..., h * kd : 2 * h * kd].reshape(*x.shape[:2], h, kd)
    return np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(kd)


@pytest.mark.parametrize("return_weights", [True, False])
def test_float16_large_inputs_stay_finite_and_match_float32(return_weights):
    x = _x(seed=0, scale=300.0)
    ref = SelfAttention(2, 4)
    ref_out, ref_w = ref(x)
    # The inputs are large enough that Q K^T overflows float16.
    assert np.abs(_scaled_scores(ref, x)).max() > FP16_MAX
    half = _copy(
        SelfAttention,
        ref,
        x,
        num_heads=2,
        key_dim=4,
        dtype="mixed_float16",
        return_attention_scores=return_weights,
    )
    got = half(x)
    out = got[0] if return_weights else got
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    out = np.asarray(keras.ops.cast(out, "float32"))
    assert np.all(np.isfinite(out))
    ref_out = np.asarray(ref_out)
    np.testing.assert_allclose(out, ref_out, atol=2e-3 * np.abs(ref_out).max())
    if return_weights:
        w = np.asarray(got[1])
        assert w.dtype == np.float32 and np.all(np.isfinite(w))
        np.testing.assert_allclose(w, np.asarray(ref_w), atol=1e-2)
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)


def test_float16_large_inputs_with_masks():
    x = _x(seed=1, scale=300.0)
    ref = SelfAttention(2, 4)
    ref(x)
    half = _copy(SelfAttention, ref, x, num_heads=2, key_dim=4, dtype="mixed_float16")
    key_mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    ref_out, ref_w = ref(x, attention_mask=key_mask, use_causal_mask=True)
    out, w = half(x, attention_mask=key_mask, use_causal_mask=True)
    out = np.asarray(keras.ops.cast(out, "float32"))
    w = np.asarray(w)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(w))
    assert np.all(w[0, :, :, 4:] == 0.0)
    np.testing.assert_allclose(w, np.asarray(ref_w), atol=1e-2)
    np.testing.assert_allclose(out, np.asarray(ref_out), atol=2e-3 * np.abs(ref_out).max())


@pytest.mark.parametrize("return_weights", [True, False])
def test_float16_transformer_block_with_large_inputs(return_weights):
    x = _x(seed=2, scale=300.0)
    ref = TransformerBlock(2, 16)
    ref_out, _ = ref(x)
    half = _copy(
        TransformerBlock,
        ref,
        x,
        num_heads=2,
        ff_dim=16,
        dtype="mixed_float16",
        return_attention_scores=return_weights,
    )
    got = half(x)
    out = np.asarray(keras.ops.cast(got[0] if return_weights else got, "float32"))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, np.asarray(ref_out), atol=5e-2)  # post-norm: O(1) outputs


# ------------------------------------------------ attention_weights_dtype
def test_compute_dtype_weights_follow_the_policy():
    x = _x(seed=3)
    ref = SelfAttention(2, 4)
    _, ref_w = ref(x)
    for policy, dtype in (("mixed_bfloat16", "bfloat16"), ("mixed_float16", "float16")):
        layer = _copy(
            SelfAttention,
            ref,
            x,
            num_heads=2,
            key_dim=4,
            dtype=policy,
            attention_weights_dtype="compute",
        )
        out, w = layer(x)
        assert keras.backend.standardize_dtype(w.dtype) == dtype
        assert keras.backend.standardize_dtype(out.dtype) == dtype
        w = np.asarray(keras.ops.cast(w, "float32"))
        np.testing.assert_allclose(w, np.asarray(ref_w), atol=2e-2)
        # Symbolic outputs declare the same dtype.
        sym = layer(keras.Input((6, 8)))
        assert keras.backend.standardize_dtype(sym[1].dtype) == dtype
    # Under float32 "compute" is float32.
    layer = SelfAttention(2, 4, attention_weights_dtype="compute")
    assert keras.backend.standardize_dtype(layer(x)[1].dtype) == "float32"


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_compute_dtype_weights_pass_the_harness(policy, tmp_path):
    harness = LayerHarness(
        SelfAttention,
        {"num_heads": 2, "key_dim": 4, "attention_weights_dtype": "compute"},
        input_shape=(2, 5, 8),
        aux_dtypes=(None,),  # the compute dtype
    )
    harness.check_config_round_trip()
    harness.check_saved_model_round_trip(directory=str(tmp_path))
    harness.check_mixed_precision(policy, rtol=1e-1)


def test_transformer_block_forwards_the_weights_dtype():
    block = TransformerBlock(2, 16, attention_weights_dtype="compute", dtype="mixed_bfloat16")
    _, w = block(_x(seed=4))
    assert keras.backend.standardize_dtype(w.dtype) == "bfloat16"
    assert block.attention.attention_weights_dtype == "compute"
    config = block.get_config()
    assert config["attention_weights_dtype"] == "compute"
    assert TransformerBlock.from_config(config).attention_weights_dtype == "compute"
    harness = LayerHarness(
        TransformerBlock,
        {"num_heads": 2, "ff_dim": 16, "attention_weights_dtype": "compute"},
        input_shape=(2, 5, 8),
        aux_dtypes=(None,),
        atol=1e-5,
    )
    harness.check_mixed_precision("mixed_bfloat16", rtol=1e-1)


@pytest.mark.parametrize(
    "cls, kwargs", [(SelfAttention, {"key_dim": 4}), (TransformerBlock, {"ff_dim": 8})]
)
@pytest.mark.parametrize("bad", ["bfloat16", "float64", None, 32])
def test_bad_weights_dtype_is_rejected(cls, kwargs, bad):
    with pytest.raises(
        ValueError, match=rf"`attention_weights_dtype`.*Received: attention_weights_dtype={bad!r}"
    ):
        cls(2, attention_weights_dtype=bad, **kwargs)
