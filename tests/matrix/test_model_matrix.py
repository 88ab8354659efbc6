"""Every capability on every model family of the matrix (see conftest.py).

Each cell asserts a property that an independent computation can confirm (the
model's own outputs, finite differences through Keras variables, completeness,
exact zeros on future tokens), or the clear error that says why a capability
does not apply.
"""

from __future__ import annotations

import numpy as np
import pytest
from matrix_cases import CAUSAL, SINGLE_TOKEN_INPUT, build

from kerastrace import attention
from kerastrace._utils import instrument
from kerastrace.attribution import (
    GradientWeightedRollout,
    IntegratedGradients,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    NoiseTunnel,
    Occlusion,
    Saliency,
    token_scores,
)


def _score(case, inputs, target=None):
    """The explained scalar of every example, straight from the model."""
    out = np.asarray(case.model(inputs, training=False), np.float64)
    out = out.reshape(out.shape[0], -1)
    return out[:, case.target if target is None else target]


# ------------------------------------------------------------------ finding
def test_token_embedding_is_the_one_on_the_ids(any_case):
    found = instrument.find_token_embedding(any_case.model)
    if any_case.kind == "vision":
        assert found is None  # a ViT's only Embedding holds positions
    else:
        assert found is any_case.token_layer


def test_paths_are_one_scheme(any_case):
    paths = [n.path for n in instrument.walk(any_case.model)]
    assert len(paths) == len(set(paths))
    assert not any(p.startswith(any_case.model.name + "/") for p in paths)
    for path in attention.attention_layers(any_case.model):
        assert instrument.resolve_layer(any_case.model, path)[0] == path


# ---------------------------------------------------------------- attention
def test_collect(any_case):
    model = any_case.model
    maps = attention.collect(model, any_case.inputs)
    layers = attention.attention_layers(model)
    assert [s.path for s in maps.sites.values()] == list(layers)
    for key, w in maps.items():
        assert w.ndim == 4 and w.shape[0] == 2
        site = maps.sites[key]
        rows = w.sum(-1)
        real_q = np.ones(w.shape[2], bool)[None].repeat(2, 0)
        if any_case.mask is not None and site.kind == "self" and w.shape[-1] == any_case.mask.shape[1]:
            real_q = any_case.mask
            # padded keys get no attention from real queries
            assert np.abs(w * (~any_case.mask)[:, None, None, :] * real_q[:, None, :, None]).max() == 0
        np.testing.assert_allclose(rows[real_q[:, None, :].repeat(w.shape[1], 1)], 1.0, atol=1e-5)
    if any_case.name in CAUSAL:
        assert maps.is_causal()
    if any_case.kind == "seq2seq":
        assert sorted(maps.stacks) == ["cross", "decoder", "encoder"]
        assert [s.kind for s in maps.sites.values()] == ["self", "self", "cross"]


def test_rollout_and_head_statistics(any_case):
    maps = attention.collect(any_case.model, any_case.inputs)
    if any_case.kind == "seq2seq":
        with pytest.raises(ValueError, match="several attention stacks"):
            attention.attention_rollout(maps)
        enc = maps.stack("encoder")
        r = attention.attention_rollout(enc, mask=any_case.mask)
        np.testing.assert_allclose(r.sum(-1)[any_case.mask], 1.0, atol=1e-5)
        stats = attention.head_statistics(maps, mask=any_case.mask)
        assert np.isnan(stats.distance[-1]).all()  # cross-attention has no token distance
        assert np.isfinite(stats.entropy).all()
        return
    mask = any_case.mask if any_case.kind != "vision" else None
    r = attention.attention_rollout(maps, mask=mask)
    real = np.ones(r.shape[:2], bool) if mask is None else mask
    np.testing.assert_allclose(r.sum(-1)[real], 1.0, atol=1e-5)
    if any_case.name in CAUSAL:
        assert np.abs(np.triu(r, 1)).max() == 0
    stats = attention.head_statistics(maps, mask=mask)
    assert np.isfinite(stats.entropy).all() and np.isfinite(stats.distance).all()


# ------------------------------------------------------- input gradients
def test_input_gradient_methods(any_case):
    if any_case.kind != "vision":
        with pytest.raises(TypeError, match="LayerIntegratedGradients"):
            IntegratedGradients(any_case.model).attribute(any_case.inputs, target=any_case.target)
        return
    import tensorflow as tf

    x = any_case.inputs
    ig = IntegratedGradients(any_case.model)
    _, coarse = ig.attribute(x, target=any_case.target, n_steps=8, return_convergence_delta=True)
    attr, delta = ig.attribute(
        x, target=any_case.target, n_steps=128, return_convergence_delta=True
    )
    diff = _score(any_case, x) - _score(any_case, np.zeros_like(x))
    np.testing.assert_allclose(attr.reshape(2, -1).sum(1) - delta, diff, rtol=1e-3, atol=1e-4)
    assert np.all(np.abs(delta) <= 0.05 * np.abs(diff) + 2e-3)
    assert np.abs(delta).sum() < np.abs(coarse).sum()  # converges with more steps
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        score = any_case.model(xt, training=False)[:, any_case.target]
    oracle = tape.gradient(score, xt).numpy()
    sal = Saliency(any_case.model).attribute(x, target=any_case.target, abs=False)
    np.testing.assert_allclose(sal, oracle, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------- layer methods
def test_layer_ig_on_token_embedding(text_case):
    case = text_case
    emb = instrument.find_token_embedding(case.model)
    lig = LayerIntegratedGradients(case.model, emb)
    # Word tokens -> token 1 (not the pad id 0: models that mask on `ids != 0`
    # would then also mask the baseline, while Layer IG keeps the real mask).
    base_ids = np.where(case.mask, 1, case.ids)
    key = "encoder_inputs" if case.kind == "seq2seq" else "token_ids"
    baselines = {key: base_ids} if isinstance(case.inputs, dict) else base_ids
    attr, delta = lig.attribute(
        case.inputs, baselines=baselines, target=case.target, n_steps=256,
        internal_batch_size=128, return_convergence_delta=True,
    )
    assert attr.shape[:2] == case.ids.shape
    diff = _score(case, case.inputs) - _score(case, case.with_ids(base_ids))
    # Completeness: the scores add up to f(x) - f(baseline).
    np.testing.assert_allclose(token_scores(attr).sum(1) - delta, diff, rtol=1e-3, atol=1e-4)
    assert np.all(np.abs(delta) <= 0.05 * np.abs(diff) + 2e-3)
    if case.kind == "lm":
        # Tokens after the explained position cannot matter to a causal model.
        assert np.abs(attr[:, case.position + 1 :]).max() == 0.0
        assert np.abs(attr[:, : case.position + 1]).sum() > 0


@pytest.mark.parametrize("name", [n for n in SINGLE_TOKEN_INPUT if n != "hub_gpt2"])
def test_layer_gradient_matches_finite_differences(name):
    """d score / d embedding, checked by moving the embedding table's rows.

    Every token of example 0 is distinct, so shifting row `ids[t]` of the table
    shifts exactly position t's embedding (not for GPT-2, whose table is also
    the output head).
    """
    case = build(name)
    emb = case.token_layer
    grad = LayerGradientXActivation(case.model, emb, multiply_by_inputs=False).attribute(
        case.inputs, target=case.target
    )[0]
    rng = np.random.default_rng(1)
    direction = rng.normal(size=grad.shape)
    direction = (direction / np.linalg.norm(direction)).astype("float32")
    table = emb.embeddings
    saved = np.array(table.numpy())
    eps = 1e-3  # these untrained models are far from linear at larger steps

    def shifted(sign):
        new = saved.copy()
        new[case.ids[0]] += sign * eps * direction
        table.assign(new)
        return _score(case, case.inputs)[0]

    try:
        fd = (shifted(1) - shifted(-1)) / (2 * eps)
    finally:
        table.assign(saved)
    np.testing.assert_allclose((grad * direction).sum(), fd, rtol=3e-2, atol=2e-4)


def test_gxa_and_noise_tunnel_on_token_embedding(text_case):
    case = text_case
    gxa = LayerGradientXActivation(case.model, case.token_layer)
    plain = gxa.attribute(case.inputs, target=case.target)
    smooth = NoiseTunnel(gxa).attribute(
        case.inputs, target=case.target, nt_samples=4, stdevs=0.0, seed=0
    )
    np.testing.assert_allclose(smooth, plain, rtol=1e-5, atol=1e-7)
    noisy = NoiseTunnel(gxa).attribute(
        case.inputs, target=case.target, nt_samples=4, stdevs=0.1, seed=0
    )
    assert noisy.shape == plain.shape and np.all(np.isfinite(noisy))
    if case.kind == "lm":
        assert np.abs(plain[:, case.position + 1 :]).max() == 0.0
        assert np.abs(noisy[:, case.position + 1 :]).max() == 0.0


def test_occlusion_equals_replacing_each_token(text_case):
    case = text_case
    inputs, extra = case.inputs, None
    if case.kind == "seq2seq":  # occlude the source sentence; the decoder input passes through
        inputs = {"encoder_inputs": case.inputs["encoder_inputs"]}
        extra = {"decoder_inputs": case.inputs["decoder_inputs"]}
    got = Occlusion(case.model).attribute(
        inputs, sliding_window_shapes=(1,), baselines=0, target=case.target,
        additional_forward_args=extra,
    )
    key = "encoder_inputs" if case.kind == "seq2seq" else "token_ids"
    if isinstance(got, dict):
        got = got[key]
    f_x = _score(case, case.inputs)
    for t in (0, 3):
        ids = case.ids.copy()
        ids[:, t] = 0
        np.testing.assert_allclose(got[:, t], f_x - _score(case, case.with_ids(ids)),
                                   rtol=1e-4, atol=1e-5)


# ------------------------------------------------------- attention x gradient
def test_attention_x_gradient_and_rollout(any_case):
    case = any_case
    gwr = GradientWeightedRollout(case.model)
    wg = gwr.weights_and_gradients(case.inputs, target=case.target)
    maps = attention.collect(case.model, case.inputs)
    assert list(wg) == list(maps)
    for key, (w, g) in wg.items():
        np.testing.assert_allclose(w, maps[key], atol=1e-6)
        assert np.all(np.isfinite(g))
    assert any(np.abs(g).max() > 0 for _, g in wg.values())
    if case.kind == "seq2seq":
        with pytest.raises(ValueError, match="stack"):
            gwr.attribute(case.inputs, target=case.target)
        scores = gwr.attribute(case.inputs, target=case.target, stack="encoder", mask=case.mask)
        assert scores.shape == case.ids.shape
        return
    rel = gwr.attribute_matrix(case.inputs, target=case.target)
    if case.name in CAUSAL:
        assert np.abs(np.triu(rel, 1)).max() == 0  # no relevance from later tokens
    scores = gwr.attribute(case.inputs, target=case.target, mask=case.mask)
    assert scores.shape == rel.shape[:2] and np.all(np.isfinite(scores))
    if case.mask is not None:
        assert np.all(scores[~case.mask] == 0)


# ------------------------------------------------------------------ explain
def test_explain_token_attributions(any_case):
    from kerastrace import explain

    case = any_case
    if case.kind == "vision":
        with pytest.raises(ValueError, match="token embedding"):
            explain.token_attributions(case.model, np.ones((2, 4), "int32"))
        return
    if case.kind == "seq2seq":
        with pytest.raises(ValueError, match="encoder_inputs"):
            explain.token_attributions(case.model, case.ids, mask=case.mask)
        return
    if case.kind == "lm":
        with pytest.raises(ValueError, match="sequence"):
            explain.token_attributions(case.model, case.ids, mask=case.mask)
    target = case.target
    for method in explain.METHODS:
        scores, targets, delta = explain.token_attributions(
            case.model, case.ids, method=method, target=target, mask=case.mask, n_steps=48
        )
        assert scores.shape == case.ids.shape and np.all(np.isfinite(scores)), method
        assert np.all(scores[~case.mask] == 0), method
        if case.kind == "lm" and method not in ("attention_rollout", "kernel_shap", "lime"):
            assert np.abs(scores[:, case.position + 1 :]).max() == 0, method
        if case.kind == "lm" and method in ("kernel_shap", "lime"):  # regression estimates
            assert np.abs(scores[:, case.position + 1 :]).max() < 0.1, method
        if method == "integrated_gradients":
            assert np.all(np.abs(delta) < 0.05 + 0.05 * np.abs(scores.sum(1))), delta


# ------------------------------------------------------------------ training
def _labels(case):
    """Labels of the right kind for `fit` (classes, or next tokens per position)."""
    if case.kind in ("classifier", "vision"):
        return np.array([0, 1])
    if case.kind == "seq2seq":
        return np.ones(case.inputs["decoder_inputs"].shape, "int32")
    return np.roll(case.ids, -1, axis=1)


def test_monitors_in_a_short_fit(any_case, tmp_path):
    import keras

    from kerastrace.tensorboard import AttentionMonitor, AttributionMonitor, GradientFlow

    case = build(any_case.name)
    model = case.model
    saved = [w.numpy() for w in model.weights]
    from_logits = case.name not in ("keras_io_classifier", "keras_io_translator")
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits))
    y = _labels(case)
    monitors = [
        AttentionMonitor(tmp_path / "att", case.inputs, write_images=False, strict=True),
        GradientFlow(tmp_path / "grad", (case.inputs, y), histograms=False, strict=True),
    ]
    if case.kind == "vision":  # no token embedding: the default attribution cannot apply
        with pytest.raises(ValueError, match="attribution_fn"):
            model.fit(case.inputs, y, epochs=1, verbose=0, callbacks=[
                AttributionMonitor(tmp_path / "attr", case.inputs, strict=True)])
    elif case.kind != "seq2seq":
        monitors.append(AttributionMonitor(tmp_path / "attr", case.inputs, strict=True))
    try:
        model.fit(case.inputs, y, epochs=2, verbose=0, callbacks=monitors)
    finally:
        for w, val in zip(model.weights, saved):
            w.assign(val)  # later cells use the untrained weights
    assert all(m.failures == 0 for m in monitors)
    assert monitors[0].last_statistics is not None
    grads = monitors[1].last_norms
    assert grads and all(np.isfinite(v) for v in grads.values())
    assert max(grads.values()) > 0


def test_attribute_dataset(any_case):
    import tensorflow as tf

    from kerastrace.scale import attribute_dataset

    case = any_case
    kw = {"n_steps": 16}
    if case.kind == "vision":
        method = IntegratedGradients(case.model)
        direct = method.attribute(case.inputs, target=case.target, **kw)
    else:
        method = LayerIntegratedGradients(case.model, case.token_layer)
        kw["baselines"] = {"encoder_inputs": 0} if case.kind == "seq2seq" else 0
        if case.kind == "seq2seq":  # no "token_ids" entry: the baseline must name its key
            with pytest.raises(ValueError, match="dict of baselines by key"):
                method.attribute(case.inputs, target=case.target)
        direct = method.attribute(case.inputs, target=case.target, **kw)
    ds = tf.data.Dataset.from_tensor_slices(case.inputs).batch(1)
    store = attribute_dataset(method, ds, target=case.target, progress=False, **kw)
    np.testing.assert_allclose(store.attributions, direct, rtol=1e-4, atol=1e-6)
    assert store.delta.shape == (2,)


# ----------------------------------------------------------------- profiling
def test_profile(any_case):
    from kerastrace.profiling import profile_model

    case = any_case
    prof = profile_model(case.model, inputs=case.inputs, trace=False)
    assert prof.total_params == case.model.count_params()
    assert sum(r.self_params for r in prof.layers) == case.model.count_params()
    rows = {r.path for r in prof.layers}
    assert set(attention.attention_layers(case.model)) <= rows  # one path scheme
    for path in attention.attention_layers(case.model):
        assert prof[path].flops > 0


# ----------------------------------------------------------------------- CLI
_CLI_SHAPES = {
    "kerastrace_classifier": ["--input-shape", "1,8"],
    "keras_io_classifier": ["--input-shape", "1,8"],
    "keras_io_mini_gpt": ["--input-shape", "1,8"],
    "keras_io_translator": ["--input", "encoder_inputs:1,8:int64",
                            "--input", "decoder_inputs:1,5:int64"],
    "hub_bert": ["--input", "token_ids:1,8:int32", "--input", "padding_mask:1,8:int32",
                 "--input", "segment_ids:1,8:int32"],
    "hub_gpt2": ["--input", "token_ids:1,8:int32", "--input", "padding_mask:1,8:int32"],
    "hub_llama": ["--input", "token_ids:1,8:int32", "--input", "padding_mask:1,8:int32"],
    "hub_vit": ["--input-shape", "1,16,16,3"],
}


def test_cli_on_the_saved_model(any_case, tmp_path, capsys):
    """`kerastrace profile/attention/explain` on the saved model (custom layers via a file)."""
    import json

    from kerastrace.cli import main

    case = build(any_case.name)
    path = str(tmp_path / "model.keras")
    case.model.save(path)
    extra = []
    if case.name.startswith("keras_io"):  # keras.io layers are not registered: give them
        objects = tmp_path / "layers.py"
        objects.write_text(
            "from kerastrace.testing.model_zoo import KERAS_IO_CUSTOM_OBJECTS as CUSTOM_OBJECTS\n"
        )
        extra = ["--custom-objects", str(objects)]
        assert main(["profile", path, "--no-trace", *_CLI_SHAPES[case.name]]) == 2
        assert "--custom-objects" in capsys.readouterr().err
    shape = _CLI_SHAPES[case.name]
    assert main(["profile", path, "--no-trace", "--format", "json", *shape, *extra]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total_params"] == case.model.count_params()
    if case.kind == "vision":
        return
    vocab = tmp_path / "vocab.txt"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "film", "bad", "plot"]
    vocab.write_text("\n".join(words) + "\n")
    out = tmp_path / "att"
    args = ["attention", path, "--vocab", str(vocab), "--text", "good film",
            "--output-dir", str(out), "--sequence-length", "8", *extra]
    if case.kind == "seq2seq":  # two token inputs: text cannot fill them
        assert main(args) == 2
        assert "encoder_inputs" in capsys.readouterr().err and not out.exists()
        return
    assert main(args) == 0
    assert (out / "attention.npz").exists() and (out / "model_view.png").exists()
    out = tmp_path / "exp"
    args = ["explain", path, "--vocab", str(vocab), "--text", "good film",
            "--output-dir", str(out), "--sequence-length", "8", *extra]
    if case.kind == "lm":  # no single predicted class: a clear error, no files
        assert main(args) == 2
        assert "sequence" in capsys.readouterr().err
        return
    assert main(args) == 0
    record = json.loads((out / "explanations.json").read_text())["explanations"][0]
    assert [w["word"] for w in record["words"]] == ["good", "film"]
