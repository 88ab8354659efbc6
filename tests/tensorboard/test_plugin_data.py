"""The structured records the kerastrace TensorBoard plugin reads, written and read back."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard import context
from tensorboard.backend.event_processing import data_provider as dp
from tensorboard.backend.event_processing import plugin_event_multiplexer as pem

from kerastrace.attention import attention_rollout, collect, head_statistics
from kerastrace.tensorboard import (
    AttentionMonitor,
    AttributionMonitor,
    GradientFlow,
    write_attention_data,
    write_attribution_data,
    write_explanations,
    write_generation_data,
    write_gradient_flow_data,
    write_model_graph,
    write_profile_data,
)
from kerastrace.tensorboard.plugin import Reader

CTX = context.RequestContext()


def reader(logdir):
    mux = pem.EventMultiplexer(tensor_size_guidance={"kerastrace": 0, "scalars": 0})
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    return Reader(dp.MultiplexerDataProvider(mux, str(logdir)))


def softmax_rows(rng, shape, mask=None):
    x = rng.normal(size=shape)
    if mask is not None:
        x = np.where(mask, x, -np.inf)
    e = np.exp(x - x.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype("float32")


# ----------------------------------------------------------------- attention


def test_attention_record_keeps_real_tokens_and_matches_the_weights(tmp_path):
    rng = np.random.default_rng(0)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
    keymask = mask[:, None, None, :]
    w = {"block_0/attention": softmax_rows(rng, (2, 2, 5, 5), keymask),
         "block_1/attention": softmax_rows(rng, (2, 3, 5, 5), keymask)}
    toks = [list("abcde"), list("vwxyz")]
    tag = write_attention_data(tmp_path, w, toks, step=3, batch=1, mask=mask, special=[0])
    assert tag == "kerastrace/attention"
    r = reader(tmp_path)
    rec = r.record(CTX, "", ".", tag)
    assert rec["step"] == 3 and rec["example"] == 1
    assert rec["tokens"] == ["v", "w", "x"] and rec["positions"] == [0, 1, 2]
    assert rec["special"] == [True, False, False]
    assert [(x["name"], x["heads"], x["query_len"], x["kind"]) for x in rec["layers"]] == [
        ("block_0/attention", 2, 3, "self"), ("block_1/attention", 3, 3, "self")]
    for li, name in enumerate(w):
        got = np.array(r.attention_weights(CTX, "", ".", tag, None, li)["weights"])
        np.testing.assert_allclose(got, w[name][1][:, :3, :3], atol=2e-3)  # float16
        np.testing.assert_allclose(got.sum(-1), 1.0, atol=5e-3)
    # Oracles: kerastrace's own rollout and head statistics of this example.
    ref = attention_rollout([a[1:2] for a in w.values()], mask=mask[1:2])[0][:3, :3]
    np.testing.assert_allclose(rec["rollout"], ref, atol=1e-4)
    stats = head_statistics({k: a[1:2] for k, a in w.items()}, mask=mask[1:2],
                            special=np.array([[1, 0, 0, 0, 0]], bool))
    np.testing.assert_allclose(rec["stats"]["entropy"][1], stats.entropy[1], atol=1e-4)
    np.testing.assert_allclose(rec["stats"]["special_share"][0], stats.special_share[0][:2],
                               atol=1e-4)  # layer 0 has 2 heads (HeadStatistics pads with NaN)
    assert rec["causal"] is False and rec["stats_prefix"] is None


def test_attention_record_causal_and_cross_attention(tmp_path):
    rng = np.random.default_rng(1)
    tril = np.tril(np.ones((4, 4), bool))
    causal = softmax_rows(rng, (1, 2, 4, 4), tril)
    write_attention_data(tmp_path, {"dec/self": causal}, ["a", "b", "c", "d"], name="lm")
    rec = reader(tmp_path).record(CTX, "", ".", "kerastrace/lm")
    assert rec["causal"] is True
    np.testing.assert_allclose(rec["rollout"][0], [1, 0, 0, 0], atol=1e-6)  # first sees itself
    cross = softmax_rows(rng, (1, 2, 4, 6))  # 4 queries over 6 encoder positions
    write_attention_data(tmp_path, {"dec/self": causal, "dec/cross": cross}, list("abcd"),
                         name="seq2seq")
    rec = reader(tmp_path).record(CTX, "", ".", "kerastrace/seq2seq")
    assert [x["kind"] for x in rec["layers"]] == ["self", "cross"]
    assert rec["layers"][1]["key_len"] == 6 and rec["rollout"] is None and rec["causal"] is False


def test_attention_record_rejects_what_does_not_fit(tmp_path):
    w = {"l": np.full((1, 1, 3, 3), 1 / 3, "float32")}
    with pytest.raises(ValueError, match="Received: step=-1"):
        write_attention_data(tmp_path, w, list("abc"), step=-1)
    with pytest.raises(ValueError, match="`batch`.*Received: batch=1"):
        write_attention_data(tmp_path, w, list("abc"), batch=1)
    with pytest.raises(ValueError, match="expected 3 tokens"):
        write_attention_data(tmp_path, w, list("ab"))
    with pytest.raises(ValueError, match=r"\(B, H, T_q, T_k\).*'l' of shape \(3, 3\)"):
        write_attention_data(tmp_path, {"l": np.eye(3)}, list("abc"))
    with pytest.raises(ValueError, match="`name`"):
        write_attention_data(tmp_path, w, list("abc"), name="")


# --------------------------------------------------------------- attribution


def test_attribution_record_words_scores_and_prediction(tmp_path):
    from kerastrace import text

    sentences = ["the film was unwatchable", "a superb cast"]
    vocab = text.build_vocabulary(sentences * 3 + ["un", "watch", "able"], vocab_size=60,
                                  min_count=1)
    tok = text.Tokenizer(vocab, sequence_length=10)
    tt = tok.tokenize(sentences)
    rng = np.random.default_rng(2)
    ig = rng.normal(size=tt.ids.shape) * tt.mask
    sal = np.abs(rng.normal(size=tt.ids.shape)) * tt.mask
    words = {m: text.aggregate_to_words(s, tt) for m, s in (("ig", ig), ("saliency", sal))}
    probs = np.array([[0.1, 0.9], [0.7, 0.3]])
    special = np.isin(tt.ids, [tok.cls_id, tok.sep_id])
    write_attribution_data(tmp_path, {"ig": ig, "saliency": sal}, tt.tokens, step=1,
                           mask=tt.mask, special=special, texts=sentences, words=words,
                           probabilities=probs, labels=[1, 0], class_names=["neg", "pos"])
    rec = reader(tmp_path).record(CTX, "", ".", "kerastrace/attributions")
    assert rec["methods"] == ["ig", "saliency"] and rec["class_names"] == ["neg", "pos"]
    ex = rec["examples"][0]
    n = int(tt.mask[0].sum())
    assert ex["tokens"] == tt.tokens[0][:n] and ex["special"] == special[0][:n].tolist()
    assert ex["text"] == sentences[0]
    assert [w["word"] for w in ex["words"]] == ["the", "film", "was", "unwatchable"]
    for w in ex["words"]:
        assert sentences[0][w["start"]:w["end"]] == w["word"]
    # Oracle: a word's score is the sum of its pieces' scores (aggregate_to_words, sum).
    for m, s in (("ig", ig), ("saliency", sal)):
        for k in range(4):
            pieces = tt.word_ids[0] == k
            assert ex["word_scores"][m][k] == pytest.approx(s[0][pieces].sum(), abs=1e-5)
        np.testing.assert_allclose(ex["scores"][m], s[0][:n], atol=1e-5)
    assert (ex["predicted"], ex["probability"], ex["target"], ex["label"]) == (1, 0.9, 1, 1)
    assert rec["examples"][1]["predicted"] == 0 and rec["examples"][1]["target"] == 0


def test_attribution_record_tokens_only_and_errors(tmp_path):
    write_attribution_data(tmp_path, [[0.5, -0.25, 0.0]], [["a", "b", "[PAD]"]],
                           mask=[[1, 1, 0]], targets=[2])
    rec = reader(tmp_path).record(CTX, "", ".", "kerastrace/attributions")
    ex = rec["examples"][0]
    assert rec["methods"] == ["attribution"]
    assert ex["tokens"] == ["a", "b"] and ex["scores"]["attribution"] == [0.5, -0.25]
    assert ex["words"] is None and ex["predicted"] is None and ex["target"] == 2
    with pytest.raises(ValueError, match="every method with the same shape"):
        write_attribution_data(tmp_path, {"a": [[1, 2]], "b": [[1, 2, 3]]}, ["x", "y"])
    with pytest.raises(ValueError, match="`tokens`"):
        write_attribution_data(tmp_path, [1.0, 2.0], ["x"])
    with pytest.raises(ValueError, match="`probabilities`"):
        write_attribution_data(tmp_path, [1.0, 2.0], ["x", "y"], probabilities=[0.3, 0.7])
    with pytest.raises(ValueError, match="`words`.*keys among"):
        write_attribution_data(tmp_path, {"a": [1.0]}, ["x"], words={"b": [[]]})


def test_explanations_grouped_by_text_with_methods(tmp_path):
    from kerastrace.explain import TextExplanation

    def expl(t, method, scores):
        return TextExplanation(
            text=t, method=method, target=1, probabilities=np.array([0.2, 0.8]),
            tokens=["[CLS]", *t.split(), "[SEP]"], token_scores=np.array(scores, "float32"),
            mask=np.ones(len(scores), bool),
            words=[(w, (t.index(w), t.index(w) + len(w)), s)
                   for w, s in zip(t.split(), scores[1:-1])],
            special=np.array([True] + [False] * (len(scores) - 2) + [True]),
        )

    items = [expl("good film", "ig", [0, 0.7, 0.1, 0]), expl("good film", "lime", [0, 0.5, 0.2, 0]),
             expl("bad", "ig", [0, -0.9, 0])]
    items[0].unknown_words = [False, True]  # "film" read as [UNK]
    write_explanations(tmp_path, items, class_names=["neg", "pos"])
    rec = reader(tmp_path).record(CTX, "", ".", "kerastrace/explanations")
    assert rec["methods"] == ["ig", "lime"] and len(rec["examples"]) == 2
    ex = rec["examples"][0]
    assert ex["word_scores"] == {"ig": [0.7, 0.1], "lime": [0.5, 0.2]}
    assert [w["word"] for w in ex["words"]] == ["good", "film"]
    assert (ex["predicted"], ex["probability"], ex["target"]) == (1, 0.8, 1)
    assert ex["special"] == [True, False, False, True]
    assert ex["unknown_words"] == [False, True]
    assert "unknown_words" not in rec["examples"][1]
    with pytest.raises(TypeError, match="TextExplanation"):
        write_explanations(tmp_path, [object()])


# ------------------------------------------------------- generation, profile


def test_generation_record_names_alternatives(tmp_path):
    from kerastrace.generation import GenerationTrace

    trace = GenerationTrace(
        method="integrated_gradients", prompt_ids=[[5, 6]], generated_ids=[[7, 8]],
        sources=[np.array([[0.5, -0.25, 0, 0], [0.1, 0.2, 0.3, 0]], "float32")],
        steps=[{"probability": np.array([0.6, 0.3]), "rank": np.array([0, 1]),
                "entropy": np.array([1.0, 2.0]), "top_tokens": np.array([[7, 9], [6, 8]]),
                "top_probabilities": np.array([[0.6, 0.2], [0.4, 0.3]])}],
        token_strings=[["k1", "k2", "v1", "v2"]],
    )
    write_generation_data(tmp_path, trace, step=2)
    rec = reader(tmp_path).record(CTX, "", ".", "kerastrace/generation")
    ex = rec["examples"][0]
    assert ex["tokens"] == ["k1", "k2", "v1", "v2"] and ex["prompt_len"] == 2
    assert ex["sources"][0] == [0.5, -0.25, 0.0, 0.0]
    assert ex["steps"]["top_token_strings"] == [["v1", "#9"], ["k2", "v2"]]  # ids seen, else #id
    write_generation_data(tmp_path, trace, name="named", id_to_token=lambda i: f"tok{i}")
    ex = reader(tmp_path).record(CTX, "", ".", "kerastrace/named")["examples"][0]
    assert ex["steps"]["top_token_strings"][0] == ["tok7", "tok9"]
    with pytest.raises(TypeError, match="GenerationTrace"):
        write_generation_data(tmp_path, {"examples": []})


def test_profile_record_has_every_row(tmp_path):
    from kerastrace.profiling import profile_model

    inp = keras.Input((4,))
    x = keras.layers.Dense(3, name="hidden")(inp)
    model = keras.Model(inp, keras.layers.Dense(2, name="out")(x), name="mlp")
    prof = profile_model(model, trace=False)
    write_profile_data(tmp_path, prof)
    rec = reader(tmp_path).record(CTX, "", ".", "kerastrace/profile")
    assert rec["model_name"] == "mlp" and rec["total_params"] == 4 * 3 + 3 + 3 * 2 + 2
    assert [r["path"] for r in rec["layers"]] == ["", "hidden", "out"]
    hidden = rec["layers"][1]
    assert hidden["params"] == 15 and hidden["output_shape_text"] == "(1, 3)"
    assert hidden["flops"] == prof["hidden"].flops > 0
    with pytest.raises(TypeError, match="ModelProfile"):
        write_profile_data(tmp_path, [1, 2])


def test_gradient_flow_record_and_errors(tmp_path):
    write_gradient_flow_data(tmp_path, {"a": 0.5, "b": float("nan")}, step=4,
                             vanish_threshold=1e-6, explode_threshold=10.0)
    rec = reader(tmp_path).record(CTX, "", ".", "kerastrace/gradient_flow")
    assert rec["norms"] == {"a": 0.5, "b": None} and rec["nonfinite"] == ["b"]
    assert (rec["vanish_threshold"], rec["explode_threshold"]) == (1e-6, 10.0)
    with pytest.raises(ValueError, match="above vanish_threshold"):
        write_gradient_flow_data(tmp_path, {"a": 1.0}, explode_threshold=0.0)
    with pytest.raises(ValueError, match="`norms`.*layer 'a'"):
        write_gradient_flow_data(tmp_path, {"a": "x"})


def test_model_graph_is_an_op_graph_tensorboard_reads(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    inp = keras.Input((5,), dtype="int32")
    mask = keras.ops.not_equal(inp, 0)  # ops with constant arguments, as in the demo
    x = keras.layers.Embedding(10, 4, name="emb")(inp)
    x = x * keras.ops.expand_dims(keras.ops.cast(mask, "float32"), -1)
    model = keras.Model(inp, keras.layers.Dense(2, name="head")(x[:, 0]))
    write_model_graph(tmp_path, model, np.ones((2, 5), "int32"))
    acc = event_accumulator.EventAccumulator(str(tmp_path))
    acc.Reload()
    graph = acc.Graph()
    names = [n.name for n in graph.node]
    # ops grouped by the layers' name scopes (TensorFlow may suffix a reused scope: "emb_1")
    for layer in ("emb", "head"):
        assert any(re.search(rf"/{layer}(_\d+)?/", n) for n in names), (layer, names)
    placeholders = [n for n in graph.node if n.op == "Placeholder" and n.attr["dtype"].type == 3]
    assert [d.size for d in placeholders[0].attr["shape"].shape.dim] == [-1, 5]  # batch free


# ------------------------------------------------------------------ monitors


def test_monitors_log_the_dashboard_records(tiny_classifier, tmp_path):
    model, ids, y = tiny_classifier
    probe = ids[:2]
    toks = [[f"t{t}" for t in row] for row in probe]
    att = AttentionMonitor(tmp_path / "att", probe, tokens=toks, pad_id=0, special_ids=[5],
                           write_images=False)
    attr = AttributionMonitor(tmp_path / "attr", probe, tokens=toks, pad_id=0, write_images=False)
    grad = GradientFlow(tmp_path / "grad", (ids[:8], y[:8]), histograms=False)
    model.fit(ids, y, epochs=2, batch_size=16, verbose=0, callbacks=[att, attr, grad])
    assert att.failures == attr.failures == grad.failures == 0
    r = reader(tmp_path)
    rec = r.record(CTX, "", "att", "kerastrace/attention")
    assert rec["step"] == 1 and rec["stats_prefix"] == "heads"
    n = int((probe[0] != 0).sum())
    assert rec["tokens"] == toks[0][:n]
    assert rec["special"] == (probe[0][:n] == 5).tolist()
    np.testing.assert_allclose(
        r.attention_weights(CTX, "", "att", "kerastrace/attention", None, 0)["weights"],
        collect(model, probe)["block/attention"][0][:, :n, :n], atol=2e-3)
    hs = r.head_statistics(CTX, "", "att", "kerastrace/attention")
    assert hs["source"] == "scalars"
    assert [s for s, _ in hs["stats"]["entropy"][0][1]] == [0, 1]
    assert hs["stats"]["entropy"][0][1][-1][1] == pytest.approx(
        att.last_statistics.entropy[0, 1], abs=1e-5)
    rec = r.record(CTX, "", "attr", "kerastrace/attributions")
    assert rec["methods"] == ["gradient_x_embedding"]
    np.testing.assert_allclose(rec["examples"][0]["scores"]["gradient_x_embedding"],
                               attr.last_scores[0][:n], atol=1e-5)
    logits = np.asarray(model(probe, training=False))
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    assert rec["examples"][0]["predicted"] == int(np.argmax(p[0]))
    assert rec["examples"][0]["probability"] == pytest.approx(p[0].max(), abs=1e-4)
    flow = r.gradient_flow(CTX, "", "grad", "kerastrace/gradient_flow")
    assert flow["steps"] == [0, 1] and set(flow["layers"]) == set(grad.last_norms)
    for layer, norm in grad.last_norms.items():
        assert flow["series"][layer][-1][1] == pytest.approx(norm, rel=1e-5)
    assert flow["source"] == "scalars+records"


def test_record_tensor_format_is_plain_json_and_bytes(tmp_path):
    """Any TensorBoard data reader sees a string tensor: UTF-8 JSON, then the raw weights."""
    from kerastrace.tensorboard.plugin import _format as fmt

    w = {"l": np.array([[[[0.25, 0.75], [1.0, 0.0]]]], "float32")}
    write_attention_data(tmp_path, w, ["x", "y"])
    mux = pem.EventMultiplexer(tensor_size_guidance={"kerastrace": 0})
    mux.AddRunsFromDirectory(str(tmp_path))
    mux.Reload()
    [event] = mux.Tensors(".", "kerastrace/attention")
    meta = mux.SummaryMetadata(".", "kerastrace/attention")
    assert meta.plugin_data.plugin_name == "kerastrace"
    assert fmt.parse_content(meta.plugin_data.content) == {"kind": "attention", "version": 1}
    values = tf.make_ndarray(event.tensor_proto)
    payload, blob = fmt.decode(values)
    assert payload["tokens"] == ["x", "y"]
    assert np.frombuffer(blob, "<f2").tolist() == [0.25, 0.75, 1.0, 0.0]
