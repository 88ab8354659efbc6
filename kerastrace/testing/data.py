"""Generated data sets whose right explanation is known.

Nothing here downloads: the corpora are made in code from a seed.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kerastrace._utils import validation as v

POSITIVE_WORDS = ("good", "great", "excellent", "wonderful", "superb", "delightful")
NEGATIVE_WORDS = ("bad", "awful", "terrible", "boring", "dreadful", "poor")
NEGATION_WORDS = ("not", "never")
#: Neutral words; some ("fine", "okay") sound like sentiment but do not decide the label.
FILLER_WORDS = (
    "the", "movie", "film", "plot", "acting", "was", "story", "really", "quite",
    "and", "it", "this", "a", "actors", "music", "scenes", "ending", "director",
    "felt", "overall", "seemed", "cast", "script", "fine", "okay", "long", "short",
    "camera", "dialogue", "pace", "very", "somewhat", "honestly", "i", "think",
)  # fmt: skip


@dataclasses.dataclass
class SentimentCorpus:
    """Review-like sentences with a planted sentiment word.

    Attributes:
        sentences: The sentences, lower case, words separated by one space.
        labels: `(N,)` int32, 1 for positive and 0 for negative.
        planted: `(N,)` int32, index (in whitespace-split words) of the word
            that decides the label.
        negated: `(N,)` bool, whether a negation word right before the
            planted word flips its polarity.
    """

    sentences: list[str]
    labels: np.ndarray
    planted: np.ndarray
    negated: np.ndarray

    def __len__(self) -> int:
        return len(self.sentences)


def make_sentiment_corpus(
    n: int,
    seed: int = 0,
    min_words: int = 5,
    max_words: int = 12,
    negation_rate: float = 0.0,
) -> SentimentCorpus:
    """Generate `n` sentences whose label is decided by one planted word.

    Each sentence is filler words with exactly one sentiment word inserted at
    a random position. The label is the polarity of that word, flipped when
    a negation word ("not", "never") stands right before it (with
    probability `negation_rate`). So the right explanation of every label is
    known: the planted word (and its negation).

    Args:
        n: Number of sentences, a positive integer.
        seed: Random seed; the same seed gives the same corpus.
        min_words: Minimum number of filler words.
        max_words: Maximum number of filler words.
        negation_rate: Probability of a negation before the planted word.

    Returns:
        A `SentimentCorpus`.

    Example:

    >>> corpus = make_sentiment_corpus(3, seed=1)
    >>> len(corpus), corpus.labels.dtype.name
    (3, 'int32')
    >>> words = corpus.sentences[0].split()
    >>> words[corpus.planted[0]] in POSITIVE_WORDS + NEGATIVE_WORDS
    True
    """
    n = v.check_positive_int("n", n)
    min_words = v.check_positive_int("min_words", min_words)
    max_words = v.check_positive_int("max_words", max_words)
    if max_words < min_words:
        raise v.invalid("max_words", f"an integer >= min_words={min_words}", max_words)
    negation_rate = v.check_probability("negation_rate", negation_rate, inclusive_high=True)
    rng = np.random.default_rng(seed)
    sentences, labels, planted, negated = [], [], [], []
    for _ in range(n):
        k = int(rng.integers(min_words, max_words + 1))
        words = [FILLER_WORDS[i] for i in rng.integers(0, len(FILLER_WORDS), size=k)]
        positive = bool(rng.integers(0, 2))
        pool = POSITIVE_WORDS if positive else NEGATIVE_WORDS
        word = pool[int(rng.integers(0, len(pool)))]
        pos = int(rng.integers(0, k + 1))
        neg = bool(rng.random() < negation_rate)
        if neg:
            words.insert(pos, NEGATION_WORDS[int(rng.integers(0, len(NEGATION_WORDS)))])
            pos += 1
        words.insert(pos, word)
        sentences.append(" ".join(words))
        labels.append(int(positive != neg))
        planted.append(pos)
        negated.append(neg)
    return SentimentCorpus(
        sentences=sentences,
        labels=np.asarray(labels, dtype="int32"),
        planted=np.asarray(planted, dtype="int32"),
        negated=np.asarray(negated, dtype=bool),
    )


@dataclasses.dataclass
class RecallCorpus:
    """Key-value recall prompts for a causal LM: the source of every answer is known.

    A prompt holds `n_pairs` pair tokens `"k3=v7"` (key 3 holds value 7) and
    filler words `"w1"`, shuffled, then a query token `"k3?"`; the answer, the
    next token, is `"v7"`. The right source of the answer is the position of
    the pair token of the queried key.

    Attributes:
        vocab: Token strings; id 0 is `"[PAD]"`.
        ids: `(N, T)` int32 prompt ids (no padding: every prompt has length T).
        answers: `(N,)` int32 id of the right next token.
        sources: `(N,)` int32 position of the pair token that holds the answer.
    """

    vocab: list
    ids: np.ndarray
    answers: np.ndarray
    sources: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def recall_vocabulary(n_keys: int = 8, n_filler: int = 8) -> list:
    """The vocabulary of `make_recall_corpus` (id 0 is `"[PAD]"`)."""
    pairs = [f"k{k}=v{val}" for k in range(n_keys) for val in range(n_keys)]
    queries = [f"k{k}?" for k in range(n_keys)]
    values = [f"v{val}" for val in range(n_keys)]
    filler = [f"w{i}" for i in range(n_filler)]
    return ["[PAD]", *pairs, *queries, *values, *filler]


def make_recall_corpus(
    n: int, n_pairs: int = 4, n_keys: int = 8, n_filler: int = 4, seed: int = 0
) -> RecallCorpus:
    """Generate `n` key-value recall prompts (see `RecallCorpus`).

    Args:
        n: Number of prompts.
        n_pairs: Key-value pairs per prompt (distinct keys).
        n_keys: Number of keys (and of values).
        n_filler: Filler words per prompt.
        seed: Random seed; the same seed gives the same corpus.

    Example:

    >>> c = make_recall_corpus(2, n_pairs=2, n_filler=1, seed=0)
    >>> [c.vocab[i] for i in c.ids[0]][-1].endswith("?"), c.ids.shape
    (True, (2, 4))
    >>> pair = c.vocab[c.ids[0][c.sources[0]]]
    >>> pair.split("=")[1] == c.vocab[c.answers[0]]
    True
    """
    n = v.check_positive_int("n", n)
    n_pairs = v.check_positive_int("n_pairs", n_pairs)
    n_keys = v.check_positive_int("n_keys", n_keys)
    n_filler = v.check_non_negative_int("n_filler", n_filler)
    if n_pairs > n_keys:
        raise v.invalid("n_pairs", f"at most n_keys={n_keys} (keys are distinct)", n_pairs)
    vocab = recall_vocabulary(n_keys)
    index = {t: i for i, t in enumerate(vocab)}
    rng = np.random.default_rng(seed)
    ids, answers, sources = [], [], []
    for _ in range(n):
        keys = rng.choice(n_keys, n_pairs, replace=False)
        vals = rng.integers(0, n_keys, n_pairs)
        toks = [f"k{k}=v{val}" for k, val in zip(keys, vals)]
        toks += [f"w{i}" for i in rng.integers(0, 8, n_filler)]
        order = rng.permutation(len(toks))
        toks = [toks[i] for i in order]
        q = int(rng.integers(n_pairs))
        toks.append(f"k{keys[q]}?")
        ids.append([index[t] for t in toks])
        answers.append(index[f"v{vals[q]}"])
        sources.append(int(np.flatnonzero(order == q)[0]))
    return RecallCorpus(
        vocab=vocab,
        ids=np.asarray(ids, np.int32),
        answers=np.asarray(answers, np.int32),
        sources=np.asarray(sources, np.int32),
    )
