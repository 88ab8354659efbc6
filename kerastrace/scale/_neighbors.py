"""Example-based explanations: nearest training examples in a layer's representation."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from kerastrace._utils import validation as v
from kerastrace.scale import _store
from kerastrace.scale._attribute import _flat_features, split_element

_METRICS = ("cosine", "l2")


class NeighborResult(NamedTuple):
    """Nearest neighbours of a batch of queries, best first.

    Attributes:
        indices: `(Q, k)` int64 positions in the index (dataset order).
        similarities: `(Q, k)` float32: cosine similarity (`metric="cosine"`)
            or the negative L2 distance (`metric="l2"`), so larger is closer
            for both.
        labels: `(Q, k)` labels of the neighbours, or None when the index has
            no labels.
    """

    indices: np.ndarray
    similarities: np.ndarray
    labels: np.ndarray | None


def _as_layer(model, layer):
    if isinstance(layer, str):
        if not isinstance(model, keras.Model):
            raise TypeError(
                "Received an invalid value for argument `layer_or_fn`: a layer name needs a "
                f"Keras model. Received: layer_or_fn={layer!r}"
            )
        try:
            return model.get_layer(layer)
        except ValueError:
            names = [lay.name for lay in model.layers]
            raise ValueError(
                f"Received an invalid value for argument `layer_or_fn`: no layer named "
                f"{layer!r}; the model's layers are {names}. Received: layer_or_fn={layer!r}"
            ) from None
    return layer


def _pool(h, position, ids):
    h = np.asarray(h, np.float32)
    if h.ndim == 2:
        return h
    if h.ndim != 3:
        return h.reshape(h.shape[0], -1)
    if position is None:
        return h.reshape(h.shape[0], -1)
    if isinstance(position, str):  # "mean": mean over real tokens
        if ids is not None and np.issubdtype(ids.dtype, np.integer) and ids.shape == h.shape[:2]:
            m = (ids != 0).astype(np.float32)[..., None]
        else:
            m = np.ones(h.shape[:2] + (1,), np.float32)
        return (h * m).sum(1) / np.maximum(m.sum(1), 1.0)
    return h[:, position, :]


def representation_fn(model, layer_or_fn, position=0) -> Callable:
    """`fn(batch_inputs) -> (B, D)` float32 representations.

    Args:
        model: The Keras model (may be None with a callable `layer_or_fn`).
        layer_or_fn: A layer of `model` (or its name): its (first) output is
            read through a sub-model `keras.Model(model.inputs, layer.output)`;
            or a callable `fn(inputs) -> (B, D)` or `(B, T, D)`.
        position: For `(B, T, D)` outputs: the position to keep (0 is
            `[CLS]`), `"mean"` (mean over non-pad tokens, pad id 0) or None
            (flatten).
    """
    if position is not None and not (
        (isinstance(position, str) and position == "mean")
        or (isinstance(position, int) and not isinstance(position, bool))
    ):
        raise v.invalid("position", "an int, 'mean' or None", position)
    layer = _as_layer(model, layer_or_fn)
    if isinstance(layer, keras.layers.Layer):
        if not isinstance(model, keras.Model):
            raise TypeError(
                "Received an invalid value for argument `model`: reading a layer needs a "
                f"functional Keras model. Received: model={model!r}"
            )
        try:
            out = layer.output
        except (AttributeError, ValueError) as e:
            raise ValueError(
                f"Received an invalid value for argument `layer_or_fn`: layer {layer.name!r} "
                f"has no symbolic output ({e}); pass a callable instead."
            ) from None
        if isinstance(out, (list, tuple)):
            out = out[0]
        inputs = model.inputs
        sub = keras.Model(inputs[0] if len(inputs) == 1 else inputs, out)
        call = tf.function(lambda x: sub(x, training=False), reduce_retracing=True)
    elif callable(layer):
        call = layer
    else:
        raise TypeError(
            "Received an invalid value for argument `layer_or_fn`, expected a layer, a layer "
            f"name or a callable. Received: layer_or_fn={layer_or_fn!r}"
        )

    def fn(inputs):
        xs = _flat_features(inputs)
        x = xs[0] if len(xs) == 1 else tuple(xs)
        h = call(x)
        h = h.numpy() if hasattr(h, "numpy") else np.asarray(h)
        return _pool(h, position, np.asarray(xs[0]))

    return fn


def _batches(data, labels, batch_size):
    """Yield `(features, labels)` batches from a dataset or arrays."""
    if isinstance(data, tf.data.Dataset):
        if labels is not None:
            raise ValueError(
                "Received an invalid value for argument `labels`: with a tf.data.Dataset "
                "the labels come from its `(features, labels)` elements. Received labels"
            )
        for element in data:
            x, y = split_element(element)
            yield x, None if y is None else np.asarray(y)
        return
    xs = _flat_features(data)
    xs = tuple(np.asarray(x) for x in xs)
    n = xs[0].shape[0]
    y = None if labels is None else np.asarray(labels)
    if y is not None and y.shape[0] != n:
        raise ValueError(
            f"Received an invalid value for argument `labels`: {y.shape[0]} labels for {n} "
            "examples."
        )
    for i in range(0, n, batch_size):
        part = tuple(x[i : i + batch_size] for x in xs)
        yield part[0] if len(part) == 1 else part, None if y is None else y[i : i + batch_size]


class NeighborIndex:
    """Exact nearest-neighbour index over representations of a dataset.

    Built in batches from a model layer (e.g. the `[CLS]` output of the last
    `TransformerBlock`) or any callable; queried with exact search (a
    matrix product and `tf.math.top_k` per chunk of queries), cosine or L2.

    Args:
        embeddings: `(N, D)` representations.
        labels: Optional `(N,)` labels.
        metric: `"cosine"` or `"l2"`.
        embed_fn: Optional `fn(inputs) -> (N, D)` used by `query`.

    Example:

    >>> import numpy as np
    >>> from kerastrace.scale import NeighborIndex
    >>> index = NeighborIndex(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]),
    ...                       labels=np.array([0, 1, 1]))
    >>> res = index.query_embeddings(np.array([[2.0, 0.1]]), k=2)
    >>> res.indices.tolist(), res.labels.tolist()
    ([[0, 2]], [[0, 1]])
    """

    def __init__(self, embeddings, labels=None, metric: str = "cosine", embed_fn=None):
        self.metric = v.check_one_of("metric", metric, _METRICS)
        emb = np.asarray(embeddings, np.float32)
        if emb.ndim != 2 or emb.shape[0] == 0:
            raise ValueError(
                "Received an invalid value for argument `embeddings`, expected a non-empty "
                f"(N, D) array. Received: embeddings with shape {emb.shape}"
            )
        if not np.all(np.isfinite(emb)):
            raise ValueError(
                "Received an invalid value for argument `embeddings`: it contains NaN or inf."
            )
        self.embeddings = emb
        self.labels = None if labels is None else np.asarray(labels)
        if self.labels is not None and self.labels.shape[0] != emb.shape[0]:
            raise ValueError(
                f"Received an invalid value for argument `labels`: {self.labels.shape[0]} "
                f"labels for {emb.shape[0]} embeddings."
            )
        self.embed_fn = embed_fn
        self._keys = self._prepare(emb)
        self._sq = (emb.astype(np.float64) ** 2).sum(1).astype(np.float32)

    def _prepare(self, e):
        if self.metric == "cosine":
            norm = np.linalg.norm(e, axis=1, keepdims=True)
            return (e / np.where(norm > 0, norm, 1.0)).astype(np.float32)
        return e

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @classmethod
    def build(
        cls,
        model,
        layer_or_fn,
        data,
        labels=None,
        *,
        metric: str = "cosine",
        batch_size: int = 64,
        position: int | str | None = 0,
        progress: bool = False,
    ) -> NeighborIndex:
        """Compute the representations of `data` in batches and index them.

        Args:
            model: A functional Keras model (or None with a callable).
            layer_or_fn: A layer of `model` or its name (e.g. `"block_1"`: its
                first output, the hidden states), or a callable
                `fn(inputs) -> (B, D)` / `(B, T, D)`.
            data: A batched `tf.data.Dataset` (`x` or `(x, y)` elements; the
                labels are kept), or an array (a tuple for several inputs).
            labels: Labels of array `data`.
            metric: `"cosine"` or `"l2"`.
            batch_size: Batch size for array `data`.
            position: For `(B, T, D)` representations: the position kept
                (0: `[CLS]`), `"mean"` over non-pad tokens, or None (flatten).
            progress: Show a `keras.utils.Progbar`.

        Returns:
            A `NeighborIndex` whose `query` embeds new inputs the same way.

        Raises:
            ValueError: for empty data, an unknown layer or invalid arguments.
        """
        v.check_one_of("metric", metric, _METRICS)
        batch_size = v.check_positive_int("batch_size", batch_size)
        fn = representation_fn(model, layer_or_fn, position)
        bar = keras.utils.Progbar(None, unit_name="batch") if progress else None
        embs, labs = [], []
        for x, y in _batches(data, labels, batch_size):
            embs.append(fn(x))
            if y is not None:
                labs.append(y)
            if bar is not None:
                bar.add(1)
        if not embs:
            raise ValueError("Received an invalid value for argument `data`: it is empty.")
        lab = np.concatenate(labs) if labs and len(labs) == len(embs) else None
        return cls(np.concatenate(embs), lab, metric=metric, embed_fn=fn)

    def attach(self, model, layer_or_fn, position: int | str | None = 0) -> NeighborIndex:
        """Set how `query` embeds inputs (e.g. after `load`). Returns self."""
        self.embed_fn = representation_fn(model, layer_or_fn, position)
        return self

    def query(self, inputs, k: int = 5, batch_size: int = 256) -> NeighborResult:
        """The `k` nearest indexed examples of each input.

        Args:
            inputs: Model inputs `(Q, ...)` (embedded like the index).
            k: Number of neighbours.
            batch_size: Queries embedded and searched per step.

        Returns:
            A `NeighborResult` `(indices, similarities, labels)`.

        Raises:
            ValueError: if the index cannot embed inputs (loaded from a file:
                call `attach` or use `query_embeddings`), or `k` is invalid.
        """
        if self.embed_fn is None:
            raise ValueError(
                "This NeighborIndex has no representation function (it was loaded from a "
                "file or built from embeddings): call `index.attach(model, layer)` first, or "
                "use `query_embeddings`."
            )
        batch_size = v.check_positive_int("batch_size", batch_size)
        q = np.concatenate([self.embed_fn(x) for x, _ in _batches(inputs, None, batch_size)])
        return self.query_embeddings(q, k, batch_size)

    def query_embeddings(self, embeddings, k: int = 5, batch_size: int = 256) -> NeighborResult:
        """Exact search for precomputed `(Q, D)` query representations."""
        k = v.check_positive_int("k", k)
        if k > len(self):
            raise v.invalid("k", f"at most the index size {len(self)}", k)
        q = np.asarray(embeddings, np.float32)
        if q.ndim != 2 or q.shape[1] != self.embeddings.shape[1]:
            raise ValueError(
                "Received an invalid value for argument `embeddings`, expected shape "
                f"(Q, {self.embeddings.shape[1]}). Received: shape {q.shape}"
            )
        keys = tf.constant(self._keys)
        sq = tf.constant(self._sq)
        idx, sim = [], []
        for i in range(0, q.shape[0], batch_size):
            chunk = self._prepare(q[i : i + batch_size])
            dots = tf.linalg.matmul(tf.constant(chunk), keys, transpose_b=True)
            if self.metric == "l2":
                qsq = tf.reduce_sum(tf.square(tf.constant(chunk)), axis=1, keepdims=True)
                dots = -tf.sqrt(tf.maximum(qsq - 2.0 * dots + sq[None, :], 0.0))
            top = tf.math.top_k(dots, k=k)
            idx.append(top.indices.numpy().astype(np.int64))
            sim.append(top.values.numpy())
        indices = np.concatenate(idx) if idx else np.zeros((0, k), np.int64)
        sims = np.concatenate(sim) if sim else np.zeros((0, k), np.float32)
        labels = None if self.labels is None else self.labels[indices]
        return NeighborResult(indices, sims, labels)

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to an `.npz` file (atomically)."""
        fields = {"embeddings": self.embeddings, "metric": np.array(self.metric)}
        if self.labels is not None:
            fields["labels"] = self.labels
        _store.atomic_write_bytes(os.fspath(path), lambda f: np.savez(f, **fields))

    @classmethod
    def load(cls, path: str | os.PathLike) -> NeighborIndex:
        """Read an index written by `save` (then `attach` a model to `query` inputs)."""
        with np.load(os.fspath(path), allow_pickle=False) as data:
            return cls(
                data["embeddings"],
                data["labels"] if "labels" in data.files else None,
                metric=str(data["metric"]),
            )


def _default_layer(model):
    from kerastrace.layers import TransformerBlock

    blocks = [lay for lay in model.layers if isinstance(lay, TransformerBlock)]
    if blocks:
        return blocks[-1]
    if len(model.layers) < 2:
        raise ValueError(
            "Received an invalid value for argument `layer`: the model has no "
            "TransformerBlock and too few layers to pick one; pass `layer=`."
        )
    return model.layers[-2]


def neighbors_for_texts(
    model: keras.Model,
    tokenizer,
    train_texts: Sequence[str],
    train_labels: Sequence[int] | None,
    queries: Sequence[str],
    k: int = 5,
    *,
    layer=None,
    metric: str = "cosine",
    position: int | str | None = 0,
    batch_size: int = 64,
) -> list[dict]:
    """Nearest training texts of each query text (what `kerastrace neighbors` prints).

    Tokenizes the texts with `tokenizer.tokenize(...).ids`, indexes the
    training texts in the representation of `layer` (default: the `[CLS]`
    output of the model's last `TransformerBlock`) and searches exactly.

    Args:
        model: A token-id Keras model.
        tokenizer: A `kerastrace.text.Tokenizer` (anything with
            `tokenize(texts).ids`).
        train_texts: The training texts to search.
        train_labels: Their labels, or None.
        queries: The query texts.
        k: Neighbours per query.
        layer: Layer (or name) whose output is the representation.
        metric: `"cosine"` or `"l2"`.
        position: Token position kept (0: `[CLS]`) or `"mean"`.
        batch_size: Texts per batch.

    Returns:
        One dict per query: `{"query": text, "neighbors": [{"rank", "index",
        "text", "label", "similarity"}, ...]}`, nearest first.

    Raises:
        ValueError: for empty texts or `k` larger than the training set.
    """
    train_texts = [str(t) for t in train_texts]
    queries = [queries] if isinstance(queries, str) else [str(q) for q in queries]
    if not train_texts:
        raise ValueError("Received an invalid value for argument `train_texts`: it is empty.")
    if not queries:
        raise ValueError("Received an invalid value for argument `queries`: it is empty.")
    labels = None if train_labels is None else np.asarray(train_labels)
    layer = _default_layer(model) if layer is None else layer

    def ids(texts):
        return np.concatenate(
            [
                np.asarray(tokenizer.tokenize(texts[i : i + 1024]).ids)
                for i in range(0, len(texts), 1024)
            ]
        )

    index = NeighborIndex.build(
        model, layer, ids(train_texts), labels,
        metric=metric, batch_size=batch_size, position=position,
    )  # fmt: skip
    res = index.query(ids(queries), k=k, batch_size=batch_size)
    out = []
    for qi, text in enumerate(queries):
        neigh = []
        for r in range(res.indices.shape[1]):
            j = int(res.indices[qi, r])
            neigh.append(
                {
                    "rank": r + 1,
                    "index": j,
                    "text": train_texts[j],
                    "label": None if labels is None else labels[j].item(),
                    "similarity": float(res.similarities[qi, r]),
                }
            )
        out.append({"query": text, "neighbors": neigh})
    return out
