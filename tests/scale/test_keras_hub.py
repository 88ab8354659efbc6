"""The scale tools on a keras-hub text classifier: dict inputs, nested backbone layers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastrace.attention import collect, head_statistics
from kerastrace.attribution import LayerGradientXActivation, LayerIntegratedGradients
from kerastrace.scale import (
    AttributionStore,
    NeighborIndex,
    attention_statistics_dataset,
    attribute_dataset,
    neighbors_for_texts,
    summarize,
)

from .conftest import Counting

keras_hub = pytest.importorskip("keras_hub")

N, T, VOCAB, CLASSES = 10, 8, 50, 3
EMBEDDING = "bert_backbone/token_embedding"


@pytest.fixture(scope="module")
def bert():
    keras.utils.set_random_seed(3)
    backbone = keras_hub.models.BertBackbone(
        name="bert_backbone",
        vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=12,
    )  # fmt: skip
    model = keras_hub.models.BertTextClassifier(backbone, num_classes=CLASSES,
                                               preprocessor=None)
    # keras-hub initializes the head with stddev 0.02: scale it so that the logits
    # move by O(1) between an input and the baseline (completeness is then a real test)
    head = model.get_layer("logits")
    head.set_weights([w * 1000.0 for w in head.get_weights()])
    return model


@pytest.fixture(scope="module")
def data():
    """Right-padded dict inputs (pad id 0, [CLS] id 1) and labels."""
    rng = np.random.default_rng(5)
    lengths = rng.integers(3, T + 1, size=N)
    ids = np.zeros((N, T), "int32")
    for i, n in enumerate(lengths):
        ids[i, 0] = 1
        ids[i, 1:n] = rng.integers(2, VOCAB, size=n - 1)
    x = {
        "token_ids": ids,
        "padding_mask": (ids != 0).astype("int32"),
        "segment_ids": np.zeros((N, T), "int32"),
    }
    y = rng.integers(0, CLASSES, size=N).astype("int32")
    return x, y


def _rows(x, lo, hi):
    return {k: a[lo:hi] for k, a in x.items()}


def _ds(x, y=None, batch=4):
    return tf.data.Dataset.from_tensor_slices(x if y is None else (x, y)).batch(batch)


def test_dict_dataset_complete_and_equal_to_direct_calls(bert, data):
    x, y = data
    lig = LayerIntegratedGradients(bert, EMBEDDING)
    kw = dict(n_steps=64, baselines=0)
    store = attribute_dataset(lig, _ds(x, y), reduce_hidden="sum", progress=False, **kw)
    np.testing.assert_array_equal(store.inputs, x["token_ids"])  # keep_inputs: the token ids
    np.testing.assert_array_equal(store.labels, y)
    np.testing.assert_array_equal(store.targets, y)
    # the same as calling the method on each batch of the dataset
    for lo in range(0, N, 4):
        attr, delta = lig.attribute(_rows(x, lo, lo + 4), target=y[lo : lo + 4],
                                    return_convergence_delta=True, **kw)
        np.testing.assert_allclose(store.attributions[lo : lo + 4], attr.sum(-1), rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(store.delta[lo : lo + 4], delta, rtol=1e-5, atol=1e-6)
    # completeness against the model itself: the baseline is token id 0 everywhere,
    # with the same padding mask and segments
    f_x = np.asarray(bert.predict(x, verbose=0))[np.arange(N), y]
    f_b = np.asarray(bert.predict(dict(x, token_ids=np.zeros_like(x["token_ids"])),
                                  verbose=0))[np.arange(N), y]
    change = f_x - f_b
    tol = 1e-2 * np.maximum(1.0, np.abs(change))
    assert np.all(np.abs(store.delta) < tol), (store.delta, change)
    assert np.all(np.abs(store.attributions.sum(1) - change) < tol)
    assert np.abs(change).max() > 0.1  # the test would not be vacuous
    # per-token aggregates see the token ids: padding (id 0) is left out
    summary = summarize(store, vocab_size=VOCAB)
    assert summary.token_counts.sum() == x["padding_mask"].sum()
    assert summary.token_counts[0] == 0


def test_resume_after_interruption_equals_uninterrupted(bert, data, tmp_path):
    x, y = data
    lig = LayerIntegratedGradients(bert, EMBEDDING)
    kw = dict(n_steps=8, baselines=0, reduce_hidden="sum", shard_size=3, progress=False)
    full = attribute_dataset(lig, _ds(x, y), **kw)

    def stop(k, store):
        if k == 1:
            raise RuntimeError("interrupted")

    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="interrupted"):
        attribute_dataset(Counting(lig), _ds(x, y), output_dir=out, on_shard=stop, **kw)
    assert len(AttributionStore.open(out)) == 6 and not AttributionStore.open(out).complete
    method = Counting(lig)
    resumed = attribute_dataset(method, _ds(x, y), output_dir=out, **kw)
    assert method.calls == [2, 2]  # examples 0..5 are not recomputed
    assert resumed.complete and resumed.num_shards == 4
    again = AttributionStore.open(out).load()
    for key, value in full.load().items():
        np.testing.assert_array_equal(again[key], value, err_msg=key)


def test_per_position_labels_are_refused_predicted_works(bert, data):
    x, _ = data
    method = LayerGradientXActivation(bert, EMBEDDING)
    seq_labels = (x["token_ids"] % CLASSES).astype("int32")  # (B, T) per-token labels
    with pytest.raises(ValueError, match=r"shape \(4, 8\).*per-position.*target='predicted'"):
        attribute_dataset(method, _ds(x, seq_labels), progress=False)
    store = attribute_dataset(method, _ds(x, seq_labels), target="predicted",
                              reduce_hidden="sum", progress=False)
    pred = np.argmax(bert.predict(x, verbose=0), axis=1)
    np.testing.assert_array_equal(store.targets, pred)
    np.testing.assert_array_equal(store.labels, seq_labels)
    # the per-token labels are not mistaken for classes: grouping uses the targets
    summary = summarize(store, vocab_size=VOCAB, num_classes=CLASSES)
    np.testing.assert_array_equal(summary.class_counts, np.bincount(pred, minlength=CLASSES))
    # features-only dict datasets (keras-hub style elements)
    alone = attribute_dataset(method, _ds(x), target="predicted", reduce_hidden="sum",
                              progress=False)
    np.testing.assert_array_equal(alone.targets, pred)
    np.testing.assert_allclose(alone.attributions, store.attributions, rtol=1e-6)


def test_dict_keys_are_checked(bert, data):
    x, y = data
    method = LayerGradientXActivation(bert, EMBEDDING)
    short = {k: a for k, a in x.items() if k != "segment_ids"}
    with pytest.raises(ValueError, match=r"missing key\(s\) \['segment_ids'\]"):
        attribute_dataset(method, _ds(short, y), progress=False)
    with pytest.raises(ValueError, match=r"unexpected key\(s\) \['label'\]"):
        attribute_dataset(method, _ds(dict(x, label=y)), progress=False)
    with pytest.raises(ValueError, match="takes a dict of inputs"):
        attribute_dataset(method, _ds(x["token_ids"], y), progress=False)
    with pytest.raises(ValueError, match="'token_ids' has shape.*unbatched"):
        attribute_dataset(method, tf.data.Dataset.from_tensor_slices((x, y)), progress=False)


def test_neighbor_index_on_a_nested_backbone_layer(bert, data):
    x, y = data
    layer = "bert_backbone/transformer_layer_1"
    index = NeighborIndex.build(bert, layer, _ds(x, y), position="cls")
    sequence = np.asarray(bert.backbone(x)["sequence_output"])  # the last layer's output
    np.testing.assert_allclose(index.embeddings, sequence[:, 0], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(index.labels, y)
    res = index.query(_rows(x, 0, N), k=2)
    np.testing.assert_array_equal(res.indices[:, 0], np.arange(N))  # itself first
    np.testing.assert_allclose(res.similarities[:, 0], 1.0, atol=1e-5)
    np.testing.assert_array_equal(res.labels[:, 0], y)
    # dict arrays, the layer object, mean and last real token (from the padding mask)
    m = x["padding_mask"].astype(bool)
    mean = NeighborIndex.build(bert, bert.backbone.transformer_layers[1], x, y,
                               position="mean", batch_size=3)
    np.testing.assert_allclose(mean.embeddings,
                               (sequence * m[..., None]).sum(1) / m.sum(1, keepdims=True),
                               rtol=1e-4, atol=1e-5)
    last = NeighborIndex.build(bert, layer, x, position="last")
    np.testing.assert_allclose(last.embeddings, sequence[np.arange(N), m.sum(1) - 1],
                               rtol=1e-4, atol=1e-5)


def test_neighbors_for_texts_on_a_keras_hub_model(bert):
    from .test_neighbors import _WordTokenizer

    tok = _WordTokenizer("good bad movie plot great awful the was".split())
    train = ["the movie was good", "the plot was awful", "great movie", "bad plot"]
    out = neighbors_for_texts(bert, tok, train, [1, 0, 1, 0], ["great movie"], k=2)
    first = out[0]["neighbors"][0]
    assert first["index"] == 2 and first["similarity"] == pytest.approx(1.0, abs=1e-5)


def test_attention_statistics_use_the_padding_mask(bert, data):
    x, y = data
    stats = attention_statistics_dataset(bert, _ds(x, y, batch=3), special=[0])
    maps = collect(bert, x)
    oracle = head_statistics(maps, mask=x["padding_mask"].astype(bool), special=[0])
    assert stats.layers == oracle.layers and len(stats.layers) == 2
    np.testing.assert_allclose(stats.entropy, oracle.entropy, rtol=1e-5)
    np.testing.assert_allclose(stats.distance, oracle.distance, rtol=1e-5)
    np.testing.assert_allclose(stats.special_share, oracle.special_share, rtol=1e-5)
    unmasked = head_statistics(maps, special=[0])
    assert not np.allclose(unmasked.entropy, stats.entropy)  # the mask was applied
