"""Feature masks over the words (or spans) of the user's text, for perturbation methods.

`FeatureAblation`, `ShapleyValueSampling`, `KernelShap` and `Lime` remove
*features*: groups of input elements that go together. For text the natural
feature is a word of the original string, which the tokenizer may have cut
into several word pieces; removing only some of them would explain pieces
the user never wrote. `word_feature_mask` gives every token the index of its
word, so all pieces of a word are removed together and the methods return
one score per word.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kerastrace._utils.validation import invalid
from kerastrace.text.tokenizer import TokenizedText

__all__ = ["KEEP", "word_feature_mask"]

#: Feature id of tokens that are never perturbed ([CLS], [SEP], padding).
KEEP = -1


def _check(tokenized):
    if not isinstance(tokenized, TokenizedText):
        raise TypeError(
            "Received an invalid value for argument `tokenized`, expected the "
            "`TokenizedText` returned by `Tokenizer.tokenize`. "
            f"Received: tokenized of type {type(tokenized).__name__}"
        )


def _span_ids(tokenized, b, spans):
    """Feature ids of example `b`'s tokens for character `spans` (largest overlap wins)."""
    text = tokenized.texts[b]
    clean = []
    for span in spans:
        try:
            start, end = (int(t) for t in span)
        except (TypeError, ValueError):
            raise invalid("spans", "(start, end) pairs of integers", span) from None
        if not 0 <= start < end <= len(text):
            raise invalid("spans", f"character spans with 0 <= start < end <= {len(text)}", span)
        clean.append((start, end))
    ids = np.full(tokenized.sequence_length, KEEP, np.int32)
    real = np.flatnonzero(tokenized.word_ids[b] >= 0)
    if not clean or real.size == 0:
        return ids, clean
    sp = np.asarray(clean, np.int64)
    t_start = tokenized.offsets[b, real, 0].astype(np.int64)
    t_end = tokenized.offsets[b, real, 1].astype(np.int64)
    overlap = np.minimum(sp[:, 1:2], t_end[None]) - np.maximum(sp[:, 0:1], t_start[None])
    overlap = np.maximum(overlap, 0)  # (S, tokens)
    best = overlap.argmax(axis=0)
    hit = overlap.max(axis=0) > 0
    ids[real[hit]] = best[hit]
    empty = sorted(set(range(len(clean))) - set(best[hit].tolist()))
    if empty:
        k = empty[0]
        raise invalid(
            "spans",
            "spans that each cover at least one token of the text (a span without tokens "
            "cannot be removed)",
            f"span {clean[k]} ({text[clean[k][0]:clean[k][1]]!r}) of example {b}",
        )
    return ids, clean


def word_feature_mask(tokenized: TokenizedText, spans: Sequence | None = None) -> np.ndarray:
    """Feature ids `(B, L)` that group the tokens of each word (or span) of the text.

    With `spans=None`, token `t` of example `b` gets the index of its word in
    `tokenized.words[b]` (`tokenized.word_ids`), so feature `k` is the `k`-th
    word of the user's string and all its word pieces share the id. `[CLS]`,
    `[SEP]` and padding get `-1` (`KEEP`): the perturbation methods keep
    them as they are. Words cut entirely by truncation have no tokens and no
    feature; the ids stay `0 .. F-1` without gaps.

    With `spans`, feature `k` is the `k`-th character span `(start, end)`
    (one list of spans per example, or one list for a batch of one): a token
    belongs to the span it overlaps most, tokens outside every span get -1.
    Use it for phrases, entities or whitespace-separated words.

    Pass the result as `feature_mask=` (for keras-hub dict inputs:
    `feature_mask={"token_ids": mask}`); with `return_input_shape=False`
    the methods return `(B, F)`: one score per word, in the order of
    `tokenized.words[b]` (or of `spans`).

    Args:
        tokenized: The `TokenizedText` of the explained strings.
        spans: Optional character spans per example.

    Returns:
        `(B, L)` int32 feature ids, -1 for tokens never perturbed.

    Raises:
        TypeError: if `tokenized` is not a `TokenizedText`.
        ValueError: for malformed spans or a span that covers no token.

    Example:

    >>> from kerastrace.text import Tokenizer, word_feature_mask
    >>> tok = Tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##seen", "film", "!"],
    ...                 sequence_length=8)
    >>> t = tok.tokenize("Unseen film!")
    >>> t.tokens[0]
    ['[CLS]', 'un', '##seen', 'film', '!', '[SEP]', '[PAD]', '[PAD]']
    >>> word_feature_mask(t).tolist()
    [[-1, 0, 0, 1, 2, -1, -1, -1]]
    >>> word_feature_mask(t, spans=[(0, 6), (7, 12)]).tolist()  # "Unseen", "film!"
    [[-1, 0, 0, 1, 1, -1, -1, -1]]
    """
    _check(tokenized)
    if spans is None:
        return np.where(tokenized.word_ids >= 0, tokenized.word_ids, KEEP).astype(np.int32)
    batch = len(tokenized)
    per_example = list(spans)
    if batch == 1 and per_example and not _is_span_list(per_example[0]):
        per_example = [per_example]
    if len(per_example) != batch:
        raise invalid(
            "spans", f"one list of (start, end) spans per example ({batch})",
            f"{len(per_example)} lists",
        )
    return np.stack([_span_ids(tokenized, b, s)[0] for b, s in enumerate(per_example)])


def _is_span_list(item) -> bool:
    """Whether `item` is a list of spans (rather than one `(start, end)` span)."""
    return isinstance(item, (list, tuple)) and (
        len(item) == 0 or isinstance(item[0], (list, tuple, np.ndarray))
    )
