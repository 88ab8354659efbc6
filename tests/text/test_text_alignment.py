"""Subword -> word / span / character aggregation (kerastrace.text.alignment)."""

import numpy as np
import pytest
import tensorflow as tf

from kerastrace.text import (
    Tokenizer,
    WordScore,
    aggregate_to_characters,
    aggregate_to_spans,
    aggregate_to_words,
    build_vocabulary,
)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TEXTS = [
    "The unbelievable movie wasn't bad!",
    "Crème brûlée à Noël 😀 我喜欢",
    "",
    "Straße ﬁne",
    "zzzz qqqq unknownish words everywhere and more of them " * 3,
]


@pytest.fixture(scope="module")
def tok():
    corpus = [
        "the believable movie was not bad",
        "cream brulee at christmas",
        "un ##believ",
        "i like it 😀 我喜欢",
        "strasse fine words everywhere and more of them",
    ] * 3
    vocab = build_vocabulary(corpus, vocab_size=120, min_count=1)
    return Tokenizer(vocab, sequence_length=32)


@pytest.fixture(scope="module")
def batch(tok):
    with pytest.warns(UserWarning, match="truncated"):
        return tok.tokenize(TEXTS)


def test_hand_derived_word_scores():
    vocab = SPECIALS + ["un", "##seen", "##s", "film", "!"]
    t = Tokenizer(vocab, sequence_length=8).tokenize("Unseens film!")
    assert t.tokens[0] == ["[CLS]", "un", "##seen", "##s", "film", "!", "[SEP]", "[PAD]"]
    scores = np.array([100.0, 1.0, -4.0, 2.5, 3.0, -1.0, 100.0, 100.0])
    words = aggregate_to_words(scores, t, reduce="sum")
    assert words == [
        WordScore("Unseens", (0, 7), -0.5),
        WordScore("film", (8, 12), 3.0),
        WordScore("!", (12, 13), -1.0),
    ]
    word, (start, end), score = words[0]  # plain tuples
    assert t.texts[0][start:end] == word
    assert [w.score for w in aggregate_to_words(scores, t, reduce="mean")] == [-0.5 / 3, 3.0, -1.0]
    assert [w.score for w in aggregate_to_words(scores, t, reduce="max")] == [2.5, 3.0, -1.0]
    # Whitespace spans: "film!" is one unit.
    spans = aggregate_to_spans(scores, t)
    assert [(w.word, w.span, w.score) for w in spans] == [
        ("Unseens", (0, 7), -0.5),
        ("film!", (8, 13), 2.0),
    ]
    chars = aggregate_to_characters(scores, t)
    expected = [0.5, 0.5] + [-1.0] * 4 + [2.5, 0.0] + [0.75] * 4 + [-1.0]
    np.testing.assert_allclose(chars, expected)


def test_token_split_across_custom_spans():
    vocab = SPECIALS + ["abcd"]
    t = Tokenizer(vocab, sequence_length=3).tokenize("abcd")
    scores = [0.0, 4.0, 0.0]
    out = aggregate_to_spans(scores, t, spans=[(0, 1), (1, 4), (2, 2)])
    assert [(w.word, w.score) for w in out] == [("a", 1.0), ("bcd", 3.0), ("", 0.0)]
    out = aggregate_to_spans(scores, t, spans=[(0, 1), (1, 4)], reduce="max")
    assert [w.score for w in out] == [4.0, 4.0]


@pytest.mark.parametrize("seed", [0, 1])
def test_sums_preserved(batch, seed):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=batch.ids.shape)
    expected = (scores * batch.token_mask).sum(axis=1)
    words = aggregate_to_words(scores, batch)
    spans = aggregate_to_spans(scores, batch)
    chars = aggregate_to_characters(scores, batch)
    assert len(words) == len(spans) == len(chars) == len(TEXTS)
    for b in range(len(TEXTS)):
        np.testing.assert_allclose(sum(w.score for w in words[b]), expected[b], atol=1e-9)
        np.testing.assert_allclose(sum(w.score for w in spans[b]), expected[b], atol=1e-9)
        np.testing.assert_allclose(chars[b].sum(), expected[b], atol=1e-9)
        assert chars[b].shape == (len(TEXTS[b]),)
        for w in words[b] + spans[b]:
            assert TEXTS[b][w.span[0] : w.span[1]] == w.word


def test_mean_and_max_against_loops(batch):
    rng = np.random.default_rng(3)
    scores = rng.normal(size=batch.ids.shape)
    for reduce, fn in (("mean", np.mean), ("max", np.max), ("sum", np.sum)):
        got = aggregate_to_words(scores, batch, reduce=reduce)
        for b in range(len(TEXTS)):
            groups = {}
            for k, w in enumerate(batch.word_ids[b]):
                if w >= 0:
                    groups.setdefault(int(w), []).append(scores[b, k])
            assert [w.word for w in got[b]] == [batch.words[b][w] for w in sorted(groups)]
            np.testing.assert_allclose(
                [w.score for w in got[b]], [fn(groups[w]) for w in sorted(groups)]
            )


def test_truncated_words_left_out(batch):
    b = 4
    assert batch.truncated[b]
    words = aggregate_to_words(np.ones(batch.ids.shape), batch)[b]
    assert len(words) == batch.word_ids[b].max() + 1 < len(batch.words[b])
    assert sum(w.score for w in words) == 30  # 32 - [CLS] - [SEP]


def test_empty_string(batch):
    scores = np.ones(batch.ids.shape)
    assert aggregate_to_words(scores, batch)[2] == []
    assert aggregate_to_spans(scores, batch)[2] == []
    assert aggregate_to_characters(scores, batch)[2].shape == (0,)


def test_unicode_words(batch):
    scores = np.arange(batch.ids.size, dtype=float).reshape(batch.ids.shape)
    words = [w.word for w in aggregate_to_words(scores, batch)[1]]
    assert words == ["Crème", "brûlée", "à", "Noël", "😀", "我", "喜", "欢"]
    words = [w.word for w in aggregate_to_words(scores, batch)[3]]
    assert words == ["Straße", "ﬁne"]


def test_one_dimensional_scores_and_tensors(batch):
    rng = np.random.default_rng(5)
    scores = rng.normal(size=batch.ids.shape).astype(np.float32)
    full = aggregate_to_words(scores, batch)
    # An attention row / rollout vector for one example, given as a tensor.
    assert aggregate_to_words(tf.constant(scores[1]), batch, index=1) == full[1]
    assert aggregate_to_spans(scores[0], batch, index=0) == aggregate_to_spans(scores, batch)[0]
    np.testing.assert_array_equal(
        aggregate_to_characters(scores[3], batch, index=3),
        aggregate_to_characters(scores, batch)[3],
    )


def test_invalid_arguments(batch):
    scores = np.zeros(batch.ids.shape)
    with pytest.raises(ValueError, match=r"Received: reduce='median'"):
        aggregate_to_words(scores, batch, reduce="median")
    with pytest.raises(ValueError, match=r"shape \(5, 31\)"):
        aggregate_to_words(scores[:, :-1], batch)
    with pytest.raises(ValueError, match=r"scores.sum\(axis=-1\)"):
        aggregate_to_words(np.zeros(batch.ids.shape + (4,)), batch)
    with pytest.raises(ValueError, match="`index`"):
        aggregate_to_words(scores[0], batch)
    with pytest.raises(ValueError, match="`index`"):
        aggregate_to_words(scores[0], batch, index=9)
    with pytest.raises(TypeError, match="`tokenized`"):
        aggregate_to_words(scores, batch.ids)
    with pytest.raises(ValueError, match="`spans`"):
        aggregate_to_spans(scores[0], batch, spans=[(0, 99)], index=0)
    with pytest.raises(ValueError, match="`spans`"):
        aggregate_to_spans(scores, batch, spans=[[(0, 1)]])
