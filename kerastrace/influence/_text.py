"""TracIn for text classifiers: training sentences behind a prediction (CLI, demo)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from kerastrace._utils import instrument
from kerastrace._utils import validation as v
from kerastrace.influence._tracin import TracIn


def _token_ids(tokenizer, texts):
    return np.concatenate(
        [np.asarray(tokenizer.tokenize(texts[i : i + 1024]).ids) for i in range(0, len(texts), 1024)]
    )


def _text_inputs(model, ids):
    """Token ids as the model takes them: the ids, or a keras-hub dict (pad id 0)."""
    return instrument.token_inputs(model, ids, np.asarray(ids) != 0)


def influence_for_texts(
    model,
    tokenizer,
    train_texts: Sequence[str],
    train_labels: Sequence[int],
    queries: Sequence[str],
    checkpoints,
    k: int = 3,
    *,
    learning_rates=None,
    layers=None,
    projection_dim: int | None = None,
    loss_fn=None,
    index_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
) -> list[dict]:
    """The training sentences that most supported and opposed each query's prediction.

    Tokenizes the texts with `tokenizer.tokenize(...).ids` (pad id 0), builds
    a TracIn index of the training sentences over `checkpoints` (or reuses
    the finished one in `index_dir`) and ranks them for the model's
    predicted class of each query.

    Args:
        model: A token-id Keras classifier, or a keras-hub text classifier
            (it gets `{"token_ids", "padding_mask", "segment_ids"}`).
        tokenizer: A `kerastrace.text.Tokenizer` (anything with
            `tokenize(texts).ids`).
        train_texts: The training sentences, in training-data order.
        train_labels: Their labels (TracIn differentiates the training loss).
        queries: The sentences whose predictions are explained.
        checkpoints: See `TracIn` (a directory or a list of files).
        k: Proponents and opponents per query.
        learning_rates: See `TracIn`.
        layers: See `TracIn` (default: the last layer with weights).
        projection_dim: See `TracIn`.
        loss_fn: See `TracIn` (default: the model's compiled loss).
        index_dir: Keep the training-gradient index here (built once,
            reused by later calls with the same settings).
        batch_size: Sentences per batch.

    Returns:
        One dict per query: `{"query", "predicted", "proponents": [...],
        "opponents": [...]}`, each entry `{"rank", "index", "text", "label",
        "score"}`, strongest first.

    Raises:
        ValueError: for empty texts, missing labels, or the errors of `TracIn`.
    """
    k = v.check_positive_int("k", k)
    train_texts = [str(t) for t in train_texts]
    queries = [queries] if isinstance(queries, str) else [str(q) for q in queries]
    if not train_texts:
        raise ValueError(
            "Received an invalid value for argument `train_texts`: it is empty (no training "
            "sentences to attribute to)."
        )
    if not queries:
        raise ValueError("Received an invalid value for argument `queries`: it is empty.")
    if train_labels is None or len(train_labels) != len(train_texts):
        n = None if train_labels is None else len(train_labels)
        raise ValueError(
            "Received an invalid value for argument `train_labels`: TracIn needs one label per "
            f"training sentence ({len(train_texts)}). Received: {n} labels"
        )
    labels = np.asarray(train_labels)
    tracin = TracIn(
        model, checkpoints, learning_rates=learning_rates, loss_fn=loss_fn, layers=layers,
        projection_dim=projection_dim, batch_size=batch_size,
    )  # fmt: skip
    train_inputs = _text_inputs(model, _token_ids(tokenizer, train_texts))
    tracin.build_index(train_inputs, labels, output_dir=index_dir)
    query_inputs = _text_inputs(model, _token_ids(tokenizer, queries))
    pro, opp = tracin.proponents_and_opponents(query_inputs, k=min(k, len(train_texts)))

    def rows(res, q):
        return [
            {
                "rank": r + 1,
                "index": int(j),
                "text": train_texts[int(j)],
                "label": labels[int(j)].item(),
                "score": float(res.scores[q, r]),
            }
            for r, j in enumerate(res.indices[q])
        ]

    return [
        {
            "query": text,
            "predicted": int(pro.test_labels[q]),
            "proponents": rows(pro, q),
            "opponents": rows(opp, q),
        }
        for q, text in enumerate(queries)
    ]
