"""Vocabulary learning, save/load round trip (kerastrace.text.vocabulary)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from kerastrace.text import (
    DEFAULT_RESERVED_TOKENS,
    Tokenizer,
    build_vocabulary,
    load_vocabulary,
    save_vocabulary,
)

WORDS = [
    "the",
    "movie",
    "was",
    "great",
    "terrible",
    "plot",
    "actors",
    "Crème",
    "brûlée",
    "café",
    "我喜欢",
    "电影",
    "😀",
    "👍",
    "Straße",
    "naïve",
    "not",
    "really",
]


def make_corpus(n=120, seed=0):
    rng = np.random.default_rng(seed)
    return [
        " ".join(rng.choice(WORDS, size=rng.integers(3, 9))) + rng.choice([".", "!", ""])
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def corpus():
    return make_corpus()


@pytest.fixture(scope="module")
def vocab(corpus):
    return build_vocabulary(corpus, vocab_size=300, min_count=2)


def test_reserved_tokens_first_and_size(vocab):
    assert vocab[:5] == list(DEFAULT_RESERVED_TOKENS)
    assert len(vocab) <= 300
    assert len(set(vocab)) == len(vocab)
    # Frequent words become whole tokens, suffix pieces carry "##".
    for word in ["the", "movie", "great", "terrible", "cafe", "brulee", "strasse", "naive"]:
        assert word in vocab
    assert any(t.startswith("##") for t in vocab)
    # lower_case=True folds case and strips accents.
    assert not any(t != t.lower() for t in vocab[5:])
    assert "café" not in vocab and "crème" not in vocab
    # CJK ideographs are single-character words, emoji kept.
    assert "我" in vocab and "影" in vocab and "我喜欢" not in vocab
    assert "😀" in vocab


def test_lower_case_false_keeps_case_and_accents(corpus):
    vocab = build_vocabulary(corpus, vocab_size=300, lower_case=False)
    assert "Crème" in vocab and "café" in vocab and "Straße" in vocab
    assert "creme" not in vocab


def test_dataset_inputs_give_same_vocab(corpus, vocab):
    ds = tf.data.Dataset.from_tensor_slices(corpus)
    assert build_vocabulary(ds, vocab_size=300) == vocab
    assert build_vocabulary(ds.batch(7), vocab_size=300) == vocab
    assert build_vocabulary(np.array(corpus), vocab_size=300) == vocab


def test_tokenizer_on_training_corpus_has_no_unknown(corpus, vocab):
    tok = Tokenizer(vocab, sequence_length=64)
    out = tok.tokenize(corpus)
    assert not (out.ids == tok.unknown_id).any()
    assert not out.truncated.any()


def test_save_load_round_trip(tmp_path, vocab):
    path = save_vocabulary(vocab, tmp_path / "sub" / "vocab.txt")
    assert path == os.fspath(tmp_path / "sub" / "vocab.txt")
    raw = (tmp_path / "sub" / "vocab.txt").read_bytes().decode("utf-8")
    assert raw == "".join(t + "\n" for t in vocab)
    assert load_vocabulary(path) == vocab
    # A Tokenizer accepts the file path directly.
    tok = Tokenizer(path, sequence_length=8)
    assert tok.vocab == vocab


def test_load_bert_style_file(tmp_path):
    (tmp_path / "v.txt").write_bytes(b"[PAD]\r\n[UNK]\r\n\xc3\xa9t\xc3\xa9\r\n\r\n")
    assert load_vocabulary(tmp_path / "v.txt") == ["[PAD]", "[UNK]", "été"]
    (tmp_path / "bad.txt").write_text("[PAD]\n\n[UNK]\n", encoding="utf-8")
    with pytest.raises(ValueError, match="Line 2 is blank"):
        load_vocabulary(tmp_path / "bad.txt")
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="at least one token"):
        load_vocabulary(tmp_path / "empty.txt")


def test_invalid_arguments(corpus, tmp_path):
    with pytest.raises(ValueError, match=r"`vocab_size`.*Received: vocab_size=5"):
        build_vocabulary(corpus, vocab_size=5)
    with pytest.raises(ValueError, match=r"Received: vocab_size=0"):
        build_vocabulary(corpus, vocab_size=0)
    with pytest.raises(ValueError, match="reserved_tokens"):
        build_vocabulary(corpus, reserved_tokens=("[PAD]", "[PAD]"))
    with pytest.raises(ValueError, match="no words"):
        build_vocabulary(["", "   "], vocab_size=50)
    pairs = tf.data.Dataset.from_tensor_slices((corpus, np.zeros(len(corpus))))
    with pytest.raises(TypeError, match=r"dataset.map\(lambda text, label: text\)"):
        build_vocabulary(pairs)
    with pytest.raises(TypeError, match="`dataset`"):
        build_vocabulary([1, 2, 3])
    with pytest.raises(ValueError, match="distinct"):
        save_vocabulary(["a", "b", "a"], tmp_path / "v.txt")
    with pytest.raises(ValueError, match="line breaks"):
        save_vocabulary(["a", "b\nc"], tmp_path / "v.txt")


def test_import_is_lazy():
    code = "import sys, kerastrace, kerastrace.text; print('tensorflow_text' in sys.modules)"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "False"
