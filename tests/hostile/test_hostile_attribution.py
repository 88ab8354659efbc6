"""Hostile inputs to the attribution API and to `explain`: every case either gets a
clear error that names the argument and echoes the value, or the correct result.

Cases are `(callable, exception, fragments)`: the callable must raise `exception`
and the message must contain every fragment (the argument's name and the echoed
value), so a raw TensorFlow trace or a silent wrong answer fails the test.
"""
import functools
import json
import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kerastrace import explain  # noqa: E402
from kerastrace.attribution import (  # noqa: E402
    AttentionXGradient,
    Contrast,
    FeatureAblation,
    GradientShap,
    InputXGradient,
    IntegratedGradients,
    KernelShap,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    Lime,
    NoiseTunnel,
    Occlusion,
    Saliency,
    ShapleyValues,
    ShapleyValueSampling,
)

X = np.array([[0.5, -1.0, 2.0, 0.0, 1.5], [1.0, 1.0, 1.0, 1.0, 1.0]], "float32")
TOKENS = np.array([[5, 3, 9, 12, 0, 0], [7, 7, 1, 2, 4, 0]], "int32")
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "film", "not", "bad", "!", "$"]


# ----------------------------------------------------------------- models
@functools.cache
def mlp():
    """Dense 5 -> 3 with known weights: logits = x @ W."""
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, use_bias=False)])
    model.set_weights([np.arange(15, dtype="float32").reshape(5, 3) / 10.0])
    return model


@functools.cache
def lam(kind):
    """One-output models with a hostile point: log, sqrt-norm, sqrt (infinite slope at 0)."""
    fns = {
        "log": lambda t: keras.ops.log(keras.ops.sum(t, axis=1, keepdims=True)),
        "norm": lambda t: keras.ops.sqrt(keras.ops.sum(t * t, axis=1, keepdims=True)),
        "sqrt": lambda t: keras.ops.sqrt(keras.ops.sum(t, axis=1, keepdims=True)),
    }
    x = keras.Input((5,))
    return keras.Model(x, keras.layers.Lambda(fns[kind])(x))


@functools.cache
def fp16_overflow():
    """A mixed_float16 model whose logits overflow float16 (> 65504) for large inputs.

    logit = 100 * sum(x): 60000 for `200 * X[0]`, 100000 (inf) for `200 * X[1]`.
    """
    x = keras.Input((5,))
    dense = keras.layers.Dense(2, use_bias=False, dtype="mixed_float16")
    model = keras.Model(x, dense(x))
    dense.set_weights([np.full((5, 2), 100.0)])
    return model


@functools.cache
def wide():
    return keras.Sequential([keras.Input((40,)), keras.layers.Dense(1)])


@functools.cache
def text():
    from kerastrace.layers import TransformerBlock

    keras.utils.set_random_seed(0)
    tokens = keras.Input((6,), dtype="int32")
    h = keras.layers.Embedding(20, 8, mask_zero=True, name="emb")(tokens)
    h, _ = TransformerBlock(num_heads=2, ff_dim=8, name="block")(h)
    out = keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling1D()(h))
    return keras.Model(tokens, out)


@functools.cache
def dict_model():
    xi = {"a": keras.Input((3,), name="a"), "b": keras.Input((2,), name="b")}
    y = keras.layers.Dense(1)(keras.layers.Concatenate()([xi["a"], xi["b"]]))
    return keras.Model(xi, y)


DICT_X = {"a": np.ones((2, 3), "float32"), "b": np.ones((2, 2), "float32")}


@functools.cache
def classifier():
    from kerastrace.testing.reference_models import build_text_classifier
    from kerastrace.text import Tokenizer

    model = build_text_classifier(len(VOCAB), 12, num_layers=1, dim=8, ff_dim=16, seed=0)
    return model, Tokenizer(VOCAB, sequence_length=12)


def explain_text(texts, **kwargs):
    model, tok = classifier()
    kwargs.setdefault("method", "occlusion")
    return explain.explain_text(model, tok, texts, **kwargs)


def bad_ids(value, b=1, t=3):
    ids = TOKENS.copy()
    ids[b, t] = value
    return ids


def with_nan(x, value=np.nan, at=(1, 2)):
    x = x.copy()
    x[at] = value
    return x


# ------------------------------------------------------------ refused cases
E = ValueError
T = TypeError
REFUSED = {
    # --- bad arguments: named and echoed
    "n_steps=0": (lambda: IntegratedGradients(mlp()).attribute(X, target=0, n_steps=0),
                  E, ["`n_steps`", "n_steps=0"]),
    "n_steps=-5": (lambda: IntegratedGradients(mlp()).attribute(X, target=0, n_steps=-5),
                   E, ["`n_steps`", "n_steps=-5"]),
    "n_steps=2.5": (lambda: IntegratedGradients(mlp()).attribute(X, target=0, n_steps=2.5),
                    E, ["`n_steps`", "n_steps=2.5"]),
    "n_steps=True": (lambda: IntegratedGradients(mlp()).attribute(X, target=0, n_steps=True),
                     E, ["`n_steps`", "n_steps=True"]),
    "method=simpson": (lambda: IntegratedGradients(mlp()).attribute(X, target=0, method="simpson"),
                       E, ["`method`", "method='simpson'", "gausslegendre"]),
    "internal_batch_size=0": (
        lambda: IntegratedGradients(mlp()).attribute(X, target=0, internal_batch_size=0),
        E, ["`internal_batch_size`", "internal_batch_size=0"]),
    "occlusion internal_batch_size=0": (
        lambda: Occlusion(mlp()).attribute(X, sliding_window_shapes=1, target=0,
                                           internal_batch_size=0),
        E, ["`internal_batch_size`", "internal_batch_size=0"]),
    "abs='yes'": (lambda: Saliency(mlp()).attribute(X, target=0, abs="yes"),
                  E, ["`abs`", "abs='yes'"]),
    "return_convergence_delta='yes'": (
        lambda: IntegratedGradients(mlp()).attribute(X, target=0, return_convergence_delta="yes"),
        E, ["`return_convergence_delta`", "return_convergence_delta='yes'"]),
    "multiply_by_inputs='no'": (lambda: IntegratedGradients(mlp(), multiply_by_inputs="no"),
                                E, ["`multiply_by_inputs`", "multiply_by_inputs='no'"]),
    "nt_type=mean": (lambda: NoiseTunnel(Saliency(mlp())).attribute(X, target=0, nt_type="mean"),
                     E, ["`nt_type`", "nt_type='mean'"]),
    "stdevs=-1": (lambda: NoiseTunnel(Saliency(mlp())).attribute(X, target=0, stdevs=-1.0),
                  E, ["`stdevs`", "stdevs=-1.0"]),
    "stdevs=nan": (lambda: NoiseTunnel(Saliency(mlp())).attribute(X, target=0, stdevs=np.nan),
                   E, ["`stdevs`", "stdevs=nan"]),
    "seed=-3": (lambda: NoiseTunnel(Saliency(mlp())).attribute(X, target=0, seed=-3),
                E, ["`seed`", "seed=-3"]),
    "NoiseTunnel(model)": (lambda: NoiseTunnel(mlp()), T,
                           ["`attribution_method`", "attribution_method=<Sequential"]),
    "model=None": (lambda: Saliency(None), T, ["`model`", "model=None"]),
    "layer='nope'": (lambda: LayerIntegratedGradients(mlp(), "nope"),
                     E, ["`layer`", "layer='nope'"]),
    "layer_call=-1": (lambda: LayerIntegratedGradients(mlp(), mlp().layers[0], layer_call=-1),
                      E, ["`layer_call`", "layer_call=-1"]),
    "window larger than input": (
        lambda: Occlusion(mlp()).attribute(X, sliding_window_shapes=(10,), target=0),
        E, ["`sliding_window_shapes`", "sliding_window_shapes=(10,)"]),
    "stride larger than window": (
        lambda: Occlusion(mlp()).attribute(X, sliding_window_shapes=(1,), strides=(3,), target=0),
        E, ["`strides`", "strides=(3,)"]),
    "feature_mask with gaps": (
        lambda: FeatureAblation(mlp()).attribute(X, target=0,
                                                 feature_mask=np.array([[0, 0, 2, 2, 2]])),
        E, ["`feature_mask`", "without [1]"]),
    "feature_mask float": (
        lambda: FeatureAblation(mlp()).attribute(X, target=0, feature_mask=np.zeros((1, 5))),
        E, ["`feature_mask`", "dtype float64"]),
    "perturbations_per_eval=0": (
        lambda: FeatureAblation(mlp()).attribute(X, target=0, perturbations_per_eval=0),
        E, ["`perturbations_per_eval`", "perturbations_per_eval=0"]),
    "KernelShap n_samples=0": (lambda: KernelShap(mlp()).attribute(X, target=0, n_samples=0),
                               E, ["`n_samples`", "n_samples=0"]),
    "Lime n_samples=-1": (lambda: Lime(mlp()).attribute(X, target=0, n_samples=-1),
                          E, ["`n_samples`", "n_samples=-1"]),
    "mask_padding on arrays": (
        lambda: FeatureAblation(mlp()).attribute(X, target=0, mask_padding=True),
        E, ["`mask_padding`", "mask_padding=True"]),
    # --- targets and contrasts
    "target=1.7": (lambda: Saliency(mlp()).attribute(X, target=1.7), E, ["`target`", "target=1.7"]),
    "target=3 of 3 classes": (lambda: Saliency(mlp()).attribute(X, target=3),
                              E, ["`target`", "valid: 0..2", "target=3"]),
    "target=-1": (lambda: IntegratedGradients(mlp()).attribute(X, target=-1),
                  E, ["`target`", "target=-1"]),
    "target per example, wrong length": (
        lambda: Saliency(mlp()).attribute(X, target=[0, 1, 2]),
        E, ["`target`", "shape (2,)", "shape (3,)"]),
    "target missing for 3 outputs": (lambda: Saliency(mlp()).attribute(X),
                                     E, ["`target`", "target=None"]),
    "Contrast foil out of range": (
        lambda: InputXGradient(mlp()).attribute(X, target=Contrast(0, foil=7)),
        E, ["`foil`", "valid: 0..2", "foil=7"]),
    "Contrast foil negative": (
        lambda: Saliency(mlp()).attribute(X, target=Contrast(1, foil=-4)),
        E, ["`foil`", "foil=-4"]),
    "Contrast target out of range": (
        lambda: IntegratedGradients(mlp()).attribute(X, target=Contrast(5, foil=0)),
        E, ["`target`", "target=5"]),
    "Contrast space='prob'": (lambda: Contrast(0, space="prob"), E, ["`space`", "space='prob'"]),
    # --- NaN / inf in inputs, baselines, outputs and gradients
    "NaN input": (lambda: IntegratedGradients(mlp()).attribute(with_nan(X), target=0),
                  E, ["`inputs`", "NaN or inf", "nan at example 1, index 2"]),
    "inf input": (lambda: Saliency(mlp()).attribute(with_nan(X, np.inf), target=0),
                  E, ["`inputs`", "inf at example 1, index 2"]),
    "NaN baseline": (
        lambda: IntegratedGradients(mlp()).attribute(X, baselines=with_nan(X), target=0),
        E, ["`baselines`", "nan at example 1, index 2"]),
    "-inf baseline for ids": (
        lambda: LayerIntegratedGradients(text(), "emb").attribute(TOKENS, baselines=-np.inf,
                                                                  target=0),
        E, ["`baselines`", "-inf at example 0, token 0"]),
    "NaN GradientShap reference": (
        lambda: GradientShap(mlp()).attribute(X, baselines=with_nan(X), target=0),
        E, ["`baselines`", "NaN or inf", "nan at example 1, index 2"]),
    "NaN model output (log of negative), IG": (
        lambda: IntegratedGradients(lam("log")).attribute(-X, n_steps=4),
        E, ["output", "NaN or inf at example 0, path step 0 of 4"]),
    "NaN model output, FeatureAblation": (
        lambda: FeatureAblation(lam("log")).attribute(-X),
        E, ["NaN or inf", "at example 0, coalition 0 of 6"]),
    "NaN model output, Occlusion": (
        lambda: Occlusion(lam("log")).attribute(np.array([[1, 1, 1, 1, -3.5]], "float32"),
                                                sliding_window_shapes=(4,)),
        E, ["NaN or inf", "at example 0, occlusion window at (0,)"]),
    "NaN model output, Lime": (lambda: Lime(lam("log")).attribute(-X, n_samples=8, seed=0),
                               E, ["NaN or inf", "example 0, coalition"]),
    "float16 overflow, Saliency": (
        lambda: Saliency(fp16_overflow()).attribute(X * 200, target=0),
        E, ["NaN or inf", "example 1", "mixed_float16"]),
    "float16 overflow, IG": (
        lambda: IntegratedGradients(fp16_overflow()).attribute(X * 200, target=0, n_steps=8),
        E, ["NaN or inf", "example 1, path step", "mixed_float16"]),
    "gradient NaN at a kink (|x| at 0)": (
        lambda: Saliency(lam("norm")).attribute(with_nan(X, 0.0, at=(0, slice(None)))),
        E, ["gradient", "NaN or inf at example 0", "kink"]),
    "gradient inf (sqrt at 0)": (
        lambda: InputXGradient(lam("sqrt")).attribute(np.zeros((1, 5), "float32")),
        E, ["gradient", "NaN or inf at example 0"]),
    "gradient NaN under noise (SmoothGrad)": (
        lambda: NoiseTunnel(Saliency(lam("norm"))).attribute(
            np.zeros((1, 5), "float32"), nt_samples=3, stdevs=0.0, seed=0),
        E, ["gradient", "example 0, noise sample 0"]),
    # --- token ids
    "id -1 (silently the last row before)": (
        lambda: LayerIntegratedGradients(text(), "emb").attribute(bad_ids(-1), target=0),
        E, ["`inputs`", "the id -1 at example 1, token 3", "input_dim=20"]),
    "id = vocab size": (
        lambda: LayerGradientXActivation(text(), "emb").attribute(bad_ids(20), target=0),
        E, ["`inputs`", "the id 20 at example 1, token 3", "valid ids 0..19"]),
    "huge id, Occlusion": (
        lambda: Occlusion(text()).attribute(bad_ids(2**31 - 1), sliding_window_shapes=(1,),
                                            target=0),
        E, ["`inputs`", f"the id {2**31 - 1} at example 1, token 3"]),
    "id out of range, AttentionXGradient": (
        lambda: AttentionXGradient(text()).attribute(bad_ids(99, 0, 0), target=1),
        E, ["`inputs`", "the id 99 at example 0, token 0"]),
    "float baseline 0.7 for ids": (
        lambda: LayerIntegratedGradients(text(), "emb").attribute(TOKENS, baselines=0.7,
                                                                  target=0),
        E, ["`baselines`", "0.7", "truncated to 0"]),
    "baseline id out of range, FeatureAblation": (
        lambda: FeatureAblation(text()).attribute(TOKENS, baselines=999, target=0),
        E, ["`baselines`", "the id 999 at example 0, token 0"]),
    "explain: ids out of range": (
        lambda: explain.token_attributions(classifier()[0], np.full((1, 12), 10)),
        E, ["`ids`", "the id 10 at example 0, token 0"]),
    "explain: pad_id out of range": (
        lambda: explain.token_attributions(classifier()[0], np.ones((1, 12), int), pad_id=-1),
        E, ["`pad_id`", "pad_id=-1"]),
    "explain: float ids": (
        lambda: explain.token_attributions(classifier()[0], np.ones((1, 12), "float32")),
        E, ["`ids`", "dtype=float32"]),
    # --- absurd sizes
    "n_steps=10**9": (lambda: IntegratedGradients(mlp()).attribute(X, target=0, n_steps=10**9),
                      E, ["`n_steps`", "<= 50000", "n_steps=1000000000"]),
    "nt_samples=10**9": (
        lambda: NoiseTunnel(Saliency(mlp())).attribute(X, target=0, nt_samples=10**9),
        E, ["`nt_samples`", "nt_samples=1000000000"]),
    "GradientShap n_samples=10**9": (
        lambda: GradientShap(mlp()).attribute(X, baselines=X, target=0, n_samples=10**9),
        E, ["`n_samples`", "n_samples=1000000000"]),
    "feature_mask without any feature": (
        lambda: ShapleyValues(lam("log")).attribute(np.ones((1, 5), "float32"),
                                                    feature_mask=np.full((1, 5), -1)),
        E, ["`feature_mask`", "example 0 has no feature"]),
    "exact Shapley over 40 features": (
        lambda: ShapleyValues(wide()).attribute(np.ones((1, 40), "float32")),
        E, ["`feature_mask`", "F = 40", "ShapleyValueSampling"]),
    "ShapleyValueSampling n_samples=0": (
        lambda: ShapleyValueSampling(mlp()).attribute(X, target=0, n_samples=0),
        E, ["`n_samples`", "n_samples=0"]),
    # --- wrong shapes, empty batches, structures
    "per-example shape (4,) for (5,)": (
        lambda: Saliency(mlp()).attribute(np.ones((2, 4), "float32"), target=0),
        E, ["`inputs`", "per-example shape (4,)", "takes (5,)"]),
    "extra axis (silently broadcast before)": (
        lambda: IntegratedGradients(mlp()).attribute(np.ones((2, 5, 1), "float32"), target=0),
        E, ["`inputs`", "per-example shape (5, 1)"]),
    "scalar input": (lambda: Saliency(mlp()).attribute(np.float32(1.0), target=0),
                     E, ["`inputs`", "shape ()"]),
    "baseline shape": (
        lambda: IntegratedGradients(mlp()).attribute(X, baselines=np.ones(4), target=0),
        E, ["`baselines`", "shape (4,)"]),
    "empty batch": (lambda: IntegratedGradients(mlp()).attribute(np.zeros((0, 5), "float32"),
                                                                 target=0),
                    E, ["`inputs`", "batch is empty", "(0, 5)"]),
    "empty batch, Occlusion": (
        lambda: Occlusion(mlp()).attribute(np.zeros((0, 5), "float32"), sliding_window_shapes=1,
                                           target=0),
        E, ["`inputs`", "batch is empty"]),
    "empty tuple": (lambda: Saliency(mlp()).attribute((), target=0), E, ["`inputs`", "empty"]),
    "batch sizes differ": (
        lambda: Saliency(dict_model()).attribute({"a": DICT_X["a"], "b": DICT_X["b"][:1]}),
        E, ["`inputs`", "same batch size", "'a': 2", "'b': 1"]),
    "integer inputs to a gradient method": (
        lambda: Saliency(mlp()).attribute(np.ones((2, 5), "int32"), target=0),
        T, ["dtype int32", "LayerIntegratedGradients"]),
    "dict missing a key": (lambda: Saliency(dict_model()).attribute({"a": DICT_X["a"]}),
                           E, ["`inputs`", "missing: ['b']", "inputs keys ['a']"]),
    "dict with an extra key": (
        lambda: IntegratedGradients(dict_model()).attribute(
            {**DICT_X, "c": np.ones((2, 1), "float32")}),
        E, ["`inputs`", "not model inputs: ['c']"]),
    "dict missing a key, FeatureAblation": (
        lambda: FeatureAblation(dict_model()).attribute({"b": DICT_X["b"]}),
        E, ["`inputs`", "missing: ['a']"]),
    "array for a dict model": (lambda: Saliency(dict_model()).attribute(DICT_X["a"]),
                               E, ["`inputs`", "takes a dict with keys ['a', 'b']"]),
    "dict baselines, unknown key": (
        lambda: IntegratedGradients(dict_model()).attribute(DICT_X, baselines={"z": 0.0}),
        E, ["`baselines`", "keys ['z']"]),
    "dict baselines for array inputs": (
        lambda: IntegratedGradients(mlp()).attribute(X, baselines={"a": 0.0}, target=0),
        T, ["`baselines`", "keys ['a']"]),
    "additional_forward_args overlapping keys": (
        lambda: Saliency(dict_model()).attribute({"a": DICT_X["a"]},
                                                 additional_forward_args={"a": DICT_X["a"]}),
        E, ["`additional_forward_args`", "keys ['a']"]),
    # --- hostile text
    "empty text": (lambda: explain_text(""), E, ["`texts`", "text 0 ('')", "no tokens"]),
    "whitespace text": (lambda: explain_text(["good", " \t\n "]),
                        E, ["`texts`", "text 1 (' \\t\\n ')", "no tokens"]),
    "zero-width characters only": (lambda: explain_text("\u200b\u200c"),
                                   E, ["`texts`", "text 0"]),
    "only punctuation (unknown)": (lambda: explain_text("?? ,,"),
                                   E, ["`texts`", "'?? ,,'", "no word in the tokenizer's vocabulary"]),
    "only unknown words": (lambda: explain_text("zorp qwx blorf"),
                           E, ["`texts`", "'zorp qwx blorf'", "[UNK]"]),
    "emoji only": (lambda: explain_text("\U0001F600\U0001F600"), E, ["`texts`", "[UNK]"]),
    "text is an int": (lambda: explain_text(5), T, ["`texts`", "texts=5"]),
    "a None among texts": (lambda: explain_text(["good", None]), T, ["`texts`", "texts[1]=None"]),
    "no texts": (lambda: explain_text([]), E, ["`texts`", "texts=[]"]),
    "invalid UTF-8 bytes": (lambda: explain_text([b"\xff\xfe"]), E, ["`texts`", "not UTF-8"]),
    "explain method='nope'": (lambda: explain_text("good", method="nope"),
                              E, ["`method`", "method='nope'"]),
    "explain outputs='prob'": (lambda: explain_text("good", outputs="prob"),
                               E, ["`outputs`", "outputs='prob'"]),
}


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_refused_with_a_clear_error(case):
    fn, exc, fragments = REFUSED[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(exc) as err:
            fn()
    msg = str(err.value)
    assert "in user code" not in msg and "Traceback" not in msg  # not a raw TF trace
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in: {msg}"


# ------------------------------------------------------ accepted, and correct
def _words(e):
    return [w.word for w in e.words]


def _spans_point_into_text(e):
    return all(e.text[s:t] == w for w, (s, t), _ in e.words)


def case_long_text():
    with pytest.warns(UserWarning, match="truncated"):
        [e] = explain_text("good film " * 5000)
    assert _words(e) == ["good", "film"] * 5  # 10 word pieces fit in 12 tokens
    assert _spans_point_into_text(e)


def case_html_is_escaped():
    text = 'good <script>alert("x")</script> &amp; film'
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncated
        [e] = explain_text(text)
    html = e.to_html()
    assert "<script" not in html and "&lt; (unknown)" in html
    assert json.loads(e.to_json())["text"] == text
    assert _spans_point_into_text(e)


def case_dollar_signs_plot():
    import matplotlib.pyplot as plt

    [e] = explain_text("good $x$ film $")
    assert _words(e) == ["good", "$", "x", "$", "film", "$"]
    assert e.unknown_words == [False, False, True, False, False, False]
    fig, ax = e.plot()
    fig.canvas.draw()  # no mathtext error from the `$` tokens
    assert "x (unknown)" in [t.get_text() for t in ax.texts]
    plt.close(fig)


def case_emoji_rtl_zero_width():
    texts = ["good \U0001F600 film", "good \u0645\u0631\u062d\u0628\u0627 film",
             "\u202egood\u200b film"]
    es = explain_text(texts)
    assert [_words(e)[1] for e in es[:2]] == ["\U0001F600", "\u0645\u0631\u062d\u0628\u0627"]
    assert [e.unknown_words for e in es[:2]] == [[False, True, False]] * 2
    assert es[2].unknown_words == [False, False]  # the invisible characters are dropped
    assert all(_spans_point_into_text(e) for e in es)
    assert "\U0001F600" in es[0].to_json()  # not escaped to \\ud83d


def case_nan_free_result_on_valid_ids():
    model = text()
    attr, delta = LayerIntegratedGradients(model, "emb").attribute(
        TOKENS, baselines=0, target=0, n_steps=64, return_convergence_delta=True)
    assert np.all(np.isfinite(attr)) and np.all(np.abs(delta) < 0.05)


def case_integral_float_baseline_for_ids():
    lig = LayerIntegratedGradients(text(), "emb")
    a = lig.attribute(TOKENS, baselines=0, target=0, n_steps=4)
    b = lig.attribute(TOKENS, baselines=np.zeros(6, "float64"), target=0, n_steps=4)
    np.testing.assert_array_equal(a, b)


def case_huge_finite_inputs():
    # Dense with known weights: the gradient of logit 0 is W[:, 0] everywhere.
    x = np.full((1, 5), 1e30, "float32")
    np.testing.assert_allclose(Saliency(mlp()).attribute(x, target=0, abs=False)[0],
                               np.arange(0, 15, 3) / 10.0, rtol=1e-6)


def case_kink_away_from_zero_is_fine():
    x = np.array([[3.0, 4.0, 0.0, 0.0, 0.0]], "float32")  # |x| = 5: gradient x / 5
    np.testing.assert_allclose(Saliency(lam("norm")).attribute(x, abs=False), x / 5.0, rtol=1e-6)


def case_n_steps_at_the_maximum_boundary():
    from kerastrace.attribution.integrated_gradients import MAX_N_STEPS, approximation_parameters

    a, w = approximation_parameters("riemann_middle", MAX_N_STEPS)
    assert a.shape == (MAX_N_STEPS,) and abs(float(w.sum()) - 1.0) < 1e-4


def case_contrast_without_foil_per_example():
    # logit 2 - logit 1 for example 0, logit 2 alone for example 1 (foil -1)
    g = InputXGradient(mlp()).attribute(X, target=Contrast(2, foil=np.array([1, -1])))
    w = np.arange(15, dtype="float32").reshape(5, 3) / 10.0
    np.testing.assert_allclose(g, X * np.stack([w[:, 2] - w[:, 1], w[:, 2]]), rtol=1e-6)


ACCEPTED = {
    f.__name__[5:]: f for f in [
        case_long_text, case_html_is_escaped, case_dollar_signs_plot, case_emoji_rtl_zero_width,
        case_nan_free_result_on_valid_ids, case_integral_float_baseline_for_ids,
        case_huge_finite_inputs, case_kink_away_from_zero_is_fine,
        case_n_steps_at_the_maximum_boundary, case_contrast_without_foil_per_example,
    ]
}


@pytest.mark.parametrize("case", list(ACCEPTED), ids=list(ACCEPTED))
def test_accepted_and_correct(case):
    ACCEPTED[case]()


def test_enough_hostile_cases():
    assert len(REFUSED) + len(ACCEPTED) >= 45
