"""Private helpers of `kerastrace.text`: BERT normalization, word splitting
with offsets into the original string, and byte -> character offset maps.

`tensorflow_text` is imported on first use only.
"""

from __future__ import annotations

import functools
import sys

import numpy as np
import tensorflow as tf

from kerastrace._utils import lazy

# The delimiters of BERT's basic tokenizer (tensorflow_text BasicTokenizer):
# whitespace splits and is dropped; ASCII punctuation, Unicode punctuation and
# CJK ideographs split and are kept as one-character words.
_CJK = (
    r"[\x{4E00}-\x{9FFF}]|[\x{3400}-\x{4DBF}]|[\x{20000}-\x{2A6DF}]|"
    r"[\x{2A700}-\x{2B73F}]|[\x{2B740}-\x{2B81F}]|[\x{2B820}-\x{2CEAF}]|"
    r"[\x{F900}-\x{FAFF}]|[\x{2F800}-\x{2FA1F}]"
)
KEEP_DELIM_PATTERN = r"[!-/]|[:-@]|[\[-`]|[{-~]|[\p{P}]|" + _CJK
DELIM_PATTERN = r"\s+|" + KEEP_DELIM_PATTERN


def _tft():
    # `sys.modules` first: no importlib call (which AutoGraph would try to
    # convert) when these helpers run inside a traced function.
    return sys.modules.get("tensorflow_text") or lazy.tensorflow_text()


# AutoGraph must not convert these helpers (they have no tensor-dependent
# control flow): converting the lru_cache wrapper mis-binds its arguments
# ("tf__normalizer() takes 1 positional argument but 2 were given") once other
# traced code has populated AutoGraph's conversion cache.
@tf.autograph.experimental.do_not_convert
@functools.lru_cache(maxsize=4)
def normalizer(lower_case: bool):
    """A cached `tensorflow_text.FastBertNormalizer`."""
    tft = _tft()
    # Build it eagerly even when first asked for inside a tf.function or a
    # dataset map, so its model buffer is not a tensor of that graph.
    with tf.init_scope():
        return tft.FastBertNormalizer(lower_case_nfd_strip_accents=bool(lower_case))


@tf.autograph.experimental.do_not_convert
def split_words_with_offsets(strings, lower_case: bool):
    """Normalize and split `strings` (B,) into words.

    Returns:
        `(words, starts, ends, norm_to_orig)`: ragged `(B, W)` normalized words,
        their byte offsets into the *normalized* strings, and a ragged
        `(B, n + 1)` map from normalized byte offsets to original byte offsets.
    """
    tft = _tft()
    normalized, norm_to_orig = normalizer(lower_case).normalize_with_offsets(strings)
    words, starts, ends = tft.regex_split_with_offsets(
        normalized, DELIM_PATTERN, KEEP_DELIM_PATTERN
    )
    return words, starts, ends, norm_to_orig


def split_words(strings, lower_case: bool):
    """Normalized words of `strings` as a ragged `(B, W)` string tensor."""
    words, _, _, _ = split_words_with_offsets(strings, lower_case)
    return words


def byte_to_char_maps(text: str):
    """Maps from UTF-8 byte offsets of `text` to character offsets.

    Returns:
        `(floor, ceil)`: int arrays of length `len(text.encode()) + 1`. For a
        byte offset on a character boundary both give that character's index;
        inside a multi-byte character `floor` gives the character containing it
        and `ceil` the next one.
    """
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    is_start = (data & 0xC0) != 0x80
    ceil = np.zeros(len(data) + 1, dtype=np.int64)
    np.cumsum(is_start, out=ceil[1:])
    boundary = np.append(is_start, True)
    floor = ceil - (~boundary).astype(np.int64)
    return floor, ceil


def to_str(value, name: str) -> str:
    """Coerce one input string (str or UTF-8 bytes) to `str`."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8")
    if isinstance(value, np.str_):
        return str(value)
    raise TypeError(
        f"Received an invalid value for argument `{name}`, expected a string or a "
        f"sequence of strings. Received: {name}={value!r} of type {type(value).__name__}"
    )


def as_string_list(strings, name: str = "strings") -> list[str]:
    """A list of Python strings from a str, bytes, sequence, array or tensor."""
    if isinstance(strings, (str, bytes, np.str_, np.bytes_)):
        return [to_str(strings, name)]
    if isinstance(strings, tf.Tensor):
        strings = strings.numpy()
    if isinstance(strings, np.ndarray):
        if strings.ndim == 0:
            return [to_str(strings.item(), name)]
        if strings.ndim != 1:
            raise ValueError(
                f"Received an invalid value for argument `{name}`, expected a string or "
                f"a 1-D sequence of strings. Received: {name} with shape {strings.shape}"
            )
        strings = strings.tolist()
    try:
        items = list(strings)
    except TypeError:
        raise TypeError(
            f"Received an invalid value for argument `{name}`, expected a string or a "
            f"sequence of strings. Received: {name}={strings!r}"
        ) from None
    return [to_str(s, name) for s in items]
