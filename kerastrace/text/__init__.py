"""Text with tensorflow-text: WordPiece vocabularies, a tokenizer that keeps
character offsets into the user's strings, subword -> word alignment of
token scores (attributions, attention rows, rollout), and word (or span)
feature masks for the perturbation methods (`word_feature_mask`).

`tensorflow_text` is imported on first use (building a vocabulary or a
`Tokenizer`), not when this package is imported.
"""

from kerastrace.text.alignment import (
    WordScore,
    aggregate_to_characters,
    aggregate_to_spans,
    aggregate_to_words,
)
from kerastrace.text.features import word_feature_mask
from kerastrace.text.tokenizer import TokenizedText, Tokenizer
from kerastrace.text.vocabulary import (
    DEFAULT_RESERVED_TOKENS,
    build_vocabulary,
    load_vocabulary,
    save_vocabulary,
)

__all__ = [
    "DEFAULT_RESERVED_TOKENS",
    "TokenizedText",
    "Tokenizer",
    "WordScore",
    "aggregate_to_characters",
    "aggregate_to_spans",
    "aggregate_to_words",
    "build_vocabulary",
    "load_vocabulary",
    "save_vocabulary",
    "word_feature_mask",
]
