"""Map subword-token scores back to the user's words, spans and characters.

Works for any per-token score: attributions summed over the embedding axis,
one row of an attention matrix, a rollout vector. Scores at `[CLS]`, `[SEP]`
and padding positions are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from kerastrace._utils.validation import check_one_of, invalid
from kerastrace.text.tokenizer import TokenizedText

__all__ = [
    "WordScore",
    "aggregate_to_characters",
    "aggregate_to_spans",
    "aggregate_to_words",
]

_REDUCTIONS = ("sum", "mean", "max")


class WordScore(NamedTuple):
    """One word (or span) of the original text with its aggregated score.

    A plain tuple `(word, (start, end), score)`: `word == text[start:end]`.
    """

    word: str
    span: tuple
    score: float


def _rows(token_scores, tokenized: TokenizedText, index: int | None):
    """Validate shapes; return (list of (example index, (L,) float64 scores), single)."""
    if not isinstance(tokenized, TokenizedText):
        raise TypeError(
            "Received an invalid value for argument `tokenized`, expected the "
            "`TokenizedText` returned by `Tokenizer.tokenize`. "
            f"Received: tokenized of type {type(tokenized).__name__}"
        )
    if hasattr(token_scores, "numpy"):
        token_scores = token_scores.numpy()
    scores = np.asarray(token_scores, dtype=np.float64)
    batch, length = tokenized.ids.shape
    if scores.ndim == 1:
        if scores.shape[0] != length:
            raise invalid(
                "token_scores",
                f"an array of shape (L,) or (B, L) matching the tokenization (L={length})",
                f"array of shape {scores.shape}",
            )
        if index is None:
            if batch != 1:
                raise invalid(
                    "index",
                    f"the example of `tokenized` that 1-D `token_scores` belong to (batch of {batch})",
                    index,
                )
            index = 0
        if not -batch <= index < batch:
            raise invalid("index", f"an integer in [0, {batch})", index)
        return [(index % batch, scores)], True
    if scores.ndim != 2 or scores.shape != (batch, length):
        hint = None
        if scores.ndim == 3 and scores.shape[:2] == (batch, length):
            hint = "Reduce the feature axis first, e.g. `scores.sum(axis=-1)`"
        raise invalid(
            "token_scores",
            f"an array of shape (L,) or (B, L) = ({batch}, {length}) matching `tokenized`",
            f"array of shape {scores.shape}",
            hint=hint,
        )
    if index is not None:
        raise invalid("index", "None when `token_scores` has a batch axis", index)
    return list(enumerate(scores)), False


def aggregate_to_words(
    token_scores,
    tokenized: TokenizedText,
    reduce: str = "sum",
    index: int | None = None,
) -> list:
    """Aggregate token scores to the words of the original text.

    Each wordpiece belongs to exactly one word (`tokenized.word_ids`), so with
    `reduce="sum"` the word scores add up to the sum over all non-special
    tokens. Words cut entirely by truncation are left out.

    Args:
        token_scores: `(B, L)` scores aligned with `tokenized.ids`, or `(L,)`
            for one example (numpy array or tensor).
        tokenized: the `TokenizedText` the scores were computed on.
        reduce: `"sum"`, `"mean"` or `"max"` over the pieces of a word.
        index: with 1-D `token_scores`, which example of `tokenized` they
            belong to (may be omitted for a batch of one).

    Returns:
        For `(L,)` scores, a list of `WordScore(word, (start, end), score)`
        tuples in text order; for `(B, L)`, one such list per example.
        `start`/`end` are character offsets: `text[start:end] == word`.

    Raises:
        ValueError: if shapes do not match or `reduce` is unknown.
        TypeError: if `tokenized` is not a `TokenizedText`.

    Example:

    >>> from kerastrace.text import Tokenizer, aggregate_to_words
    >>> tok = Tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##seen", "film"],
    ...                 sequence_length=6)
    >>> t = tok.tokenize("Unseen film")
    >>> t.tokens[0]
    ['[CLS]', 'un', '##seen', 'film', '[SEP]', '[PAD]']
    >>> aggregate_to_words([9.0, 1.0, 2.0, 4.0, 9.0, 9.0], t)
    [WordScore(word='Unseen', span=(0, 6), score=3.0), WordScore(word='film', span=(7, 11), score=4.0)]
    """
    reduce = check_one_of("reduce", reduce, _REDUCTIONS)
    rows, single = _rows(token_scores, tokenized, index)
    if not rows:
        return []
    # One vectorized pass over the whole batch: key = row * n_max + word.
    examples = [b for b, _ in rows]
    scores = np.stack([r for _, r in rows])
    wid = tokenized.word_ids[examples].astype(np.int64)
    n_max = max([len(tokenized.words[b]) for b in examples] + [1])
    valid = wid >= 0
    keys = (np.arange(len(rows))[:, None] * n_max + wid)[valid]
    s = scores[valid]
    size = len(rows) * n_max
    counts = np.bincount(keys, minlength=size)
    if reduce == "max":
        agg = np.full(size, -np.inf)
        np.maximum.at(agg, keys, s)
    else:
        agg = np.bincount(keys, weights=s, minlength=size)
        if reduce == "mean":
            agg = agg / np.maximum(counts, 1)
    present = np.flatnonzero(counts)
    out = [[] for _ in rows]
    agg_list = agg[present].tolist()
    for key, value in zip(present.tolist(), agg_list):
        r, k = divmod(key, n_max)
        b = examples[r]
        start, end = tokenized.word_offsets[b][k]
        out[r].append(WordScore(tokenized.words[b][k], (start, end), value))
    return out[0] if single else out


def _token_spans(tokenized: TokenizedText, b: int):
    keep = tokenized.word_ids[b] >= 0
    spans = tokenized.offsets[b][keep].astype(np.int64)
    return keep, spans[:, 0], spans[:, 1]


def aggregate_to_characters(
    token_scores,
    tokenized: TokenizedText,
    reduce: str = "sum",
    index: int | None = None,
) -> list | np.ndarray:
    """Spread token scores over the characters of the original text.

    With `reduce="sum"` a token's score is split evenly over its characters,
    so the character scores add up to the sum over non-special tokens. With
    `"mean"` or `"max"` each character gets the mean or max of the scores of
    the tokens covering it (usually exactly one). Characters no token covers
    (whitespace, truncated text) get 0.

    Args:
        token_scores: `(B, L)` or `(L,)` scores aligned with `tokenized.ids`.
        tokenized: the `TokenizedText` the scores were computed on.
        reduce: `"sum"`, `"mean"` or `"max"`.
        index: with 1-D `token_scores`, which example they belong to.

    Returns:
        A float64 array of shape `(len(text),)`, or one per example for `(B, L)`.

    Raises:
        ValueError: if shapes do not match or `reduce` is unknown.

    Example:

    >>> from kerastrace.text import Tokenizer, aggregate_to_characters
    >>> tok = Tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "ab", "##c"], sequence_length=4)
    >>> t = tok.tokenize("abc")
    >>> aggregate_to_characters([0.0, 4.0, 1.0, 0.0], t).tolist()
    [2.0, 2.0, 1.0]
    """
    reduce = check_one_of("reduce", reduce, _REDUCTIONS)
    rows, single = _rows(token_scores, tokenized, index)
    out = []
    for b, scores in rows:
        n_chars = len(tokenized.texts[b])
        keep, starts, ends = _token_spans(tokenized, b)
        s = scores[keep]
        total = np.zeros(n_chars)
        count = np.zeros(n_chars)
        best = np.full(n_chars, -np.inf)
        for score, start, end in zip(s.tolist(), starts.tolist(), ends.tolist()):
            width = max(end - start, 1)
            if reduce == "sum":
                total[start:end] += score / width
            else:
                total[start:end] += score
                count[start:end] += 1
                best[start:end] = np.maximum(best[start:end], score)
        if reduce == "mean":
            total = np.where(count > 0, total / np.maximum(count, 1), 0.0)
        elif reduce == "max":
            total = np.where(count > 0, best, 0.0)
        out.append(total)
    return out[0] if single else out


def aggregate_to_spans(
    token_scores,
    tokenized: TokenizedText,
    spans: Sequence | None = None,
    reduce: str = "sum",
    index: int | None = None,
) -> list:
    """Aggregate token scores to character spans of the original text.

    Use it for units other than BERT words: whitespace-separated words (the
    default, so `"don't"` stays one unit), phrases, sentences, entity spans.
    With `reduce="sum"` a token contributes to each span in proportion to the
    share of its characters inside the span, so spans that cover the text
    (the default ones do) preserve the total. `"mean"` and `"max"` take the
    unweighted mean / max over the tokens overlapping a span. A span no token
    overlaps gets 0.

    Args:
        token_scores: `(B, L)` or `(L,)` scores aligned with `tokenized.ids`.
        tokenized: the `TokenizedText` the scores were computed on.
        spans: `(start, end)` character spans: a list of them for `(L,)`
            scores, a list of such lists (one per example) for `(B, L)`.
            `None` uses the whitespace-separated words of each text.
        reduce: `"sum"`, `"mean"` or `"max"`.
        index: with 1-D `token_scores`, which example they belong to.

    Returns:
        A list of `WordScore(text[start:end], (start, end), score)` in the
        order of `spans`, or one list per example for `(B, L)` scores.

    Raises:
        ValueError: if shapes do not match, a span is out of range, or
            `reduce` is unknown.

    Example:

    >>> from kerastrace.text import Tokenizer, aggregate_to_spans
    >>> tok = Tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "don", "'", "t", "go"],
    ...                 sequence_length=6)
    >>> t = tok.tokenize("don't go")
    >>> [(w, s) for w, _, s in aggregate_to_spans([0, 1, 2, 3, 5, 0], t)]
    [("don't", 6.0), ('go', 5.0)]
    """
    reduce = check_one_of("reduce", reduce, _REDUCTIONS)
    rows, single = _rows(token_scores, tokenized, index)
    if spans is not None:
        per_example = [spans] if single else list(spans)
        if len(per_example) != len(rows):
            raise invalid(
                "spans",
                f"one list of (start, end) spans per example ({len(rows)})",
                f"{len(per_example)} lists",
            )
    out = []
    for i, (b, scores) in enumerate(rows):
        text = tokenized.texts[b]
        if spans is None:
            ex_spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        else:
            ex_spans = []
            for span in per_example[i]:
                try:
                    start, end = (int(v) for v in span)
                except (TypeError, ValueError):
                    raise invalid("spans", "(start, end) pairs of integers", span) from None
                if not 0 <= start <= end <= len(text):
                    raise invalid(
                        "spans", f"character spans with 0 <= start <= end <= {len(text)}", span
                    )
                ex_spans.append((start, end))
        keep, t_start, t_end = _token_spans(tokenized, b)
        s = scores[keep]
        if ex_spans:
            sp = np.asarray(ex_spans, dtype=np.int64)
            overlap = np.minimum(sp[:, 1:2], t_end[None]) - np.maximum(sp[:, 0:1], t_start[None])
            overlap = np.maximum(overlap, 0)
        else:
            overlap = np.zeros((0, len(s)), dtype=np.int64)
        result = []
        for k, (start, end) in enumerate(ex_spans):
            touched = overlap[k] > 0
            if not touched.any():
                value = 0.0
            elif reduce == "sum":
                width = np.maximum(t_end - t_start, 1)
                value = float(np.sum(s * overlap[k] / width))
            elif reduce == "mean":
                value = float(np.mean(s[touched]))
            else:
                value = float(np.max(s[touched]))
            result.append(WordScore(text[start:end], (start, end), value))
        out.append(result)
    return out[0] if single else out
