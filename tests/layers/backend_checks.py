"""Layer checks for a non-TensorFlow Keras backend, run in a subprocess.

`tests/layers/test_backends.py` runs this file with `KERAS_BACKEND=jax` (and
`torch` where installed), since a process picks its Keras backend once, at
the first `import keras`. Every check uses `keras` and numpy only and
compares with an independent oracle (Keras' own `MultiHeadAttention`, the
explicit path, masks' definitions). Each passing check prints `ok <name>`;
the first failure raises.

Usage:
    KERAS_BACKEND=jax python tests/layers/backend_checks.py TMP_DIR [CHECK ...]
"""

from __future__ import annotations

import os
import sys


def _x(b=2, t=6, d=8, seed=0, scale=1.0):
    import numpy as np

    return (scale * np.random.default_rng(seed).normal(size=(b, t, d))).astype("float32")


def _np(t):
    import keras
    import numpy as np

    return np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(t, "float32")))


def check_harness(tmp):
    """The shared layer harness: config, `.keras` round trip, training, mixed precision, jit."""
    import keras

    from kerastrace.layers import SelfAttention, TransformerBlock
    from kerastrace.testing import LayerHarness

    xla = keras.backend.backend() == "jax"  # under torch jit_compile means torch.compile
    LayerHarness(
        SelfAttention,
        {"num_heads": 3, "key_dim": 4, "value_dim": 5, "output_dim": 7, "dropout": 0.1},
        input_shape=(4, 6, 8),
    ).run_all([(None, 6, 7), (None, 3, 6, 6)], directory=tmp, xla=xla)
    # The fused path (no weights); its training step is in check_training_step.
    no_weights = LayerHarness(
        SelfAttention,
        {"num_heads": 2, "key_dim": 4, "return_attention_scores": False},
        input_shape=(4, 6, 8),
        aux_dtypes=(),
    )
    no_weights.check_symbolic_and_eager([(None, 6, 8)])
    no_weights.check_saved_model_round_trip(tmp)
    no_weights.check_mixed_precision("mixed_bfloat16", rtol=1e-1)
    if xla:
        no_weights.check_xla()
    block = LayerHarness(
        TransformerBlock,
        {"num_heads": 2, "ff_dim": 16, "norm_first": True, "dropout": 0.1},
        input_shape=(4, 6, 8),
        atol=1e-5,
    )
    block.check_config_round_trip()
    block.check_saved_model_round_trip(tmp)
    block.check_symbolic_and_eager([(None, 6, 8), (None, 2, 6, 6)])
    block.check_mixed_precision("mixed_bfloat16", rtol=1e-1)


def check_masks(tmp):
    """Keras mask, attention_mask of each rank and causal: zero weights where masked."""
    import keras
    import numpy as np

    from kerastrace.layers import SelfAttention, TokenAndPositionEmbedding, TransformerBlock

    layer = SelfAttention(2, 4)
    x = _x(seed=1)
    key_mask = np.array([[1, 1, 1, 1, 0, 0], [1, 0, 1, 1, 1, 1]], bool)
    _, w = layer(x, attention_mask=key_mask)
    w = _np(w)
    assert np.all(w[0, :, :, 4:] == 0.0) and np.all(w[1, :, :, 1] == 0.0)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
    am3 = np.ones((2, 6, 6), bool)
    am3[0, 2] = False
    _, w = layer(x, attention_mask=am3)
    w = _np(w)
    assert np.all(w[0, :, 2] == 0.0)
    np.testing.assert_allclose(np.delete(w[0], 2, axis=1).sum(-1), 1.0, atol=1e-6)
    am4 = np.ones((2, 2, 6, 6), bool)
    am4[:, 1, :, 0] = False
    _, w = layer(x, attention_mask=am4)
    w = _np(w)
    assert np.all(w[:, 1, :, 0] == 0.0) and np.all(w[:, 0, :, 0] > 0.0)
    _, w = layer(x, use_causal_mask=True)
    w = _np(w)
    assert np.all(w[..., np.triu(np.ones((6, 6), bool), k=1)] == 0.0)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
    # Keras padding mask through a functional model, two blocks deep.
    ids = keras.Input((6,), dtype="int32")
    h = TokenAndPositionEmbedding(20, 6, 8)(ids)
    h, w1 = TransformerBlock(2, 16, name="b1")(h)
    h, w2 = TransformerBlock(2, 16, name="b2")(h)
    model = keras.Model(ids, [h, w1, w2])
    _, w1, w2 = model(np.array([[3, 4, 5, 0, 0, 0], [1, 2, 3, 4, 5, 6]]))
    for w in (_np(w1), _np(w2)):
        assert np.all(w[0, :, :3, 3:] == 0.0) and np.all(w[0, :, 3:, :] == 0.0)
        np.testing.assert_allclose(w[0, :, :3].sum(-1), 1.0, atol=1e-6)
        np.testing.assert_allclose(w[1].sum(-1), 1.0, atol=1e-6)


def check_matches_multi_head_attention(tmp):
    """`SelfAttention.from_keras(mha)` gives Keras' outputs and scores on this backend."""
    import keras
    import numpy as np

    from kerastrace.layers import SelfAttention

    # value_dim == key_dim: Keras' own fused path on JAX needs equal head sizes.
    mha = keras.layers.MultiHeadAttention(3, 4, output_shape=7, bias_initializer="random_normal")
    x = _x(2, 6, 8, seed=2)
    mha(x, x)
    ours = SelfAttention.from_keras(mha)
    no_weights = SelfAttention.from_keras(mha, return_attention_scores=False)
    am = np.random.default_rng(3).random((2, 6, 6)) > 0.4
    am[:, np.arange(6), np.arange(6)] = True
    for kwargs in ({}, {"use_causal_mask": True}, {"attention_mask": am}):
        ref_out, ref_w = mha(x, x, return_attention_scores=True, **kwargs)
        out, w = ours(x, **kwargs)
        np.testing.assert_allclose(_np(out), _np(ref_out), atol=1e-5)
        np.testing.assert_allclose(_np(w), _np(ref_w), atol=1e-6)
        ref_plain = mha(x, x, **kwargs)  # Keras' own dot_product_attention path
        np.testing.assert_allclose(_np(no_weights(x, **kwargs)), _np(ref_plain), atol=1e-5)


def check_fused_equals_explicit(tmp):
    """No weights -> `keras.ops.dot_product_attention`, same outputs as the explicit path."""
    import keras
    import numpy as np

    from kerastrace.layers import SelfAttention

    calls = []
    original = keras.ops.dot_product_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    keras.ops.dot_product_attention = spy
    try:
        explicit = SelfAttention(2, 3, bias_initializer="random_normal")
        x = _x(seed=4)
        explicit(x)
        fused = SelfAttention(2, 3, return_attention_scores=False)
        fused(x)
        fused.set_weights(explicit.get_weights())
        rng = np.random.default_rng(5)
        key2 = np.array([[1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], bool)
        am3 = rng.random((2, 6, 6)) > 0.5
        am4 = rng.random((2, 2, 6, 6)) > 0.5
        cases = [
            {},
            {"attention_mask": key2},
            {"attention_mask": am3},
            {"attention_mask": am4},
            {"use_causal_mask": True},
            {"attention_mask": key2, "use_causal_mask": True},
        ]
        for kwargs in cases:
            calls.clear()
            ref, _ = explicit(x, **kwargs)
            assert not calls, "the weights layer took the fused path"
            got = fused(x, **kwargs)
            assert calls, "the no-weights layer did not take the fused path"
            np.testing.assert_allclose(_np(got), _np(ref), atol=2e-6, err_msg=str(list(kwargs)))
    finally:
        keras.ops.dot_product_attention = original


def check_float16_large_inputs(tmp):
    """mixed_float16 with inputs of magnitude ~300: finite and equal to float32 (#15)."""
    import numpy as np

    from kerastrace.layers import SelfAttention

    x = _x(seed=6, scale=300.0)
    ref = SelfAttention(2, 4)
    ref_out, ref_w = ref(x)
    ref_out = _np(ref_out)
    for return_weights in (True, False):
        half = SelfAttention(2, 4, dtype="mixed_float16", return_attention_scores=return_weights)
        half(x)
        half.set_weights(ref.get_weights())
        got = half(x)
        out = _np(got[0] if return_weights else got)
        assert np.all(np.isfinite(out))
        np.testing.assert_allclose(out, ref_out, atol=2e-3 * np.abs(ref_out).max())
        if return_weights:
            np.testing.assert_allclose(_np(got[1]), _np(ref_w), atol=1e-2)


def check_keras_round_trip(tmp):
    """A masked token model with both layers survives `.keras` save/load bit for bit."""
    import keras
    import numpy as np

    from kerastrace.layers import SelfAttention, TokenAndPositionEmbedding, TransformerBlock

    ids = keras.Input((6,), dtype="int32")
    h = TokenAndPositionEmbedding(20, 6, 8)(ids)
    h, w = TransformerBlock(2, 16, norm_first=True)(h)
    h2 = SelfAttention(2, 4, return_attention_scores=False)(h, use_causal_mask=True)
    model = keras.Model(ids, [h2, w])
    x = np.array([[3, 4, 5, 0, 0, 0], [1, 2, 3, 4, 5, 6]])
    ref = [_np(t) for t in model(x)]
    path = os.path.join(tmp, f"round_trip_{keras.backend.backend()}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects
    got = [_np(t) for t in loaded(x)]
    for a, b in zip(ref, got):
        np.testing.assert_array_equal(a, b)


def check_training_step(tmp):
    """One jit-compiled `fit` step of a no-weights model changes the weights."""
    import keras
    import numpy as np

    from kerastrace.layers import SelfAttention, TransformerBlock

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6, 8)),
            TransformerBlock(2, 16, return_attention_scores=False, attention_dropout=0.1),
            SelfAttention(2, 4, return_attention_scores=False),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1),
        ]
    )
    jit = keras.backend.backend() == "jax"
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", jit_compile=jit)
    x = _x(8, 6, 8, seed=7)
    y = x.mean(axis=(1, 2))[:, None]
    before = [np.array(w) for w in model.get_weights()]
    loss = model.train_on_batch(x, y)
    assert np.all(np.isfinite(loss)), loss
    after = model.get_weights()
    assert not any(np.array_equal(a, b) for a, b in zip(before, after))


CHECKS = {
    name[len("check_") :]: fn for name, fn in dict(globals()).items() if name.startswith("check_")
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise SystemExit(__doc__)
    tmp, names = argv[0], argv[1:] or list(CHECKS)
    import keras

    print(f"backend {keras.backend.backend()}, keras {keras.__version__}")
    for name in names:
        CHECKS[name](tmp)
        print(f"ok {name}", flush=True)


if __name__ == "__main__":
    main()
