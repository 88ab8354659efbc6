"""WordPiece tokenization on tensorflow-text with character offsets."""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from kerastrace._utils import lazy, tf_compat
from kerastrace._utils import text_pretokenize as pre
from kerastrace._utils.validation import check_bool, check_positive_int, invalid

__all__ = ["TokenizedText", "Tokenizer"]

#: Offset given to tokens with no text: [CLS], [SEP] and padding.
NO_OFFSET = (-1, -1)


@dataclasses.dataclass(frozen=True, repr=False)
class TokenizedText:
    """The result of `Tokenizer.tokenize`: ids plus everything needed to map back.

    All arrays have a batch axis `B` (one row per input string) and a sequence
    axis `L` (`sequence_length`).

    Attributes:
        texts: the original strings, `B` Python `str`.
        ids: `(B, L)` int32 token ids, padded with the `[PAD]` id.
        mask: `(B, L)` bool, True for real tokens including `[CLS]`/`[SEP]`,
            False for padding.
        offsets: `(B, L, 2)` int32 character offsets `(start, end)` into the
            original string, so `texts[b][start:end]` is the text the token
            came from (for `[UNK]`, the whole unknown word). `[CLS]`, `[SEP]`
            and padding have `(-1, -1)`.
        tokens: `B` lists of `L` token strings (`"##"` marks word-internal
            pieces; padding is the `[PAD]` token).
        word_ids: `(B, L)` int32 index of the word each token belongs to, in
            `words[b]`; -1 for `[CLS]`, `[SEP]` and padding.
        words: `B` lists with the surface string of every word of the original
            text (words split as BERT does: on whitespace, punctuation and CJK
            characters), including words cut by truncation.
        word_offsets: `B` lists of `(start, end)` character spans of `words`.
        truncated: `(B,)` bool, True where wordpieces were dropped.
        num_wordpieces: `(B,)` int32, number of wordpieces before truncation
            (special tokens not counted).
    """

    texts: list
    ids: np.ndarray
    mask: np.ndarray
    offsets: np.ndarray
    tokens: list
    word_ids: np.ndarray
    words: list
    word_offsets: list
    truncated: np.ndarray
    num_wordpieces: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def sequence_length(self) -> int:
        return int(self.ids.shape[1])

    @property
    def special_tokens_mask(self) -> np.ndarray:
        """`(B, L)` bool, True for `[CLS]`, `[SEP]` and padding."""
        return self.word_ids < 0

    @property
    def token_mask(self) -> np.ndarray:
        """`(B, L)` bool, True for tokens that come from the text."""
        return self.word_ids >= 0

    def __repr__(self) -> str:
        return (
            f"TokenizedText(batch_size={len(self)}, sequence_length={self.sequence_length}, "
            f"truncated={int(self.truncated.sum())})"
        )


class Tokenizer:
    """BERT WordPiece tokenizer on tensorflow-text that keeps character offsets.

    The text goes through tensorflow-text's `FastBertNormalizer` (control
    characters removed; with `lower_case`, also case folding, NFD and accent
    stripping), is split into words like BERT's basic tokenizer (whitespace,
    punctuation, CJK ideographs) and each word into wordpieces with
    `FastWordpieceTokenizer`. A word that cannot be built from the vocabulary,
    or longer than 100 bytes, becomes one `[UNK]`.

    Offsets: tensorflow-text reports byte offsets into the normalized string.
    They are mapped back through the normalizer's offset map to byte offsets of
    the original string, then to Python character offsets, so
    `text[start:end]` is the user's own text (original case and accents),
    including for emoji and CJK. When normalization expands one character into
    several (`"ß"` -> `"ss"`, `"ﬁ"` -> `"fi"`) and a piece boundary falls
    inside the expansion, each piece gets that whole character.

    `tokenize` returns numpy arrays with offsets, words and tokens for
    display and alignment; `tf_tokenize` is the pure-TensorFlow path for
    `tf.data.Dataset.map` and `tf.function` and returns the same ids and mask.

    Args:
        vocab: list of token strings (id = position) or the path of a
            one-token-per-line vocab file.
        sequence_length: the output length `L`, special tokens included.
            Longer inputs are truncated (a `UserWarning` is issued by
            `tokenize` through `warnings.warn`; `tf_tokenize` truncates
            silently); shorter ones are padded.
        lower_case: lowercase and strip accents. Must match the value used to
            build the vocabulary.
        add_special_tokens: add `[CLS]` first and `[SEP]` after the text.
        pad_token, unknown_token, cls_token, sep_token: names of the special
            tokens; each must be in `vocab` (`cls_token`/`sep_token` only when
            `add_special_tokens`).

    Raises:
        ValueError: on an invalid argument or a vocabulary missing a special token.

    Example:

    >>> from kerastrace.text import Tokenizer
    >>> vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cafe", "great", "##est", "!"]
    >>> tok = Tokenizer(vocab, sequence_length=8)
    >>> out = tok.tokenize(["The Café, greatest!"])
    >>> out.tokens[0]
    ['[CLS]', 'the', 'cafe', '[UNK]', 'great', '##est', '!', '[SEP]']
    >>> out.ids[0].tolist()
    [2, 4, 5, 1, 6, 7, 8, 3]
    >>> [out.texts[0][s:e] for s, e in out.offsets[0].tolist() if s >= 0]
    ['The', 'Café', ',', 'great', 'est', '!']
    >>> out.word_ids[0].tolist()
    [-1, 0, 1, 2, 3, 3, 4, -1]
    """

    def __init__(
        self,
        vocab: Sequence[str] | str | os.PathLike,
        sequence_length: int = 128,
        lower_case: bool = True,
        add_special_tokens: bool = True,
        pad_token: str = "[PAD]",
        unknown_token: str = "[UNK]",
        cls_token: str = "[CLS]",
        sep_token: str = "[SEP]",
    ):
        if isinstance(vocab, (str, os.PathLike)):
            from kerastrace.text.vocabulary import load_vocabulary

            vocab = load_vocabulary(vocab)
        if not isinstance(vocab, Sequence) or not all(isinstance(t, str) and t for t in vocab):
            raise invalid("vocab", "a list of non-empty token strings or a vocab file path", vocab)
        self.vocab = list(vocab)
        if len(set(self.vocab)) != len(self.vocab):
            raise invalid(
                "vocab", "distinct tokens", f"a list of {len(self.vocab)} tokens with duplicates"
            )
        self.sequence_length = check_positive_int("sequence_length", sequence_length)
        self.lower_case = check_bool("lower_case", lower_case)
        self.add_special_tokens = check_bool("add_special_tokens", add_special_tokens)
        if self.add_special_tokens and self.sequence_length < 2:
            raise invalid(
                "sequence_length",
                "an integer >= 2 when `add_special_tokens=True` (room for [CLS] and [SEP])",
                sequence_length,
            )
        self.pad_token = pad_token
        self.unknown_token = unknown_token
        self.cls_token = cls_token
        self.sep_token = sep_token
        self._index = {t: i for i, t in enumerate(self.vocab)}
        needed = {"pad_token": pad_token, "unknown_token": unknown_token}
        if self.add_special_tokens:
            needed.update(cls_token=cls_token, sep_token=sep_token)
        for arg, token in needed.items():
            if token not in self._index:
                raise invalid(
                    arg,
                    "a token present in `vocab`",
                    token,
                    hint="Build the vocabulary with it in `reserved_tokens`",
                )
        self.pad_id = self._index[pad_token]
        self.unknown_id = self._index[unknown_token]
        self.cls_id = self._index.get(cls_token, -1)
        self.sep_id = self._index.get(sep_token, -1)

        tft = lazy.tensorflow_text()
        with tf.init_scope():
            self._wordpiece = tft.FastWordpieceTokenizer(
                vocab=self.vocab,
                suffix_indicator="##",
                max_bytes_per_word=100,
                token_out_type=tf.int32,
                unknown_token=unknown_token,
                no_pretokenization=True,
            )
        spec = [tf.TensorSpec([None], tf.string)]
        self._ragged_fn = tf_compat.function(self._ragged_tokens, input_signature=spec, autograph=False)
        self._dense_fn = tf_compat.function(self._dense_tokens, input_signature=spec, autograph=False)

    # ------------------------------------------------------------------ graph
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def _max_pieces(self) -> int:
        return self.sequence_length - (2 if self.add_special_tokens else 0)

    def _ragged_tokens(self, strings):
        """(B,) strings -> ragged (B, N) ids, original byte starts/ends, word ids.

        Works on flat values rather than ragged broadcasting: tracing stays fast.
        """
        words, w_start, _, n2o = pre.split_words_with_offsets(strings, self.lower_case)
        ids, t_start, t_end = self._wordpiece.tokenize_with_offsets(words)  # (B, W, T)
        pieces_per_word = ids.values.row_lengths()  # (total words,)
        pieces_per_text = tf.math.unsorted_segment_sum(
            pieces_per_word, words.value_rowids(), num_segments=words.nrows()
        )
        flat_ids = tf.RaggedTensor.from_row_lengths(ids.flat_values, pieces_per_text)
        # Byte offsets into the normalized text, then through the normalizer's map.
        word_start = tf.repeat(w_start.flat_values, pieces_per_word)
        text_of_piece = flat_ids.value_rowids()
        base = tf.gather(n2o.row_splits, text_of_piece)
        o_start = tf.gather(n2o.flat_values, base + word_start + t_start.flat_values)
        o_end = tf.gather(n2o.flat_values, base + word_start + t_end.flat_values)
        # Word index within its text.
        word_in_text = tf.range(tf.shape(words.flat_values, out_type=tf.int64)[0]) - tf.gather(
            words.row_splits, words.value_rowids()
        )
        word_ids = tf.cast(tf.repeat(word_in_text, pieces_per_word), tf.int32)
        like = flat_ids.with_flat_values
        return flat_ids, like(o_start), like(o_end), like(word_ids)

    def _dense_tokens(self, strings):
        flat_ids = self._ragged_tokens(strings)[0]
        pad = tf.constant(self.pad_id, tf.int32)
        body = flat_ids.to_tensor(default_value=pad, shape=[None, self._max_pieces])
        lengths = tf.minimum(flat_ids.row_lengths(), self._max_pieces)
        if self.add_special_tokens:
            n = tf.shape(body)[0]
            cls = tf.fill([n, 1], tf.constant(self.cls_id, tf.int32))
            body = tf.concat([cls, body, tf.fill([n, 1], pad)], axis=1)
            positions = tf.range(self.sequence_length, dtype=tf.int64)[None, :]
            is_sep = tf.equal(positions, lengths[:, None] + 1)
            body = tf.where(is_sep, tf.constant(self.sep_id, tf.int32), body)
            lengths = lengths + 2
        mask = tf.sequence_mask(lengths, self.sequence_length)
        return body, mask

    def tf_tokenize(self, strings) -> tuple[tf.Tensor, tf.Tensor]:
        """Tokenize with TensorFlow ops only (for `tf.data` and `tf.function`).

        Args:
            strings: a string tensor of shape `()` or `(B,)`.

        Returns:
            `(ids, mask)`: int32 ids and bool mask of shape `(L,)` or `(B, L)`,
            identical to `tokenize(...).ids` / `.mask`. Truncation is silent here.

        Raises:
            ValueError: if `strings` has rank > 1.

        Example:

        >>> import tensorflow as tf
        >>> from kerastrace.text import Tokenizer
        >>> tok = Tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "film"],
        ...                 sequence_length=5)
        >>> ds = tf.data.Dataset.from_tensor_slices(["Good film", "bad"])
        >>> [ids.numpy().tolist() for ids, mask in ds.map(tok.tf_tokenize)]
        [[2, 4, 5, 3, 0], [2, 1, 3, 0, 0]]
        """
        strings = tf.convert_to_tensor(strings, dtype=tf.string)
        rank = strings.shape.rank
        # Eagerly, run the compiled function; while tracing (tf.data, tf.function)
        # build the ops inline so the caller's graph optimizations apply.
        fn = self._dense_fn if tf.executing_eagerly() else self._dense_tokens
        if rank == 0:
            ids, mask = fn(tf.reshape(strings, [1]))
            return ids[0], mask[0]
        if rank != 1:
            raise ValueError(
                "Received an invalid value for argument `strings`, expected a string "
                f"tensor of rank 0 or 1. Received: strings with shape {strings.shape}"
            )
        return fn(strings)

    # ------------------------------------------------------------------ eager
    def tokenize(self, strings: str | Sequence[str]) -> TokenizedText:
        """Tokenize Python strings, with character offsets and word alignment.

        Args:
            strings: one string or a sequence (list, numpy array, 1-D string
                tensor) of strings; bytes are decoded as UTF-8. A single string
                gives a batch of one.

        Returns:
            A `TokenizedText` with ids, mask, character offsets, token strings,
            word ids and words (see its documentation). Special tokens and
            padding have offsets `(-1, -1)` and word id -1. An empty string
            gives `[CLS] [SEP]` followed by padding.

        Warns:
            UserWarning: (via `warnings.warn`) when some strings are longer
            than `sequence_length` and get truncated.

        Raises:
            TypeError: if `strings` are not strings.
        """
        texts = pre.as_string_list(strings, "strings")
        batch = len(texts)
        L = self.sequence_length
        ids = np.full((batch, L), self.pad_id, dtype=np.int32)
        mask = np.zeros((batch, L), dtype=bool)
        offsets = np.full((batch, L, 2), -1, dtype=np.int32)
        word_ids = np.full((batch, L), -1, dtype=np.int32)
        truncated = np.zeros(batch, dtype=bool)
        num_pieces = np.zeros(batch, dtype=np.int32)
        tokens, words, word_offsets = [], [], []
        if batch:
            r_ids, r_start, r_end, r_word = self._ragged_fn(tf.constant(texts, dtype=tf.string))
            splits = r_ids.row_splits.numpy()
            f_ids = r_ids.flat_values.numpy()
            f_start = r_start.flat_values.numpy()
            f_end = r_end.flat_values.numpy()
            f_word = r_word.flat_values.numpy()
        first = 1 if self.add_special_tokens else 0
        keep_max = self._max_pieces
        for b, text in enumerate(texts):
            lo, hi = splits[b], splits[b + 1]
            n = int(hi - lo)
            num_pieces[b] = n
            floor, ceil = pre.byte_to_char_maps(text)
            starts = floor[f_start[lo:hi]]
            ends = np.maximum(ceil[f_end[lo:hi]], np.minimum(starts + 1, len(text)))
            wid = f_word[lo:hi]
            n_words = int(wid[-1]) + 1 if n else 0
            w_spans = []
            if n_words:
                w_lo = np.full(n_words, np.iinfo(np.int64).max, dtype=np.int64)
                w_hi = np.zeros(n_words, dtype=np.int64)
                np.minimum.at(w_lo, wid, starts)
                np.maximum.at(w_hi, wid, ends)
                w_spans = list(zip(w_lo.tolist(), w_hi.tolist()))
            words.append([text[s:e] for s, e in w_spans])
            word_offsets.append(w_spans)
            keep = min(n, keep_max)
            truncated[b] = n > keep_max
            sl = slice(first, first + keep)
            ids[b, sl] = f_ids[lo : lo + keep]
            offsets[b, sl, 0] = starts[:keep]
            offsets[b, sl, 1] = ends[:keep]
            word_ids[b, sl] = wid[:keep]
            length = keep
            if self.add_special_tokens:
                ids[b, 0] = self.cls_id
                ids[b, keep + 1] = self.sep_id
                length += 2
            mask[b, :length] = True
            tokens.append([self.vocab[i] for i in ids[b].tolist()])
        if truncated.any():
            warnings.warn(
                f"{int(truncated.sum())} of {batch} strings had more wordpieces than fit "
                f"in sequence_length={L} ({keep_max} wordpieces"
                f"{' + [CLS]/[SEP]' if self.add_special_tokens else ''}; the longest had "
                f"{int(num_pieces.max())}) and were truncated. `TokenizedText.truncated` "
                "marks them.",
                UserWarning,
                stacklevel=2,
            )
        return TokenizedText(
            texts=texts,
            ids=ids,
            mask=mask,
            offsets=offsets,
            tokens=tokens,
            word_ids=word_ids,
            words=words,
            word_offsets=word_offsets,
            truncated=truncated,
            num_wordpieces=num_pieces,
        )

    # ------------------------------------------------------------------ misc
    def token_to_id(self, token: str) -> int:
        """The id of `token`, or the `[UNK]` id when it is not in the vocabulary."""
        return self._index.get(token, self.unknown_id)

    def id_to_token(self, token_id: int) -> str:
        """The token string of `token_id`."""
        if not 0 <= int(token_id) < len(self.vocab):
            raise invalid("token_id", f"an integer in [0, {len(self.vocab)})", token_id)
        return self.vocab[int(token_id)]

    def get_config(self) -> dict:
        """The constructor arguments (vocabulary included) as a JSON-able dict."""
        return {
            "vocab": list(self.vocab),
            "sequence_length": self.sequence_length,
            "lower_case": self.lower_case,
            "add_special_tokens": self.add_special_tokens,
            "pad_token": self.pad_token,
            "unknown_token": self.unknown_token,
            "cls_token": self.cls_token,
            "sep_token": self.sep_token,
        }

    @classmethod
    def from_config(cls, config: dict) -> Tokenizer:
        return cls(**config)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, sequence_length={self.sequence_length}, "
            f"lower_case={self.lower_case}, add_special_tokens={self.add_special_tokens})"
        )
