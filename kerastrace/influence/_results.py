"""Plain result objects of TracIn queries."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from kerastrace._utils import validation as v


def _item(x):
    return x.item() if hasattr(x, "item") else x


def _write(text: str, path) -> str:
    if path is not None:
        with open(os.fspath(path), "w", encoding="utf-8") as f:
            f.write(text)
    return text


@dataclasses.dataclass
class Influencers:
    """The training examples that most supported or opposed each test prediction.

    Proponents have the largest positive TracIn scores (gradient descent on
    them lowered the test loss), opponents the most negative ones (they
    raised it).

    Attributes:
        kind: `"proponents"` or `"opponents"`.
        indices: `(Q, k)` int64 positions in the training data, strongest first.
        scores: `(Q, k)` float64 TracIn scores.
        test_labels: `(Q,)` the labels whose loss was differentiated for the
            test examples (the given ones, or the model's predictions).
        train_labels: `(Q, k)` labels of the chosen training examples, or
            None when the index holds no labels.
    """

    kind: str
    indices: np.ndarray
    scores: np.ndarray
    test_labels: np.ndarray
    train_labels: np.ndarray | None = None

    def to_dict(self) -> dict:
        """`{"kind", "queries": [{"test_label", "examples": [{rank, index, score, label}]}]}`."""
        queries = []
        for q in range(self.indices.shape[0]):
            examples = [
                {
                    "rank": r + 1,
                    "index": int(self.indices[q, r]),
                    "score": float(self.scores[q, r]),
                    "label": None if self.train_labels is None else _item(self.train_labels[q, r]),
                }
                for r in range(self.indices.shape[1])
            ]
            queries.append({"test_label": _item(self.test_labels[q]), "examples": examples})
        return {"kind": self.kind, "queries": queries}

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The `to_dict()` as JSON text; also written to `path` when given."""
        return _write(json.dumps(self.to_dict(), indent=2), path)


@dataclasses.dataclass
class SelfInfluence:
    """TracIn self-influence of training examples: `sum_c lr_c * |grad_c(z)|^2`.

    High self-influence marks examples the model had to work hardest to fit:
    mislabelled or unusual ones (Pruthi et al. 2020, section 4.1).

    Attributes:
        scores: `(N,)` float64 self-influence.
        losses: `(N,)` the loss of each example at the last checkpoint (the
            usual baseline ranking), or None.
        labels: `(N,)` labels, or None.

    Example:

    >>> import numpy as np
    >>> s = SelfInfluence(np.array([0.1, 5.0, 0.3, 2.0]), losses=np.array([0.2, 0.1, 0.3, 0.0]))
    >>> s.ranking().tolist(), s.recall([1, 3], fraction=0.5), s.recall([1, 3], 0.5, by="loss")
    ([1, 3, 2, 0], 1.0, 0.0)
    """

    scores: np.ndarray
    losses: np.ndarray | None = None
    labels: np.ndarray | None = None

    def _values(self, by: str) -> np.ndarray:
        v.check_one_of("by", by, ("self_influence", "loss"))
        if by == "loss":
            if self.losses is None:
                raise ValueError("Received an invalid value for argument `by`: no losses stored.")
            return np.asarray(self.losses)
        return np.asarray(self.scores)

    def ranking(self, by: str = "self_influence") -> np.ndarray:
        """Indices from the highest value to the lowest (`by`: `"self_influence"` or `"loss"`)."""
        return np.argsort(-self._values(by), kind="stable")

    def top(self, k: int, by: str = "self_influence") -> np.ndarray:
        """The `k` indices with the highest values."""
        k = v.check_positive_int("k", k)
        return self.ranking(by)[:k]

    def recall(self, flagged, fraction: float = 0.2, by: str = "self_influence") -> float:
        """Share of the `flagged` indices found in the top `fraction` of the ranking.

        E.g. with 10% of the labels flipped, the share of the flipped
        examples among the 20% with the highest self-influence (a random
        ranking finds `fraction` of them).
        """
        fraction = v.check_probability("fraction", fraction, inclusive_high=True)
        flagged = np.unique(np.asarray(flagged, np.int64))
        if flagged.size == 0:
            raise ValueError("Received an invalid value for argument `flagged`: it is empty.")
        n = len(self.scores)
        top = self.ranking(by)[: int(round(fraction * n))]
        return float(np.isin(flagged, top).mean())

    def to_dict(self) -> dict:
        return {
            "scores": np.asarray(self.scores).tolist(),
            "losses": None if self.losses is None else np.asarray(self.losses).tolist(),
            "labels": None if self.labels is None else np.asarray(self.labels).tolist(),
        }

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The `to_dict()` as JSON text; also written to `path` when given."""
        return _write(json.dumps(self.to_dict()), path)
