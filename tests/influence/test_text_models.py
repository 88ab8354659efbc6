"""TracIn on token-id text models: keras-hub dict inputs, texts, and finding flipped labels."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastrace import text
from kerastrace.influence import CheckpointRecorder, TracIn, influence_for_texts
from kerastrace.testing.data import make_sentiment_corpus
from kerastrace.testing.reference_models import build_text_classifier

from .conftest import loop_gradients

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)


def _bert(seed=0):
    import keras_hub

    keras.utils.set_random_seed(seed)
    bb = keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=12, name="bert_backbone",
    )
    clf = keras_hub.models.BertTextClassifier(bb, num_classes=3, preprocessor=None)
    clf.compile(optimizer=keras.optimizers.Adam(0.01),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return clf


def _bert_inputs(n, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 50, size=(n, 8)).astype("int32")
    mask = np.ones((n, 8), bool)
    mask[:, 6:] = False
    ids[~mask] = 0
    return {"token_ids": ids, "padding_mask": mask, "segment_ids": np.zeros((n, 8), "int32")}


def test_keras_hub_dict_inputs_match_the_per_example_loop(tmp_path):
    clf = _bert()
    x, y = _bert_inputs(6, 0), np.arange(6) % 3
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):  # two "training" checkpoints: the weights moved by some noise
        clf.set_weights([w + 0.05 * rng.normal(size=w.shape) for w in clf.get_weights()])
        paths.append(str(tmp_path / f"c{i}.weights.h5"))
        clf.save_weights(paths[-1])
    tracin = TracIn(clf, paths, learning_rates=[0.1, 0.05], batch_size=3)
    assert tracin.layers == ["logits"] and tracin.gradient_method == "dense"
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(3)
    tracin.build_index(ds)
    test, y_test = _bert_inputs(3, 1), np.array([0, 2, 1])  # batches of 3: one trace
    scores = tracin.influence(test, y_test)
    # oracle: a second classifier loaded with each checkpoint, one tape per example
    oracle = _bert(seed=1)
    want = 0.0
    for c in tracin.checkpoints:
        oracle.load_weights(c.path)
        w = oracle.get_layer("logits").trainable_weights
        g_train = loop_gradients(oracle, w, SCCE, x, y)
        g_test = loop_gradients(oracle, w, SCCE, test, y_test)
        want = want + c.learning_rate * g_test @ g_train.T
    np.testing.assert_allclose(scores, want, rtol=1e-3, atol=1e-7)
    vec = TracIn(clf, paths, learning_rates=[0.1, 0.05], gradient_method="vectorized",
                 layers="pooled_dense")
    grads, _ = vec.gradients(test, y_test)
    w = oracle.get_layer("bert_backbone").get_layer("pooled_dense").trainable_weights
    np.testing.assert_allclose(grads[-1], loop_gradients(oracle, w, SCCE, test, y_test),
                               rtol=1e-3, atol=1e-6)


def _corpus(n, negation_rate, seed=0):
    corpus = make_sentiment_corpus(n, seed=seed, negation_rate=negation_rate)
    vocab = text.build_vocabulary(corpus.sentences, vocab_size=200, min_count=1)
    tokenizer = text.Tokenizer(vocab, sequence_length=16)
    flipped = np.random.default_rng(seed).choice(n, n // 10, replace=False)
    labels = corpus.labels.copy()
    labels[flipped] = 1 - labels[flipped]
    return corpus, vocab, tokenizer, labels, flipped


def _flipped_label_recall(model, ids, labels, flipped, epochs, lr, ckpt_dir):
    model.compile(keras.optimizers.Adam(lr),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(ids, labels, epochs=epochs, batch_size=32, verbose=0,
              callbacks=[CheckpointRecorder(ckpt_dir)])
    tracin = TracIn(model, ckpt_dir)
    tracin.build_index(ids, labels)
    s = tracin.self_influence()
    return s.recall(flipped, 0.2), s.recall(flipped, 0.2, by="loss")


def _report(record_property, name, ours, loss):
    record_property(f"{name}_self_influence_recall_at_20", ours)
    record_property(f"{name}_final_loss_recall_at_20", loss)
    print(f"\n{name}: flipped labels in the top 20%: self-influence {ours:.3f}, "
          f"final loss {loss:.3f} (random 0.200)")


def test_self_influence_finds_flipped_labels_fast(tmp_path, record_property):
    # the demo corpus (negations included), 10% of the labels flipped; a small
    # bag-of-embeddings classifier trained until it starts fitting the flipped ones
    corpus, vocab, tokenizer, labels, flipped = _corpus(300, 0.2)
    ids = tokenizer.tokenize(corpus.sentences).ids
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((16,), dtype="int32"), keras.layers.Embedding(len(vocab), 16, mask_zero=True),
        keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(2),
    ])  # fmt: skip
    ours, loss = _flipped_label_recall(model, ids, labels, flipped, 30, 1e-2, tmp_path)
    _report(record_property, "bag_of_embeddings", ours, loss)
    assert ours >= 0.7
    assert ours > loss


@pytest.mark.slow
def test_self_influence_finds_flipped_labels_demo_model(tmp_path, record_property):
    # the demo's own transformer classifier on 1000 demo sentences
    corpus, vocab, tokenizer, labels, flipped = _corpus(1000, 0.2)
    ids = tokenizer.tokenize(corpus.sentences).ids
    keras.utils.set_random_seed(0)
    model = build_text_classifier(len(vocab), 16, dim=32, num_heads=2, ff_dim=64, num_layers=2)
    ours, loss = _flipped_label_recall(model, ids, labels, flipped, 15, 5e-3, tmp_path)
    _report(record_property, "demo_transformer", ours, loss)
    assert ours >= 0.7
    assert ours > loss


def test_influence_for_texts_ranks_training_sentences(tmp_path):
    corpus, vocab, tokenizer, labels, _ = _corpus(60, 0.0, seed=3)
    ids = tokenizer.tokenize(corpus.sentences).ids
    keras.utils.set_random_seed(0)
    model = build_text_classifier(len(vocab), 16, dim=8, num_heads=2, ff_dim=8, num_layers=1)
    model.compile(keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(ids, labels, epochs=2, batch_size=16, verbose=0,
              callbacks=[CheckpointRecorder(tmp_path / "ckpt")])
    queries = ["the film was superb", "a dreadful plot"]
    out = influence_for_texts(model, tokenizer, corpus.sentences, labels, queries,
                              tmp_path / "ckpt", k=3, index_dir=tmp_path / "index")
    tracin = TracIn(model, tmp_path / "ckpt")
    tracin.load_index(tmp_path / "index")  # the index was kept and is reusable
    q_ids = tokenizer.tokenize(queries).ids
    scores = tracin.influence(q_ids)
    predicted = np.argmax(model.predict(q_ids, verbose=0), axis=1)
    for q, r in enumerate(out):
        assert r["query"] == queries[q] and r["predicted"] == predicted[q]
        assert [p["index"] for p in r["proponents"]] == np.argsort(-scores[q])[:3].tolist()
        assert [p["index"] for p in r["opponents"]] == np.argsort(scores[q])[:3].tolist()
        for p in r["proponents"] + r["opponents"]:
            assert p["text"] == corpus.sentences[p["index"]]
            assert p["label"] == labels[p["index"]]
        np.testing.assert_allclose([p["score"] for p in r["proponents"]],
                                   np.sort(scores[q])[::-1][:3], rtol=1e-6)
    with pytest.raises(ValueError, match="argument `train_labels`"):
        influence_for_texts(model, tokenizer, corpus.sentences, labels[:5], queries,
                            tmp_path / "ckpt")
    with pytest.raises(ValueError, match="argument `train_texts`: it is empty"):
        influence_for_texts(model, tokenizer, [], [], queries, tmp_path / "ckpt")
