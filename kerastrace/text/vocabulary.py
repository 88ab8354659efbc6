"""WordPiece vocabularies: learn one from a dataset of strings, save, load."""

from __future__ import annotations

import collections
import importlib
import os
from collections.abc import Iterable, Sequence

import tensorflow as tf

from kerastrace._utils import lazy
from kerastrace._utils import text_pretokenize as pre
from kerastrace._utils.validation import check_bool, check_positive_int, invalid

DEFAULT_RESERVED_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

__all__ = [
    "DEFAULT_RESERVED_TOKENS",
    "build_vocabulary",
    "load_vocabulary",
    "save_vocabulary",
]


def _as_dataset(data) -> tf.data.Dataset:
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        if not isinstance(spec, tf.TensorSpec) or spec.dtype != tf.string:
            raise TypeError(
                "Received an invalid value for argument `dataset`, expected a "
                "`tf.data.Dataset` whose elements are string tensors (scalars or "
                f"batches). Received: element_spec={spec!r}. Map it to the text "
                "first, e.g. `dataset.map(lambda text, label: text)`."
            )
        return data
    strings = pre.as_string_list(data, "dataset")
    return tf.data.Dataset.from_tensor_slices(tf.constant(strings, dtype=tf.string))


def build_vocabulary(
    dataset: tf.data.Dataset | Iterable[str],
    vocab_size: int = 8000,
    reserved_tokens: Sequence[str] = DEFAULT_RESERVED_TOKENS,
    lower_case: bool = True,
    min_count: int = 2,
    batch_size: int = 1024,
    learn_params: dict | None = None,
) -> list[str]:
    """Learn a WordPiece vocabulary from a dataset of strings.

    The text is normalized and split into words exactly as `Tokenizer` does
    (tensorflow-text's `FastBertNormalizer`: case folding, NFD, accent
    stripping when `lower_case`; then BERT's basic split on whitespace,
    punctuation and CJK ideographs), words are counted, and the vocabulary is
    learned with tensorflow-text's WordPiece learner
    (`tensorflow_text.tools.wordpiece_vocab.wordpiece_tokenizer_learner_lib`,
    the algorithm behind `bert_vocab_from_dataset`). Using the tokenizer's own
    word split keeps vocabulary and tokenizer consistent.

    Args:
        dataset: a `tf.data.Dataset` of string tensors (scalars or batches), or
            a list/array of Python strings.
        vocab_size: the maximum vocabulary size (reserved tokens included). The
            learner aims for `vocab_size * 0.95 <= size <= vocab_size`; a small
            corpus may give fewer tokens.
        reserved_tokens: tokens placed first, in this order. The default puts
            `[PAD]` at id 0, which suits `keras.layers.Embedding(mask_zero=True)`.
        lower_case: lowercase and strip accents before learning. Use the same
            value for the `Tokenizer`.
        min_count: a word must occur at least this many times to be a whole
            token candidate (the learner's lower frequency threshold).
        batch_size: batch size used to pre-tokenize unbatched datasets.
        learn_params: extra keyword arguments for the learner's `learn`
            (`max_token_length`, `max_unique_chars`, `num_iterations`, ...).

    Returns:
        The vocabulary as a list of token strings; suffix pieces start with `##`.

    Raises:
        ValueError: on an invalid `vocab_size`, `min_count`, `reserved_tokens`
            or an empty dataset.
        TypeError: if the dataset does not hold strings.

    Example:

    >>> from kerastrace.text import build_vocabulary
    >>> vocab = build_vocabulary(["the cat sat", "the dog sat"] * 3, vocab_size=50)
    >>> vocab[:5]
    ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
    >>> "the" in vocab and "##t" in vocab
    True
    """
    vocab_size = check_positive_int("vocab_size", vocab_size)
    min_count = check_positive_int("min_count", min_count)
    batch_size = check_positive_int("batch_size", batch_size)
    lower_case = check_bool("lower_case", lower_case)
    if isinstance(reserved_tokens, str) or not all(
        isinstance(t, str) and t for t in reserved_tokens
    ):
        raise invalid("reserved_tokens", "a sequence of non-empty strings", reserved_tokens)
    reserved = list(reserved_tokens)
    if len(set(reserved)) != len(reserved):
        raise invalid("reserved_tokens", "distinct tokens", reserved_tokens)
    if vocab_size <= len(reserved):
        raise invalid(
            "vocab_size",
            f"an integer larger than the number of reserved tokens ({len(reserved)})",
            vocab_size,
        )
    ds = _as_dataset(dataset)
    if ds.element_spec.shape.rank == 0:
        ds = ds.batch(batch_size)
    elif ds.element_spec.shape.rank != 1:
        ds = ds.map(lambda x: tf.reshape(x, [-1]))

    lazy.tensorflow_text()
    learner = importlib.import_module(
        "tensorflow_text.tools.wordpiece_vocab.wordpiece_tokenizer_learner_lib"
    )

    @tf.autograph.experimental.do_not_convert
    def words_fn(batch):
        return pre.split_words(batch, lower_case)

    words_ds = ds.map(words_fn, num_parallel_calls=tf.data.AUTOTUNE)
    counts = _count_words(learner, words_ds)
    params = {"lower_thresh": min_count}
    params.update(learn_params or {})
    vocab = learner.learn(counts, vocab_size, reserved, **params)
    return [str(t) for t in vocab]


def _count_words(learner, words_ds):
    counts = collections.Counter()
    for words in words_ds:
        values = words.flat_values.numpy()
        if values.size:
            counts.update(learner.count_words([values]))
    if not counts:
        raise ValueError(
            "Received an invalid value for argument `dataset`, expected a dataset "
            "holding at least one non-empty string. Received: a dataset with no words."
        )
    return counts


def save_vocabulary(vocab: Sequence[str], path: str | os.PathLike) -> str:
    """Write `vocab` as a plain UTF-8 file, one token per line.

    This is the `vocab.txt` format of BERT checkpoints: line `i` holds the
    token of id `i`.

    Args:
        vocab: the token strings, in id order.
        path: the file to write (parent folders are created).

    Returns:
        The path written, as a string.

    Raises:
        ValueError: if a token is empty, contains a line break or is repeated.

    Example:

    >>> import os, tempfile
    >>> from kerastrace.text import load_vocabulary, save_vocabulary
    >>> path = save_vocabulary(["[PAD]", "[UNK]", "café", "##s"],
    ...                        os.path.join(tempfile.mkdtemp(), "vocab.txt"))
    >>> load_vocabulary(path)
    ['[PAD]', '[UNK]', 'café', '##s']
    """
    tokens = list(vocab)
    for token in tokens:
        if not isinstance(token, str) or not token or any(c in token for c in "\r\n"):
            raise invalid("vocab", "non-empty token strings without line breaks", token)
    if len(set(tokens)) != len(tokens):
        seen, dup = set(), None
        for t in tokens:
            if t in seen:
                dup = t
                break
            seen.add(t)
        raise invalid("vocab", "distinct tokens", f"... duplicated token {dup!r} ...")
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(t + "\n" for t in tokens))
    return path


def load_vocabulary(path: str | os.PathLike) -> list[str]:
    """Read a one-token-per-line vocabulary file (`save_vocabulary`, BERT `vocab.txt`).

    Args:
        path: the file to read.

    Returns:
        The tokens in id order. Trailing line breaks are removed; blank
        trailing lines are ignored.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: if the file holds no token, or a blank line before the end.
    """
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    tokens = [line.rstrip("\r") for line in lines]
    while tokens and not tokens[-1]:
        tokens.pop()
    if not tokens:
        raise invalid("path", "a vocabulary file with at least one token", path)
    if "" in tokens:
        raise invalid(
            "path",
            "a vocabulary file with one non-empty token per line",
            path,
            hint=f"Line {tokens.index('') + 1} is blank",
        )
    return tokens
