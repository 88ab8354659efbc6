import numpy as np
import pytest
import tensorflow as tf

from kerastrace.attention import collect, head_statistics
from kerastrace.attribution import LayerIntegratedGradients, Saliency
from kerastrace.scale import (
    AttributionStore,
    attention_statistics_dataset,
    attribute_dataset,
    summarize,
)


def _store(shards):
    manifest = {"shards": [{"count": len(s["index"])} for s in shards], "complete": True}
    return AttributionStore(None, manifest, shards)


def test_token_and_class_aggregates_against_brute_force():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 9, size=(7, 5))
    ids[2:, 3:] = 0  # padding
    a = rng.normal(size=(7, 5))
    labels = np.array([0, 1, 1, 0, 2, 1, 0])
    shards = [
        {"index": np.arange(0, 4), "attributions": a[:4], "inputs": ids[:4],
         "labels": labels[:4], "targets": labels[:4], "delta": np.array([0.1, -0.2, 0.0, 0.3])},
        {"index": np.arange(4, 7), "attributions": a[4:], "inputs": ids[4:],
         "labels": labels[4:], "targets": labels[4:], "delta": np.array([-0.4, 0.05, 0.0])},
    ]
    s = summarize(_store(shards), vocab_size=10)
    # brute force over every (example, position)
    occ = {}
    for i in range(7):
        for t in range(5):
            if ids[i, t] != 0:
                occ.setdefault(int(ids[i, t]), []).append((a[i, t], labels[i]))
    for tok in range(10):
        vals = [x for x, _ in occ.get(tok, [])]
        assert s.token_counts[tok] == len(vals)
        assert s.token_mean_abs[tok] == pytest.approx(np.mean(np.abs(vals)) if vals else 0.0)
        assert s.token_mean[tok] == pytest.approx(np.mean(vals) if vals else 0.0)
        for c in range(3):
            cv = [abs(x) for x, lab in occ.get(tok, []) if lab == c]
            assert s.class_token_mean_abs[c, tok] == pytest.approx(np.mean(cv) if cv else 0.0)
    assert s.token_counts[0] == 0  # padding left out
    m = ids != 0
    np.testing.assert_allclose(s.feature_mean_abs, (np.abs(a) * m).sum(0) / m.sum(0))
    assert s.class_counts.tolist() == [3, 3, 1]
    for c in range(3):
        rows = labels == c
        np.testing.assert_allclose(s.class_total_mean[c], (a * m)[rows].sum(1).mean())
        np.testing.assert_allclose(
            s.class_feature_mean_abs[c],
            (np.abs(a) * m)[rows].sum(0) / np.maximum(m[rows].sum(0), 1))
    d = np.array([0.1, -0.2, 0.0, 0.3, -0.4, 0.05, 0.0])
    assert s.delta["count"] == 7 and s.delta["max_abs"] == pytest.approx(0.4)
    assert s.delta["mean"] == pytest.approx(d.mean())
    assert s.delta["p50_abs"] == pytest.approx(np.median(np.abs(d)))
    assert int(np.sum(s.delta["histogram"])) == 7
    top = s.top_tokens(2)
    best = max(occ, key=lambda t: np.mean(np.abs([x for x, _ in occ[t]])))
    assert top[0][0] == best and len(top) == 2
    assert s.to_dict()["class_counts"] == [3, 3, 1]


def test_planted_word_tops_the_vocabulary_ranking():
    # A linear bag-of-tokens model: token 3 has weight 5, the others 0.1.
    import keras

    inp = keras.Input((6,), dtype="int32")
    emb = keras.layers.Embedding(8, 1, name="emb")
    out = keras.layers.Flatten()(emb(inp))
    model = keras.Model(inp, keras.ops.sum(out, axis=1, keepdims=True))
    table = np.full((8, 1), 0.1, "float32")
    table[3] = 5.0
    table[0] = 0.0
    emb.set_weights([table])
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 8, size=(12, 6)).astype("int32")
    store = attribute_dataset(LayerIntegratedGradients(model, "emb"),
                              tf.data.Dataset.from_tensor_slices(ids).batch(5), target=None,
                              reduce_hidden="sum", baselines=0, n_steps=4, progress=False)
    s = summarize(store, vocab_size=8)
    # the output is the sum of the embedding values (gradient 1), the baseline id 0
    # embeds to 0: IG per occurrence == table[id]
    assert s.top_tokens(1)[0][0] == 3
    # excluded ids are never ranked: without 3 the next are the 0.1-valued ids
    nxt = s.top_tokens(2, exclude_ids=[3])
    assert 3 not in [t for t, _, _ in nxt] and nxt[0][1] == pytest.approx(0.1, rel=1e-4)

    class _Tok:  # a Tokenizer-like vocabulary: its special ids are left out by default
        pad_id, cls_id, sep_id = 0, 3, 7

        def id_to_token(self, i):
            return f"t{i}"

    assert [t for t, _, _ in s.top_tokens(7, vocabulary=_Tok())] and all(
        t not in ("t0", "t3", "t7") for t, _, _ in s.top_tokens(7, vocabulary=_Tok()))
    assert s.top_tokens(1, vocabulary=_Tok(), exclude_ids=())[0][0] == "t3"
    with pytest.raises(ValueError, match="exclude_ids"):
        s.top_tokens(2, exclude_ids=["a"])
    np.testing.assert_allclose(s.token_mean_abs[3], 5.0, rtol=1e-5)
    np.testing.assert_allclose(s.token_mean_abs[[1, 2, 4]], 0.1, rtol=1e-4)
    assert s.delta["max_abs"] < 1e-4


def test_summarize_dense_saliency_per_class():
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, use_bias=False)])
    model.layers[0].set_weights([np.array([[1.0, 0.0], [0.0, -2.0], [0.5, 0.5]])])
    x = np.ones((5, 3), "float32")
    y = np.array([0, 1, 1, 0, 1])
    store = attribute_dataset(Saliency(model), tf.data.Dataset.from_tensor_slices((x, y)).batch(2),
                              progress=False)
    s = summarize(store)
    assert s.token_mean_abs is None
    np.testing.assert_allclose(s.class_feature_mean_abs, [[1.0, 0.0, 0.5], [0.0, 2.0, 0.5]])
    with pytest.raises(ValueError, match="per-token"):
        s.top_tokens()


def test_attention_statistics_dataset_equals_whole_dataset(text_model, token_data):
    ids, y = token_data
    ds = tf.data.Dataset.from_tensor_slices((ids, y)).batch(3)
    stats = attention_statistics_dataset(text_model, ds, special=[0])
    oracle = head_statistics(collect(text_model, ids), mask=ids != 0, special=[0])
    assert stats.layers == oracle.layers
    np.testing.assert_allclose(stats.entropy, oracle.entropy, rtol=1e-5)
    np.testing.assert_allclose(stats.distance, oracle.distance, rtol=1e-5)
    np.testing.assert_allclose(stats.special_share, oracle.special_share, rtol=1e-5)
    unmasked = attention_statistics_dataset(text_model, ds, pad_id=None)
    assert not np.allclose(unmasked.entropy, stats.entropy)  # masking matters
    with pytest.raises(ValueError, match="empty"):
        attention_statistics_dataset(text_model, ds.take(0))


def test_attention_statistics_with_cross_attention_and_padding():
    import keras

    keras.utils.set_random_seed(0)
    ids_in, queries = keras.Input((6,), dtype="int32"), keras.Input((3, 8))
    tokens = keras.layers.Embedding(20, 8)(ids_in)
    h = keras.layers.MultiHeadAttention(2, 4, name="self_mha")(tokens, tokens)
    # 3 queries of another sequence attend to the tokens; 3 heads: NaN-padded rows
    out = keras.layers.MultiHeadAttention(3, 4, name="cross_mha")(queries, h)
    model = keras.Model([ids_in, queries], out)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 20, size=(7, 6)).astype("int32")
    for i, n in enumerate([6, 2, 3, 6, 4, 2, 5]):  # batches with unequal padding
        ids[i, n:] = 0
    xq = rng.normal(size=(7, 3, 8)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices(((ids, xq),)).batch(3)
    stats = attention_statistics_dataset(model, ds, special=[0])
    oracle = head_statistics(collect(model, [ids, xq]), mask=ids != 0, special=[0])
    assert stats.layers == oracle.layers == ["self_mha", "cross_mha"]
    assert np.isnan(oracle.distance[1]).all() and np.isnan(oracle.entropy[0, 2])
    # each layer is averaged over its own queries: all 3 cross-attention queries of
    # every example, but only the real tokens for self-attention
    for key in ("entropy", "distance", "special_share"):
        np.testing.assert_allclose(getattr(stats, key), getattr(oracle, key), rtol=1e-5)
    assert np.isfinite(stats.entropy[1]).all() and np.isfinite(stats.distance[0, :2]).all()
