import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastrace.scale import NeighborIndex, neighbors_for_texts, representation_fn


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
    with pytest.raises(ValueError, match="no layer with that path or name.*layer_or_fn='nope'"):
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


class _Inner(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.proj = keras.layers.Dense(4, name="proj")

    def call(self, x):
        return keras.ops.tanh(self.proj(x))


class _Subclassed(keras.Model):
    """Embedding -> a custom layer holding a Dense -> mean -> head; never functional."""

    def __init__(self):
        super().__init__(name="subclassed")
        self.emb = keras.layers.Embedding(20, 3, name="emb")
        self.inner = _Inner(name="inner")
        self.unused = keras.layers.Dense(2, name="unused")
        self.head = keras.layers.Dense(2, name="head")

    def call(self, ids):
        return self.head(keras.ops.mean(self.inner(self.emb(ids)), axis=1))


def test_representation_fn_on_a_subclassed_model():
    keras.utils.set_random_seed(0)
    model = _Subclassed()
    model.unused.build((None, 4))  # built but never called
    ids = np.array([[1, 5, 7, 0], [3, 0, 0, 0], [0, 0, 9, 2]], "int32")  # 0 is padding
    model(ids)
    proj = np.asarray(model.inner.proj(model.emb(ids)))  # oracle: the sublayers by hand
    hidden = np.tanh(proj)
    m = ids != 0
    np.testing.assert_allclose(representation_fn(model, "inner/proj", position=None)(ids),
                               proj.reshape(3, -1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(representation_fn(model, model.inner, position="mean")(ids),
                               (hidden * m[..., None]).sum(1) / m.sum(1, keepdims=True),
                               rtol=1e-5, atol=1e-6)
    first, last = m.argmax(1), 3 - m[:, ::-1].argmax(1)  # the real tokens at both ends
    np.testing.assert_allclose(representation_fn(model, "inner", position="cls")(ids),
                               hidden[np.arange(3), first], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(representation_fn(model, "inner", position="last")(ids),
                               hidden[np.arange(3), last], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(representation_fn(model, "inner", position=-1)(ids),
                               hidden[:, -1], rtol=1e-5, atol=1e-6)
    # pad_id=None: every position is real
    np.testing.assert_allclose(
        representation_fn(model, "inner", position="mean", pad_id=None)(ids),
        hidden.mean(1), rtol=1e-5, atol=1e-6)
    index = NeighborIndex.build(model, "inner", ids, position="mean")
    np.testing.assert_array_equal(index.query(ids, k=1).indices[:, 0], [0, 1, 2])
    with pytest.raises(ValueError, match="'unused' is not called by the model"):
        representation_fn(model, "unused")(ids)
    with pytest.raises(ValueError, match="position"):
        representation_fn(model, "inner", position="first")
    with pytest.raises(ValueError, match=r"position.*\[-4, 4\)"):
        representation_fn(model, "inner", position=4)(ids)
    with pytest.raises(TypeError, match="needs the Keras model"):
        representation_fn(None, model.inner)
