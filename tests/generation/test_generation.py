"""Generation tracing on causal LMs: batched == per-token, causality, completeness, contrast,
step scores, generation, logit lens, head gates, bad input."""

import keras
import numpy as np
import pytest

from kerastrace.attribution import LayerIntegratedGradients
from kerastrace.generation import (
    CausalLM,
    GenerationTracer,
    HeadGates,
    Prompts,
    generate,
    head_importance,
    logit_lens,
    mask_heads,
    trace_generation,
)
from kerastrace.testing import model_zoo as zoo
from kerastrace.testing.reference_models import build_causal_lm

PROMPTS = [[3, 7, 5, 9], [2, 4, 11]]


@pytest.fixture(scope="module", params=["kerastrace", "keras_io", "gpt2", "llama"])
def lm(request):
    if request.param == "kerastrace":
        return CausalLM(build_causal_lm(24, 12, dim=16, num_heads=2, ff_dim=16, seed=0))
    if request.param == "keras_io":
        return CausalLM(zoo.keras_io_mini_gpt(vocab_size=24, maxlen=12))
    if request.param == "gpt2":
        return CausalLM(zoo.hub_gpt2_lm(vocabulary_size=24))
    return CausalLM(zoo.hub_llama_lm(vocabulary_size=24))


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


ALL_METHODS = ("integrated_gradients", "input_x_gradient", "saliency", "occlusion",
               "attention", "attention_x_gradient")


def test_every_method_gives_zero_to_later_tokens(lm):
    # every method on two families, two methods on the others (the suite's time budget)
    full = lm.model.name == "causal_lm" or type(lm.model).__name__ == "GPT2CausalLM"
    for method in ALL_METHODS if full else ("integrated_gradients", "attention_x_gradient"):
        tr = GenerationTracer(lm, method).trace(PROMPTS, max_new_tokens=3, n_steps=8)
        for b, p in enumerate(PROMPTS):
            src = tr.sources[b]
            assert src.shape == (3, len(p) + 3)
            for k in range(3):
                assert np.all(src[k, len(p) + k :] == 0), (method, b, k)
            assert np.abs(src).sum() > 0, method


def test_batched_trace_equals_one_call_per_token_and_completeness(lm):
    tracer = GenerationTracer(lm, "integrated_gradients")
    tr = tracer.trace(PROMPTS, max_new_tokens=3, n_steps=256)
    v = lm.vocab_size
    lig = LayerIntegratedGradients(lm.model, lm.token_embedding)
    for b, p in enumerate(PROMPTS):
        full = np.concatenate([p, tr.generated_ids[b]]).astype(np.int32)
        for k, tok in enumerate(tr.generated_ids[b]):
            pos = len(p) + k - 1
            ids, mask = lm.batch([full[: pos + 1]], lm.padded_length(len(full) - 1))
            base = np.where(mask, 0, ids).astype(np.int32)
            inputs = lm.inputs(ids, mask)
            baselines = {"token_ids": base} if lm.dict_inputs else base
            attr, delta = lig.attribute(inputs, baselines=baselines, target=pos * v + tok,
                                        n_steps=256, return_convergence_delta=True)
            one = attr.sum(-1)[0]
            np.testing.assert_allclose(tr.sources[b][k, : pos + 1], one[: pos + 1],
                                       rtol=1e-4, atol=1e-6)
            # completeness: the scores add up to the logit's change from the baseline
            f_x = lm.logits(ids, [pos + 1])[0, pos, tok]
            f_b = lm.logits(base, [pos + 1])[0, pos, tok]
            assert abs(tr.sources[b][k].sum() - (f_x - f_b)) <= 0.05 * abs(f_x - f_b) + 3e-3


def test_step_scores_come_from_the_model(lm):
    tr = trace_generation(lm, PROMPTS, max_new_tokens=3, method="input_x_gradient")
    for b, p in enumerate(PROMPTS):
        full = np.concatenate([p, tr.generated_ids[b]])
        logits = lm.logits(full[None, :-1])[0]
        for k, tok in enumerate(tr.generated_ids[b]):
            probs = _softmax(logits[len(p) + k - 1].astype(np.float64))
            s = tr.steps[b]
            assert s["probability"][k] == pytest.approx(probs[tok], rel=1e-4, abs=1e-7)
            assert s["entropy"][k] == pytest.approx(-(probs * np.log(probs)).sum(), rel=1e-4)
            assert s["rank"][k] == int((probs > probs[tok]).sum())
            assert s["rank"][k] == 0  # greedy generation picks the most likely token


def test_contrast_is_the_difference_for_linear_methods():
    lm = CausalLM(build_causal_lm(24, 12, dim=16, num_heads=2, ff_dim=16, seed=1))
    for method in ("input_x_gradient", "integrated_gradients"):
        tracer = GenerationTracer(lm, method)
        a = tracer.trace([3, 7, 5], continuation=[[9, 2]], n_steps=16)
        b = tracer.trace([3, 7, 5], continuation=[[4, 6]], n_steps=16)
        both = tracer.trace([3, 7, 5], continuation=[[9, 2]], contrast={0: 4, 1: 6}, n_steps=16)
        # step 0 reads the same prefix in all three; step 1 differs after position 3
        np.testing.assert_allclose(both.sources[0][0], a.sources[0][0] - b.sources[0][0],
                                   rtol=1e-4, atol=1e-6)
    assert both.contrast == [[4, 6]]
    one = tracer.trace([3, 7, 5], continuation=[[9, 2]], contrast={1: 6}, n_steps=16)
    np.testing.assert_allclose(one.sources[0][0], a.sources[0][0], rtol=1e-5, atol=1e-7)


def test_no_retrace_when_prompts_lengths_and_targets_change():
    lm = CausalLM(build_causal_lm(24, 16, dim=16, num_heads=2, ff_dim=16, seed=0))
    tracer = GenerationTracer(lm, "input_x_gradient")
    tracer.trace([[3, 7, 5]], max_new_tokens=2)
    tracer.trace([[1, 2], [5, 6, 7, 8, 9]], max_new_tokens=3)
    tracer.trace([[4, 4, 4]], continuation=[[1, 2, 3]], contrast=5)
    gxa = tracer._objects[("gxa", True)]
    assert gxa.engine.trace_count == 1


def test_greedy_generation_equals_keras_hub_generate_and_sampling_is_seeded():
    lm = CausalLM(zoo.hub_gpt2_lm(vocabulary_size=40))
    prompts = Prompts([np.array([3, 7, 5], np.int32), np.array([2, 4], np.int32)])
    own = generate(lm, prompts, 4, use_model_generate=False)
    hub = generate(lm, prompts, 4, use_model_generate=True)
    assert [o.tolist() for o in own] == [h.tolist() for h in hub]
    a = generate(lm, prompts, 4, sampling="sample", seed=7, use_model_generate=False)
    b = generate(lm, prompts, 4, sampling="sample", seed=7, use_model_generate=False)
    assert [x.tolist() for x in a] == [y.tolist() for y in b]
    saved = lm.model.sampler
    generate(lm, prompts, 2, use_model_generate=True)
    assert lm.model.sampler is saved  # the user's sampler is put back


def test_logit_lens_last_layer_is_the_models_own_distribution(lm):
    lens = logit_lens(lm, [3, 7, 5, 9], top_k=4)
    probs = _softmax(lm.logits(np.array([[3, 7, 5, 9]]))[0].astype(np.float64))
    np.testing.assert_allclose(lens.last_distribution[-1], probs[-1], atol=1e-5)
    assert lens.layers[0] == "embeddings" and len(lens.layers) == 3
    np.testing.assert_array_equal(lens.final_tokens, probs.argmax(-1))
    assert np.all(lens.final_rank[-1] == 0)
    np.testing.assert_allclose(lens.final_probability[-1], probs.max(-1), atol=1e-5)


def test_head_gates_one_change_nothing_and_zero_removes_exactly_that_head():
    model = zoo.keras_io_mini_gpt(vocab_size=24, maxlen=8)
    ids = np.array([[3, 7, 5, 9, 1, 2, 6, 4]])
    gates = HeadGates(model)
    ref = model(ids).numpy()
    ones = np.ones((len(gates.paths), max(gates.num_heads)), np.float32)
    np.testing.assert_allclose(gates.gated_call(ids, ones).numpy(), ref, atol=1e-6)
    off = ones.copy()
    off[0, 1] = 0.0
    masked = gates.gated_call(ids, off).numpy()
    # Oracle through Keras weights: zero head 1's value projection in the first layer.
    mha = gates.layers[gates.paths[0]]
    kernel, bias = mha.value_dense.kernel, mha.value_dense.bias
    saved = (kernel.numpy(), bias.numpy())
    try:
        k, b = saved[0].copy(), saved[1].copy()
        k[:, 1, :], b[1, :] = 0.0, 0.0
        kernel.assign(k)
        bias.assign(b)
        oracle = model(ids).numpy()
    finally:
        kernel.assign(saved[0])
        bias.assign(saved[1])
    np.testing.assert_allclose(masked, oracle, rtol=1e-5, atol=1e-5)
    assert np.abs(masked - ref).max() > 1e-4


def test_head_importance_matches_finite_differences_and_masking_reports_flops():
    from kerastrace.profiling import profile_model

    model = build_causal_lm(24, 8, dim=16, num_heads=2, ff_dim=16, seed=3)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 24, (6, 8)).astype(np.int32)
    labels = np.roll(ids, -1, 1)
    mask = np.ones(ids.shape, bool)
    mask[:, -1] = False
    imp = head_importance(model, (ids, labels, mask), task="lm")
    gates = HeadGates(model)
    import tensorflow as tf

    def loss(g):
        out = gates.gated_call(ids, tf.constant(g, tf.float32))
        ce = keras.losses.sparse_categorical_crossentropy(labels, out, from_logits=True)
        return float(tf.reduce_sum(ce * mask) / mask.sum())

    eps = 1e-3
    base = np.ones((2, 2), np.float32)
    for li in range(2):
        for h in range(2):
            up, dn = base.copy(), base.copy()
            up[li, h] += eps
            dn[li, h] -= eps
            fd = (loss(up) - loss(dn)) / (2 * eps)
            assert imp.importance[li, h] == pytest.approx(abs(fd), rel=2e-2, abs=1e-4)
    prof = profile_model(model, inputs=ids[:1], trace=False)
    heads = imp.least_important(1)
    report = mask_heads(model, heads, (ids, labels, mask), task="lm", profile=prof)
    path = heads[0][0]
    assert report["flops_saved"] == pytest.approx(prof[path].flops / 2)
    assert report["loss"] != report["loss_all_heads"]


def test_bad_input():
    classifier = keras.Sequential([keras.Input((5,), dtype="int32"), keras.layers.Embedding(9, 4),
                                   keras.layers.Flatten(), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match=r"logits \(B, T, V\).*output shape \(1, 3\)"):
        CausalLM(classifier)
    lm = CausalLM(build_causal_lm(24, 8, dim=8, num_heads=2, ff_dim=8))
    tracer = GenerationTracer(lm, "saliency")
    with pytest.raises(ValueError, match="reads at most 8 tokens.*max_new_tokens=4"):
        tracer.trace(list(range(1, 7)), max_new_tokens=4)
    with pytest.raises(ValueError, match="`prompt`.*at least one token"):
        tracer.trace([], max_new_tokens=1)
    with pytest.raises(ValueError, match="`contrast`.*token ids in \\[0, 24\\)"):
        tracer.trace([1, 2], max_new_tokens=1, contrast=99)
    with pytest.raises(ValueError, match="`method`.*Received: method='magic'"):
        GenerationTracer(lm, "magic")
    with pytest.raises(ValueError, match="`tokenizer`"):
        tracer.trace("some text", max_new_tokens=1)
    with pytest.raises(ValueError, match="`score`"):
        tracer.trace([1, 2], max_new_tokens=1, score="softmax")
    with pytest.raises(ValueError, match="`continuation`.*token ids"):
        tracer.trace([1, 2], continuation=[[30]])


def test_results_render(tmp_path):
    lm = CausalLM(build_causal_lm(24, 12, dim=16, num_heads=2, ff_dim=16, seed=0))

    class Tok:
        def __call__(self, text):
            return [int(t) for t in text.split()]

        def id_to_token(self, i):
            return "<b>" if i == 3 else f"t{i}"

    tr = GenerationTracer(lm, "input_x_gradient", tokenizer=Tok()).trace("3 7 5", 2)
    import json

    data = json.loads(tr.to_json(tmp_path / "t.json"))
    assert data["examples"][0]["tokens"][0] == "<b>"
    page = tr.to_html()
    assert "&lt;b&gt;" in page and "<b>" not in page.split("<body>")[1].split("<script>")[0]
    assert "addEventListener" in page and "http" not in page.replace("https://", "")
    fig, ax = tr.plot()
    assert len(fig.axes) == 2  # the matrix and its colour bar
    tr.to_tensorboard(tmp_path / "tb")
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
