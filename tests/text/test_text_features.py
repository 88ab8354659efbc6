"""Word / span feature masks for the perturbation methods (kerastrace.text.features)."""

import warnings

import numpy as np
import pytest

from kerastrace.text import Tokenizer, word_feature_mask

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##believ", "##able", "film", "great",
         "!", "not", "bad", ",", "it", "was"]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(VOCAB, sequence_length=10)


def test_word_pieces_share_their_words_id(tok):
    t = tok.tokenize(["Unbelievable film!", "great"])
    assert t.tokens[0][:6] == ["[CLS]", "un", "##believ", "##able", "film", "!"]
    mask = word_feature_mask(t)
    assert mask.dtype == np.int32 and mask.shape == (2, 10)
    assert mask[0].tolist() == [-1, 0, 0, 0, 1, 2, -1, -1, -1, -1]
    assert mask[1].tolist() == [-1, 0, -1, -1, -1, -1, -1, -1, -1, -1]
    # feature k is the k-th word of the user's text
    assert t.words[0] == ["Unbelievable", "film", "!"]
    # the special tokens and padding are never perturbed
    assert np.all(mask[~t.token_mask] == -1)


def test_truncation_keeps_ids_without_gaps(tok):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        t = tok.tokenize("it was not bad , it was great film !")
    mask = word_feature_mask(t)
    ids = mask[0][mask[0] >= 0]
    assert ids.tolist() == list(range(8))  # 8 pieces fit; the cut words have no feature


def test_spans_group_tokens(tok):
    text = "it was not bad, great film"
    t = tok.tokenize(text)
    spans = [(0, 6), (7, 15), (16, 26)]  # "it was", "not bad,", "great film"
    assert [text[s:e] for s, e in spans] == ["it was", "not bad,", "great film"]
    mask = word_feature_mask(t, spans=spans)
    real = t.token_mask[0]
    assert mask[0][real].tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert np.all(mask[0][~real] == -1)
    # a span list per example; tokens outside every span are kept (-1)
    two = tok.tokenize([text, "great film"])
    m2 = word_feature_mask(two, spans=[[(7, 14)], [(6, 10), (0, 5)]])
    assert m2[0][two.token_mask[0]].tolist() == [-1, -1, 0, 0, -1, -1, -1]
    assert m2[1][two.token_mask[1]].tolist() == [1, 0]


def test_span_errors(tok):
    t = tok.tokenize("great film")
    with pytest.raises(ValueError, match="`spans`.*cover at least one token.*\\(5, 6\\)"):
        word_feature_mask(t, spans=[(0, 5), (5, 6)])  # the space between the words
    with pytest.raises(ValueError, match="`spans`.*0 <= start < end <= 10"):
        word_feature_mask(t, spans=[(0, 11)])
    with pytest.raises(ValueError, match="`spans`.*integers"):
        word_feature_mask(t, spans=[("a", "b")])
    with pytest.raises(ValueError, match="`spans`.*one list of .* per example \\(2\\)"):
        word_feature_mask(tok.tokenize(["a", "b"]), spans=[[(0, 1)]])
    with pytest.raises(TypeError, match="`tokenized`"):
        word_feature_mask(t.ids)
