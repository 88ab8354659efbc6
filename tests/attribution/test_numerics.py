"""Never silently wrong, never unbounded: NaN/inf outputs and gradients raise
clear errors from every engine, Gauss-Legendre and automatic chunks keep memory
bounded, and token ids are checked against the token embedding."""
import math
import tracemalloc

import keras
import numpy as np
import pytest
import tensorflow as tf
from attr_models import smooth_mlp, text_model

from kerastrace.attribution import (
    AttentionXGradient,
    FeatureAblation,
    GradientShap,
    GradientWeightedRollout,
    InputXGradient,
    IntegratedGradients,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    NoiseTunnel,
    Occlusion,
    Saliency,
    ShapleyValueSampling,
    _core,
)
from kerastrace.attribution.integrated_gradients import (
    MAX_N_STEPS,
    _legendre,
    approximation_parameters,
    gauss_legendre,
)


def log_model():
    """f(x) = log(sum(x)): NaN where sum(x) < 0 while its gradient 1/sum(x) is finite."""
    x = keras.Input((3,))
    y = keras.layers.Lambda(lambda t: keras.ops.log(keras.ops.sum(t, axis=1, keepdims=True)))(x)
    return keras.Model(x, y)


def norm_model():
    """f(x) = sqrt(sum(x^2)): finite everywhere, gradient NaN at x = 0 (a kink)."""
    x = keras.Input((3,))
    y = keras.layers.Lambda(
        lambda t: keras.ops.sqrt(keras.ops.sum(t * t, axis=1, keepdims=True))
    )(x)
    return keras.Model(x, y)


# -------------------------------------------------------- NaN in the engines
# Example 1 goes from the baseline (1, 1, 1) (sum 3) to (1, -5, 1) (sum -3):
# log(3 - 6 alpha) is -inf at alpha = 0.5 and NaN after, so with riemann_left and
# 10 steps (alphas 0, 0.1, ..., 0.9) the first bad point is step 5, alpha 0.5.
X_LOG = np.array([[1.0, 2.0, 3.0], [1.0, -5.0, 1.0]], "float32")


@pytest.mark.parametrize("chunk", [None, 3, 1000])
def test_ig_nan_output_names_example_and_step(chunk):
    ig = IntegratedGradients(log_model())
    with pytest.raises(ValueError) as err:
        ig.attribute(X_LOG, baselines=1.0, n_steps=10, method="riemann_left",
                     internal_batch_size=chunk)
    msg = str(err.value)
    assert "NaN or inf at example 1, path step 5 of 10 (alpha=0.5)" in msg
    assert "mixed_float16" in msg and "log, sqrt" in msg  # says what to check


def test_ig_nan_is_never_a_finite_result_and_no_retrace():
    """Before: IG of log(sum x) over a path where sum x < 0 returned finite numbers."""
    ig = IntegratedGradients(log_model())
    for chunk in (None, 4):
        with pytest.raises(ValueError, match="example 1"):
            ig.attribute(X_LOG, n_steps=8, internal_batch_size=chunk)
    good = ig.attribute(X_LOG[:1], n_steps=50, internal_batch_size=7)
    # log(sum x) on the straight path from 0: the attributions add up to the
    # integral of d/dalpha log(alpha s) = 1/alpha, which diverges; the rule's points
    # are all finite, so the result is finite and every input gets x_i / s times it.
    assert np.all(np.isfinite(good))
    np.testing.assert_allclose(good[0] / good[0].sum(), X_LOG[0] / X_LOG[0].sum(), rtol=1e-5)
    assert ig.engine.trace_count == 1


@pytest.mark.parametrize("chunk", [None, 1])
@pytest.mark.parametrize("cls", [Saliency, InputXGradient])
def test_gradient_nan_at_a_kink(cls, chunk):
    x = np.array([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0], [3.0, 0.0, 4.0]], "float32")
    method = cls(norm_model())
    with pytest.raises(ValueError) as err:
        method.attribute(x, internal_batch_size=chunk)
    msg = str(err.value)
    assert "gradient" in msg and "NaN or inf at example 1" in msg
    assert "sqrt or log at 0" in msg and "FeatureAblation" in msg
    # Away from the kink the gradient is x / |x| (hand-derived).
    np.testing.assert_allclose(
        Saliency(norm_model()).attribute(x[[0, 2]], abs=False),
        np.array([[1, 2, 2], [3, 0, 4]]) / np.array([[3.0], [5.0]]), rtol=1e-6,
    )
    assert method.engine.trace_count == 1


def _first_bad_sample(x, sd, seed, n):
    """Independent oracle: the noise is `stateless_normal([n, B, D], seed=(seed, 0))`."""
    noise = sd * tf.random.stateless_normal([n, *x.shape], seed=(seed, 0)).numpy()
    sums = (x[None] + noise).sum(-1)[:, 0]
    return int(np.argmax(sums <= 0))


@pytest.mark.parametrize("per,chunk", [(None, None), (3, None), (None, 2), (4, 3)])
def test_noise_tunnel_names_the_sample(per, chunk):
    x = np.array([[0.6, 0.2, 0.1]], "float32")
    s = _first_bad_sample(x, 0.5, 3, 20)
    assert s == 11  # in the 4th block of 3, the 3rd of 4: the sample offset counts
    nt = NoiseTunnel(Saliency(log_model()))
    with pytest.raises(ValueError, match=f"at example 0, noise sample {s}, so"):
        nt.attribute(x, nt_samples=20, stdevs=0.5, seed=3, nt_samples_batch_size=per,
                     internal_batch_size=chunk)
    assert nt.attribution_method.engine.trace_count == 1


def test_noise_tunnel_over_ig_names_sample_and_step():
    x = np.array([[0.6, 0.2, 0.1]], "float32")
    nt = NoiseTunnel(IntegratedGradients(log_model()))
    with pytest.raises(ValueError, match=r"example 0, path step \d+ of 5 .*noise sample \d+"):
        nt.attribute(x, nt_samples=20, stdevs=0.5, seed=7, n_steps=5, internal_batch_size=4)


def test_gradient_shap_names_example_and_sample():
    x = np.array([[1.0, 1.0, 1.0], [1.0, -5.0, 1.0]], "float32")
    refs = np.full((2, 3), 1.0, "float32")
    with pytest.raises(ValueError, match=r"example 1, sample 0, path point alpha="):
        GradientShap(log_model()).attribute(x, baselines=refs, n_samples=3, seed=0)


def test_convergence_delta_checks_the_baseline_score():
    """Gauss-Legendre never evaluates alpha = 0, so only the delta sees f(0) = log 0."""
    ig = IntegratedGradients(log_model())
    x = np.array([[1.0, 2.0, 3.0]], "float32")
    assert np.all(np.isfinite(ig.attribute(x, n_steps=8)))
    with pytest.raises(ValueError, match=r"NaN or inf \(-inf\) at example 0 \(baselines\)"):
        ig.attribute(x, n_steps=8, return_convergence_delta=True)


def test_mixed_float16_overflow_is_an_error():
    """Logits beyond float16's 65504 are inf: IG and Saliency refuse them."""
    x_in = keras.Input((2,))
    dense = keras.layers.Dense(2, use_bias=False, dtype="mixed_float16")
    model = keras.Model(x_in, dense(x_in))
    dense.set_weights([np.array([[400.0, 1.0], [400.0, 1.0]])])
    x = np.array([[1.0, 1.0], [100.0, 100.0]], "float32")  # logit 0: 800, then 80000
    np.testing.assert_allclose(Saliency(model).attribute(x[:1], target=0), [[400.0, 400.0]])
    for method in (Saliency(model), IntegratedGradients(model)):
        with pytest.raises(ValueError, match="NaN or inf .*example 1.*mixed_float16"):
            method.attribute(x, target=0)


def test_layer_ig_nan_output():
    tokens = keras.Input((4,), dtype="int32")
    h = keras.layers.Embedding(10, 3, name="emb")(tokens)
    s = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(h))
    out = keras.layers.Lambda(lambda t: keras.ops.log(-keras.ops.abs(t) - 1.0))(s)
    lig = LayerIntegratedGradients(keras.Model(tokens, out), "emb")
    with pytest.raises(ValueError, match="NaN or inf at example 0, path step 0 of 4"):
        lig.attribute(np.array([[1, 2, 3, 4]]), n_steps=4)


def test_occlusion_names_example_and_window():
    # f = log(sum x), x = (-1.5, 2, 0.2): removing position 1 makes the sum negative.
    x = np.array([[1.0, 1.0, 1.0], [-1.5, 2.0, 0.2]], "float32")
    with pytest.raises(ValueError, match=r"example 1, occlusion window at \(1,\)"):
        Occlusion(log_model()).attribute(x, sliding_window_shapes=(1,))


def test_perturbation_names_example_and_coalition():
    x = np.array([[-1.5, 2.0, 0.2]], "float32")
    with pytest.raises(ValueError, match=r"example 0, coalition 2 of 4 \(features removed: \[1\]\)"):
        FeatureAblation(log_model()).attribute(x)
    with pytest.raises(ValueError, match=r"NaN or inf .*example 0, coalition \d+ of"):
        ShapleyValueSampling(log_model()).attribute(x, n_samples=2, seed=0)


def _attention_model(head):
    from kerastrace.layers import TransformerBlock

    keras.utils.set_random_seed(0)
    x_in = keras.Input((4, 8))
    h, _ = TransformerBlock(num_heads=2, ff_dim=8, name="block")(x_in)
    y = keras.layers.Dense(1)(keras.layers.Flatten()(h))
    return keras.Model(x_in, keras.layers.Lambda(head)(y))


def test_attention_x_gradient_checks_score_and_gradient():
    x = np.ones((2, 4, 8), "float32")
    nan_out = AttentionXGradient(_attention_model(lambda t: keras.ops.log(-keras.ops.abs(t) - 1)))
    with pytest.raises(ValueError, match="output .*NaN or inf at example 0"):
        nan_out.attribute(x)
    # sqrt(0 * y^2): the output is 0, its gradient NaN (0.5 / sqrt(0) * 0).
    kink = AttentionXGradient(_attention_model(lambda t: keras.ops.sqrt(0.0 * t * t)))
    with pytest.raises(ValueError, match="attention weights of 'block/attention' is NaN or inf "
                                         "at example 0"):
        kink.attribute(x, internal_batch_size=1)
    fine = AttentionXGradient(_attention_model(lambda t: t))
    assert np.all(np.isfinite(fine.attribute(x)["block/attention"]))


def test_backstop_overflowing_products():
    """Finite outputs and gradients whose product overflows float32 are refused too."""
    x_in = keras.Input((1,))
    model = keras.Model(x_in, keras.layers.Dense(1, use_bias=False)(x_in))
    model.set_weights([np.array([[1.0]])])
    x = np.array([[3e38]], "float32")  # every path point is finite, x - baseline is not
    with pytest.raises(ValueError, match="attributions of the input overflow float32 at example 0"):
        IntegratedGradients(model).attribute(x, baselines=-3e38, n_steps=4)


# ------------------------------------------------------- bounded memory
def test_gauss_legendre_matches_numpy():
    for n in range(1, 201):
        x, w = gauss_legendre(n)
        ref_x, ref_w = np.polynomial.legendre.leggauss(n)
        np.testing.assert_allclose(x, ref_x, rtol=0, atol=1e-12)
        np.testing.assert_allclose(w, ref_w, rtol=0, atol=1e-12)


def test_gauss_legendre_exact_to_degree_2n_minus_1_for_large_n():
    n = 5000
    gauss_legendre.cache_clear()
    tracemalloc.start()
    x, w = gauss_legendre(n)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2 * 2**20  # O(n): numpy's leggauss needs an n x n matrix (200 MB here)
    p_prev, _ = _legendre(n - 1, x)
    p_n, _ = _legendre(n, x)
    # Degree 2n - 1: (1 + x) P_{n-1}(x)^2 integrates to 2 / (2n - 1) (orthogonality).
    np.testing.assert_allclose(np.sum(w * (1 + x) * p_prev**2), 2 / (2 * n - 1), rtol=1e-10)
    # x^(2n-1) on [0, 1] (the IG path parameter): 1 / (2n).
    a, wa = (x + 1) / 2, w / 2
    np.testing.assert_allclose(np.sum(wa * a ** (2 * n - 1)), 1 / (2 * n), rtol=1e-10)
    np.testing.assert_allclose(np.sum(w), 2.0, rtol=1e-12)
    # ... and no further: P_n^2 (degree 2n) vanishes at every node, its integral does not.
    assert abs(np.sum(w * p_n**2)) < 1e-20 < 2 / (2 * n + 1)


def _counting(model):
    calls, rows = tf.Variable(0), tf.Variable(0)

    def forward(x):
        calls.assign_add(1)
        rows.assign_add(tf.shape(x)[0])
        return model(x, training=False)

    return forward, calls, rows


def test_default_internal_batch_size_bounds_the_chunks(rng):
    """n_steps=20000 without internal_batch_size: chunks of AUTO_BATCH_ROWS, not one call."""
    model = smooth_mlp()
    forward, calls, rows = _counting(model)
    x = rng.normal(size=(1, 5)).astype("float32")
    ig = IntegratedGradients(forward)
    auto = ig.attribute(x, target=1, n_steps=20000, method="riemann_middle")
    expected_calls = math.ceil(20000 / _core.AUTO_BATCH_ROWS)
    assert expected_calls > 1
    assert ig.engine.last_chunks == expected_calls
    assert int(calls.numpy()) == expected_calls
    assert int(rows.numpy()) == expected_calls * _core.AUTO_BATCH_ROWS
    ref = IntegratedGradients(model).attribute(
        x, target=1, n_steps=20000, method="riemann_middle", internal_batch_size=20000
    )
    np.testing.assert_allclose(auto, ref, rtol=1e-4, atol=1e-6)
    # Gauss-Legendre with 20000 points (numpy's leggauss would need a 3 GB matrix).
    gl = ig.attribute(x, target=1, n_steps=20000)
    np.testing.assert_allclose(gl, ref, rtol=1e-3, atol=1e-5)
    assert ig.engine.trace_count == 1


def test_default_internal_batch_size_follows_the_memory_budget(rng, monkeypatch):
    model = smooth_mlp()  # a row: 5 input + 3 output elements = 32 bytes
    monkeypatch.setattr(_core, "AUTO_BATCH_BYTES", 32 * 10)
    forward, calls, _ = _counting(model)
    ig = IntegratedGradients(forward)
    ig.attribute(rng.normal(size=(3, 5)).astype("float32"), target=0, n_steps=20)
    assert int(calls.numpy()) == math.ceil(60 / 10) == ig.engine.last_chunks
    assert _core.auto_batch_size(10**12) == 1


@pytest.mark.parametrize("n_steps", [MAX_N_STEPS + 1, 10**9])
def test_absurd_n_steps_refused(n_steps):
    with pytest.raises(ValueError, match=f"`n_steps`, expected a positive integer <= "
                                         f"{MAX_N_STEPS}.*n_steps={n_steps}.*tens to a few hundred"):
        approximation_parameters("gausslegendre", n_steps)
    with pytest.raises(ValueError, match=f"n_steps={n_steps}"):
        IntegratedGradients(smooth_mlp()).attribute(np.ones((1, 5), "float32"), target=0,
                                                    n_steps=n_steps)


def test_absurd_rows_refused_before_any_work():
    x = np.ones((60000, 1), "float32")
    x_in = keras.Input((1,))
    model = keras.Model(x_in, keras.layers.Dense(1)(x_in))
    with pytest.raises(ValueError, match=r"3000000000 model evaluations .* Split the batch"):
        IntegratedGradients(model).attribute(x, n_steps=50000, method="riemann_left")


# ------------------------------------------------------------- token ids
TOKENS = np.array([[5, 3, 9, 12, 0, 0], [7, 7, 1, 2, 4, 0]], "int32")


def _bad(tokens, b, t, value):
    out = tokens.copy()
    out[b, t] = value
    return out


@pytest.fixture(scope="module")
def token_methods():
    """One text model and one object per method (compiled once for the module)."""
    model = text_model(vocab=20)
    emb = model.get_layer("emb")
    lig, lgxa = LayerIntegratedGradients(model, emb), LayerGradientXActivation(model, emb)
    nt, occ = NoiseTunnel(LayerGradientXActivation(model, emb)), Occlusion(model)
    abl, axg, gwr = FeatureAblation(model), AttentionXGradient(model), GradientWeightedRollout(model)
    return {
        "lig": lambda x, **k: lig.attribute(x, target=0, n_steps=4, **k),
        "lgxa": lambda x, **k: lgxa.attribute(x, target=0),
        "nt": lambda x, **k: nt.attribute(x, target=0, nt_samples=2, stdevs=0.1, seed=0),
        "occlusion": lambda x, **k: occ.attribute(x, sliding_window_shapes=(1,), target=0, **k),
        "ablation": lambda x, **k: abl.attribute(x, target=0, **k),
        "axg": lambda x, **k: axg.attribute(x, target=0),
        "rollout": lambda x, **k: gwr.attribute(x, target=0),
    }


@pytest.mark.parametrize("name", ["lig", "lgxa", "nt", "occlusion", "ablation", "axg", "rollout"])
@pytest.mark.parametrize("value", [-1, 20, 1000])
def test_token_ids_out_of_range(token_methods, name, value):
    run = token_methods[name]
    with pytest.raises(ValueError) as err:
        run(_bad(TOKENS, 1, 3, value))
    msg = str(err.value)
    assert "argument `inputs`" in msg and f"the id {value} at example 1, token 3" in msg
    assert "'emb' (input_dim=20, valid ids 0..19)" in msg
    run(TOKENS)  # valid ids still work


@pytest.mark.parametrize("name", ["lig", "occlusion", "ablation"])
def test_baseline_ids_checked(token_methods, name):
    run = token_methods[name]
    with pytest.raises(ValueError, match=r"argument `baselines`.*non-integral value 0\.7 at "
                                         r"example 0, token 0, which would be silently truncated to 0"):
        run(TOKENS, baselines=0.7)
    with pytest.raises(ValueError, match=r"argument `baselines`: the id 20 at example 0, token 0"):
        run(TOKENS, baselines=20)
    with pytest.raises(ValueError, match=r"argument `baselines`.*NaN or inf \(nan at example 0"):
        run(TOKENS, baselines=np.nan)
    run(TOKENS, baselines=2.0)  # an integral float is an id


def test_float_baseline_truncation_used_to_be_silent():
    """0.7 used to become id 0; an explicit 0 still gives the same attributions as before."""
    model = text_model(vocab=20)
    lig = LayerIntegratedGradients(model, "emb")
    a0 = lig.attribute(TOKENS, baselines=0, target=0, n_steps=4)
    a1 = lig.attribute(TOKENS, baselines=np.zeros((6,), "float64"), target=0, n_steps=4)
    np.testing.assert_array_equal(a0, a1)


def test_keras_hub_dict_token_ids_checked():
    keras_hub = pytest.importorskip("keras_hub")
    bb = keras_hub.models.BertBackbone(vocabulary_size=50, num_layers=1, num_heads=2,
                                       hidden_dim=8, intermediate_dim=16, max_sequence_length=8)
    clf = keras_hub.models.BertTextClassifier(bb, num_classes=2, preprocessor=None)
    x = {"token_ids": np.array([[2, 5, 50, 3]], "int32"),
         "padding_mask": np.ones((1, 4), "int32"), "segment_ids": np.zeros((1, 4), "int32")}
    emb = bb.get_layer("token_embedding")
    with pytest.raises(ValueError, match=r"the id 50 at example 0, token 2 of input 'token_ids'"):
        LayerIntegratedGradients(clf, emb).attribute(x, target=0, n_steps=2)
    with pytest.raises(ValueError, match=r"argument `inputs`: the id 50"):
        Occlusion(clf).attribute(x, sliding_window_shapes=(1,), target=0)
    x["token_ids"][0, 2] = 7
    with pytest.raises(ValueError, match=r"argument `baselines`.*non-integral value 0\.5"):
        LayerIntegratedGradients(clf, emb).attribute(x, baselines={"token_ids": 0.5}, target=0)
    # padding_mask / segment_ids are not token ids: never checked against the vocabulary.
    assert _core.token_id_positions(tuple(x.values()), _core.normalize_inputs(x)[1]) == [0]


def test_eager_body_raises_the_same_error():
    ig = IntegratedGradients(log_model())
    ig.run_eagerly = True
    with pytest.raises(ValueError, match=r"example 1, path step 5 of 10 \(alpha=0\.5\)"):
        ig.attribute(X_LOG, baselines=1.0, n_steps=10, method="riemann_left",
                     internal_batch_size=3)


def test_nan_layer_activation_is_named():
    model = text_model(vocab=20)
    table = model.get_layer("emb").get_weights()[0]
    table[9] = np.nan  # token 9 (example 0, position 2) reads a NaN embedding row
    model.get_layer("emb").set_weights([table])
    for method in (LayerIntegratedGradients(model, "emb"), LayerGradientXActivation(model, "emb")):
        with pytest.raises(ValueError, match=r"The output of layer 'emb' is NaN or inf for the "
                                             r"inputs at example 0"):
            method.attribute(TOKENS, target=0)
