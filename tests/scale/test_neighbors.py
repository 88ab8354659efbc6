import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastrace.scale import NeighborIndex, neighbors_for_texts


def _brute(emb, q, k, metric):
    if metric == "cosine":
        e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        qq = q / np.linalg.norm(q, axis=1, keepdims=True)
        sim = qq.astype(np.float64) @ e.T.astype(np.float64)
    else:
        sim = -np.sqrt(((q[:, None, :].astype(np.float64) - emb[None]) ** 2).sum(-1))
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sim, order, axis=1)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_exact_search_matches_brute_force(metric, tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(300, 6)).astype("float32")
    y = rng.integers(0, 3, size=300)
    q = rng.normal(size=(17, 6)).astype("float32")
    index = NeighborIndex.build(None, lambda x: x * 1.0, emb, y, metric=metric, batch_size=64)
    res = index.query(q, k=5, batch_size=4)
    want_idx, want_sim = _brute(emb, q, 5, metric)
    np.testing.assert_array_equal(res.indices, want_idx)
    np.testing.assert_allclose(res.similarities, want_sim, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(res.labels, y[want_idx])
    path = tmp_path / "index.npz"
    index.save(path)
    loaded = NeighborIndex.load(path)
    assert loaded.metric == metric and len(loaded) == 300
    with pytest.raises(ValueError, match="attach"):
        loaded.query(q)
    again = loaded.query_embeddings(q, k=5)
    np.testing.assert_array_equal(again.indices, want_idx)


def test_build_from_cls_of_last_block(text_model, token_data):
    ids, y = token_data
    ds = tf.data.Dataset.from_tensor_slices((ids, y)).batch(4)
    index = NeighborIndex.build(text_model, "block_1", ds, metric="cosine")
    sub = keras.Model(text_model.inputs[0], text_model.get_layer("block_1").output[0])
    cls = np.asarray(sub(ids))[:, 0, :]
    np.testing.assert_allclose(index.embeddings, cls, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(index.labels, y)
    res = index.query(ids[:3], k=2)
    np.testing.assert_array_equal(res.indices[:, 0], [0, 1, 2])  # itself first
    np.testing.assert_allclose(res.similarities[:, 0], 1.0, atol=1e-5)
    mean = NeighborIndex.build(text_model, "block_1", ids, y, position="mean")
    m = (ids != 0)[..., None]
    full = np.asarray(sub(ids))
    np.testing.assert_allclose(mean.embeddings, (full * m).sum(1) / m.sum(1), rtol=1e-4,
                               atol=1e-5)


def test_bad_arguments(text_model, token_data):
    ids, y = token_data
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        NeighborIndex.build(text_model, "nope", ids)
    with pytest.raises(ValueError, match="metric"):
        NeighborIndex.build(text_model, "block_1", ids, metric="dot")
    index = NeighborIndex(np.eye(3), labels=[0, 1, 2])
    with pytest.raises(ValueError, match="at most the index size 3"):
        index.query_embeddings(np.eye(3), k=4)
    with pytest.raises(ValueError, match="empty"):
        NeighborIndex.build(None, lambda x: x, np.zeros((0, 3)))


class _WordTokenizer:
    """A whitespace tokenizer with the `tokenize(texts).ids` interface."""

    def __init__(self, words, length=8):
        self.vocab = {w: i + 2 for i, w in enumerate(words)}
        self.length = length

    def tokenize(self, texts):
        ids = np.zeros((len(texts), self.length), "int32")
        for i, t in enumerate(texts):
            toks = [1] + [self.vocab.get(w, 0) for w in t.split()][: self.length - 1]
            ids[i, : len(toks)] = toks
        return type("Tok", (), {"ids": ids})()


def test_neighbors_for_texts(text_model):
    words = "good bad movie plot great awful the was".split()
    tok = _WordTokenizer(words)
    train = ["the movie was good", "the plot was awful", "great movie", "bad plot"]
    out = neighbors_for_texts(text_model, tok, train, [1, 0, 1, 0],
                              ["the plot was awful", "great movie"], k=2)
    assert [r["query"] for r in out] == ["the plot was awful", "great movie"]
    assert out[0]["neighbors"][0]["index"] == 1 and out[0]["neighbors"][0]["label"] == 0
    assert out[0]["neighbors"][0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert out[1]["neighbors"][0]["text"] == "great movie"
    assert [n["rank"] for n in out[1]["neighbors"]] == [1, 2]
