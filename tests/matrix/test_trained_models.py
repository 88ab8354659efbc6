"""Briefly trained models of the matrix: the planted word is found, probabilities are right."""

import keras
import numpy as np
import pytest

from kerastrace import explain, text
from kerastrace.testing import model_zoo as zoo
from kerastrace.testing.data import make_sentiment_corpus

T = 16


@pytest.fixture(scope="module")
def corpus():
    train = make_sentiment_corpus(1200, seed=0, min_words=4, max_words=9)
    test = make_sentiment_corpus(60, seed=1, min_words=4, max_words=9)
    vocab = text.build_vocabulary(train.sentences, vocab_size=200, min_count=1)
    tok = text.Tokenizer(vocab, sequence_length=T)
    return train, test, vocab, tok


def _planted_top1(explanations, test):
    hits = []
    for e, planted in zip(explanations, test.planted):
        scores = [w.score for w in e.words]
        hits.append(int(np.argmax(np.abs(scores))) == planted)
    return float(np.mean(hits))


@pytest.fixture(scope="module")
def keras_io_trained(corpus):
    train, _, vocab, tok = corpus
    model = zoo.keras_io_text_classifier(vocab_size=len(vocab), maxlen=T, embed_dim=32)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    ids = tok.tokenize(train.sentences).ids
    model.fit(ids, train.labels, epochs=6, batch_size=32, verbose=0)
    return model


def test_keras_io_classifier_planted_word_and_probabilities(corpus, keras_io_trained):
    _, test, _, tok = corpus
    model = keras_io_trained
    ids = tok.tokenize(test.sentences).ids
    probs = model.predict(ids, verbose=0)
    assert (probs.argmax(-1) == test.labels).mean() >= 0.95
    exps = explain.explain_text(model, tok, test.sentences, method="integrated_gradients",
                                n_steps=48)
    # The model ends in a softmax: its outputs are reported as they are, not re-softmaxed.
    np.testing.assert_allclose(np.stack([e.probabilities for e in exps]), probs, atol=1e-6)
    assert _planted_top1(exps, test) >= 0.9
    # Special tokens keep their ids in the baseline and are left out of rankings.
    assert all(not e.special[i] for e in exps for i, _, _ in e.top_tokens(3))
    occl = explain.explain_text(model, tok, test.sentences[:20], method="occlusion")
    assert _planted_top1(occl, _Head(test, 20)) >= 0.9


class _Head:
    """The first `n` examples of a corpus (planted positions only)."""

    def __init__(self, corpus, n):
        self.planted = corpus.planted[:n]


def test_keras_hub_bert_planted_word(corpus):
    train, test, vocab, tok = corpus
    model = zoo.hub_bert_classifier(vocabulary_size=len(vocab), num_classes=2, hidden_dim=32,
                                    max_sequence_length=T)
    model.compile(keras.optimizers.Adam(2e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    tr = tok.tokenize(train.sentences)
    model.fit(explain.model_inputs(model, tr.ids, tr.mask), train.labels, epochs=8,
              batch_size=32, verbose=0)
    te = tok.tokenize(test.sentences)
    logits = model.predict(explain.model_inputs(model, te.ids, te.mask), verbose=0)
    assert (logits.argmax(-1) == test.labels).mean() >= 0.95
    exps = explain.explain_text(model, tok, test.sentences, n_steps=128)
    # This model learns "negative unless a positive word": for many negative sentences
    # the all-[PAD] baseline gives the same logits, so IG rightly gives every word 0.
    # The planted word must win wherever the words change the output.
    f_diff = np.array([sum(w.score for w in e.words) - e.delta for e in exps])
    decided = np.abs(f_diff) > 1.0
    assert decided.mean() >= 0.4
    hits = [np.argmax(np.abs([w.score for w in e.words])) == p
            for e, p, d in zip(exps, test.planted, decided) if d]
    assert np.mean(hits) >= 0.9
