"""Tokenizer: ids, character offsets, words, truncation, Unicode, tf.data path."""

import unicodedata
import warnings

import numpy as np
import pytest
import tensorflow as tf

from kerastrace._utils.text_pretokenize import byte_to_char_maps
from kerastrace.text import Tokenizer, build_vocabulary

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

CORPUS = [
    "The movie was great!",
    "The plot was terrible, the actors were not.",
    "Crème brûlée à Noël, naïve café.",
    "ÉCOLE Über Ångström",
    "我喜欢这部电影。",
    "I love it 😀👍 🎉 really",
    "Straße ﬁne İstanbul",
    "don't stop (ever)",
] * 4

PROBES = [
    "The movie was great!",  # ASCII
    "Crème brûlée à Noël, naïve café.",  # accents (precomposed)
    "Cre\u0300me bru\u0302le\u0301e",  # accents (combining marks)
    "ÉCOLE Über Ångström",  # upper case + accents
    "我喜欢这部电影。",  # CJK + CJK punctuation
    "I love it 😀👍 🎉 really",  # emoji (4-byte UTF-8)
    "Straße ﬁne İstanbul",  # normalization changes length
    "  leading and   trailing  ",
    "unknownword ☃ zzz",  # out-of-vocabulary pieces
    "",
]


def norm(s):
    """Independent oracle of BERT lower-casing: casefold, NFD, drop combining marks."""
    s = unicodedata.normalize("NFD", s.casefold())
    return "".join(c for c in s if unicodedata.category(c) != "Mn")


@pytest.fixture(scope="module")
def vocab():
    return build_vocabulary(CORPUS, vocab_size=400, min_count=2)


@pytest.fixture(scope="module")
def tok(vocab):
    return Tokenizer(vocab, sequence_length=24)


def test_byte_to_char_maps_hand_derived():
    # "aé😀": bytes a | c3 a9 | f0 9f 98 80 -> 7 bytes, 3 chars.
    floor, ceil = byte_to_char_maps("aé😀")
    assert floor.tolist() == [0, 1, 1, 2, 2, 2, 2, 3]
    assert ceil.tolist() == [0, 1, 2, 2, 3, 3, 3, 3]


def test_hand_checked_example():
    vocab = SPECIALS + ["hello", "world", "!", ",", "wor", "##ld"]
    tok = Tokenizer(vocab, sequence_length=9)
    text = "Héllo, WÖRLD 😀!"
    out = tok.tokenize(text)
    assert out.tokens[0] == [
        "[CLS]",
        "hello",
        ",",
        "world",
        "[UNK]",
        "!",
        "[SEP]",
        "[PAD]",
        "[PAD]",
    ]
    assert out.ids[0].tolist() == [2, 5, 8, 6, 1, 7, 3, 0, 0]
    assert out.ids.dtype == np.int32 and out.ids.shape == (1, 9)
    assert out.mask[0].tolist() == [True] * 7 + [False] * 2
    assert out.offsets[0].tolist() == [
        [-1, -1], [0, 5], [5, 6], [7, 12], [13, 14], [14, 15], [-1, -1], [-1, -1], [-1, -1]
    ]  # fmt: skip
    assert out.word_ids[0].tolist() == [-1, 0, 1, 2, 3, 4, -1, -1, -1]
    assert out.words[0] == ["Héllo", ",", "WÖRLD", "😀", "!"]
    assert out.word_offsets[0] == [(0, 5), (5, 6), (7, 12), (13, 14), (14, 15)]
    assert out.texts[0][13:14] == "😀"  # [UNK] keeps the original span
    assert not out.truncated[0] and out.num_wordpieces[0] == 5


def _check_round_trip(out, b):
    text = out.texts[b]
    word_pieces = {}
    for k in range(out.sequence_length):
        w = int(out.word_ids[b, k])
        start, end = out.offsets[b, k].tolist()
        token = out.tokens[b][k]
        if w < 0:
            assert (start, end) == (-1, -1)
            assert token in ("[CLS]", "[SEP]", "[PAD]")
            continue
        assert 0 <= start < end <= len(text)
        ws, we = out.word_offsets[b][w]
        assert ws <= start and end <= we
        word_pieces.setdefault(w, []).append((token, start, end))
    for w, pieces in word_pieces.items():
        ws, we = out.word_offsets[b][w]
        surface = text[ws:we]
        assert surface == out.words[b][w]
        if [t for t, _, _ in pieces] == ["[UNK]"]:
            continue
        # The pieces spell the normalized word.
        assert "".join(t.removeprefix("##") for t, _, _ in pieces) == norm(surface)
        assert pieces[0][1] == ws and pieces[-1][2] == we
        # Each piece's own span spells it (pieces tile the word).
        for (t, s, e), nxt in zip(pieces, pieces[1:] + [None]):
            assert norm(text[s:e]) == t.removeprefix("##"), (text, t, text[s:e])
            if nxt is not None:
                assert e == nxt[1]


@pytest.mark.parametrize("text", PROBES)
def test_offsets_round_trip(tok, text):
    out = tok.tokenize([text])
    _check_round_trip(out, 0)
    # All the non-space text is covered by words.
    covered = set()
    for s, e in out.word_offsets[0]:
        covered.update(range(s, e))
    assert {i for i, c in enumerate(text) if not c.isspace()} <= covered


def test_known_unicode_cases(tok):
    out = tok.tokenize(["我喜欢这部电影。", "I love it 😀👍 🎃 really", "Crème brûlée"])
    assert out.words[0] == list("我喜欢这部电影。")
    assert out.word_offsets[0] == [(i, i + 1) for i in range(8)]
    # Emoji not seen in training ("🎃") is [UNK] with its one-character span.
    toks = out.tokens[1]
    unk = toks.index("[UNK]")
    assert tuple(out.offsets[1, unk]) == (13, 14) and out.texts[1][13:14] == "🎃"
    assert "😀👍" in toks  # no whitespace between them: one word, learned whole
    assert out.words[2] == ["Crème", "brûlée"]


def test_normalization_that_expands_characters():
    vocab = SPECIALS + ["stra", "##s", "##se", "f", "##ine"]
    out = Tokenizer(vocab, sequence_length=8).tokenize("Straße ﬁne")
    assert out.tokens[0][:6] == ["[CLS]", "stra", "##s", "##se", "f", "##ine"]
    # "ß" -> "ss": the piece boundary falls inside the expansion; both pieces
    # touching "ß" get it. "ﬁ" -> "fi": both "f" and "##ine" (which starts
    # inside the expansion) include the ligature.
    assert out.offsets[0, 1:6].tolist() == [[0, 4], [4, 5], [4, 6], [7, 8], [7, 10]]
    assert out.words[0] == ["Straße", "ﬁne"]


def test_lower_case_false():
    vocab = SPECIALS + ["Hello", "hello", "É", "##cole"]
    tok = Tokenizer(vocab, sequence_length=7, lower_case=False)
    out = tok.tokenize("Hello hello École HELLO")
    # Case and accents are kept: "HELLO" is unknown, "École" matches "É" + "##cole".
    assert out.tokens[0] == ["[CLS]", "Hello", "hello", "É", "##cole", "[UNK]", "[SEP]"]
    assert out.offsets[0, 1:6].tolist() == [[0, 5], [6, 11], [12, 13], [13, 17], [18, 23]]
    # Combining-mark spelling (NFD) of the same word does not match NFC "É".
    assert (
        Tokenizer(vocab, sequence_length=4, lower_case=False).tokenize("E\u0301cole").tokens[0][1]
        == "[UNK]"
    )


def test_empty_and_blank_strings(tok):
    out = tok.tokenize(["", "   \n\t "])
    for b in range(2):
        assert out.ids[b, :2].tolist() == [tok.cls_id, tok.sep_id]
        assert (out.ids[b, 2:] == tok.pad_id).all()
        assert out.mask[b].tolist() == [True, True] + [False] * 22
        assert (out.word_ids[b] == -1).all() and (out.offsets[b] == -1).all()
        assert out.words[b] == [] and out.num_wordpieces[b] == 0
    assert len(tok.tokenize([])) == 0


def test_truncation_warns_and_keeps_prefix(tok):
    long_text = " ".join(["the movie was great"] * 20)
    with pytest.warns(UserWarning, match=r"1 of 2 strings .* sequence_length=24 .*truncated"):
        out = tok.tokenize([long_text, "the movie"])
    assert out.truncated.tolist() == [True, False]
    assert out.num_wordpieces[0] == 80
    assert out.mask[0].all()
    assert out.tokens[0][0] == "[CLS]" and out.tokens[0][-1] == "[SEP]"
    assert out.tokens[0][1:-1] == ["the", "movie", "was", "great"] * 5 + ["the", "movie"]
    # Every word is listed, even the ones cut off.
    assert len(out.words[0]) == 80
    _check_round_trip(out, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok.tokenize(["the movie was great"])  # fits: no warning


def test_very_long_word_is_unknown(tok):
    word = "a" * 150
    out = tok.tokenize(f"the {word} movie")
    assert out.tokens[0][1:4] == ["the", "[UNK]", "movie"]
    assert out.offsets[0, 2].tolist() == [4, 154]


def test_no_special_tokens(vocab):
    tok = Tokenizer(vocab, sequence_length=4, add_special_tokens=False)
    with pytest.warns(UserWarning, match="truncated"):
        out = tok.tokenize(["the movie", "the movie was great !"])
    assert out.tokens[1] == ["the", "movie", "was", "great"]
    assert out.tokens[0] == ["the", "movie", "[PAD]", "[PAD]"]
    assert out.mask[0].tolist() == [True, True, False, False]
    assert out.word_ids[1].tolist() == [0, 1, 2, 3]


def test_tf_data_and_tf_function_match_eager(tok):
    texts = PROBES + [" ".join(["the movie was great"] * 10)]
    with pytest.warns(UserWarning):
        eager = tok.tokenize(texts)
    ds = tf.data.Dataset.from_tensor_slices(texts)
    scalar = list(ds.map(tok.tf_tokenize))
    ids = np.stack([i.numpy() for i, _ in scalar])
    mask = np.stack([m.numpy() for _, m in scalar])
    np.testing.assert_array_equal(ids, eager.ids)
    np.testing.assert_array_equal(mask, eager.mask)
    assert scalar[0][0].dtype == tf.int32 and scalar[0][1].dtype == tf.bool
    batched = list(ds.batch(4).map(tok.tf_tokenize))
    np.testing.assert_array_equal(np.concatenate([i.numpy() for i, _ in batched]), eager.ids)
    fn = tf.function(lambda s: tok.tf_tokenize(s))
    b_ids, b_mask = fn(tf.constant(texts))
    np.testing.assert_array_equal(b_ids.numpy(), eager.ids)
    np.testing.assert_array_equal(b_mask.numpy(), eager.mask)
    assert b_ids.shape == (len(texts), 24)
    e_ids, _ = tok.tf_tokenize(texts)  # eager call of the TF path
    np.testing.assert_array_equal(e_ids.numpy(), eager.ids)


def test_input_types(tok):
    a = tok.tokenize("the movie")
    b = tok.tokenize([b"the movie"])
    c = tok.tokenize(np.array(["the movie"]))
    d = tok.tokenize(tf.constant(["the movie"]))
    for other in (b, c, d):
        np.testing.assert_array_equal(a.ids, other.ids)
    assert len(a) == 1 and a.texts == ["the movie"]
    assert "TokenizedText(batch_size=1" in repr(a)


def test_invalid_arguments(vocab):
    with pytest.raises(ValueError, match=r"Received: sequence_length=0"):
        Tokenizer(vocab, sequence_length=0)
    with pytest.raises(ValueError, match=r"Received: sequence_length=1"):
        Tokenizer(vocab, sequence_length=1)
    with pytest.raises(ValueError, match=r"`cls_token`.*Received: cls_token='\[CLS\]'"):
        Tokenizer(["[PAD]", "[UNK]", "a"], sequence_length=4)
    Tokenizer(["[PAD]", "[UNK]", "a"], sequence_length=1, add_special_tokens=False)
    with pytest.raises(ValueError, match="distinct"):
        Tokenizer(["[PAD]", "[UNK]", "a", "a"], add_special_tokens=False)
    tok = Tokenizer(vocab, sequence_length=8)
    with pytest.raises(TypeError, match="`strings`"):
        tok.tokenize([1, 2])
    with pytest.raises(ValueError, match="rank 0 or 1"):
        tok.tf_tokenize([["a"]])
    with pytest.raises(ValueError, match="token_id"):
        tok.id_to_token(len(vocab))
    assert tok.token_to_id("not-a-token") == tok.unknown_id
    assert Tokenizer.from_config(tok.get_config()).vocab == tok.vocab
