"""Example-based explanations: nearest training examples in a layer's representation."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Sequence
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from kerastrace._utils import instrument, tf_compat
from kerastrace._utils import store as _store
from kerastrace._utils import validation as v
from kerastrace.scale._attribute import TOKEN_KEY, split_element, to_numpy

_METRICS = ("cosine", "l2")
_POSITIONS = ("cls", "last", "mean")
#: `{model: {layer path: tf.function}}`: one compiled reader per layer, held weakly.
_READERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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


# ------------------------------------------------------------ representation
def _check_position(position):
    if position is None or (isinstance(position, int) and not isinstance(position, bool)):
        return position
    if isinstance(position, str) and position in _POSITIONS:
        return position
    raise v.invalid("position", "an int, 'cls', 'last', 'mean' or None", position)


def _select_output(value, path):
    """The representation tensor of a captured layer output."""
    if isinstance(value, dict):  # a keras-hub backbone: its token-level output
        if "sequence_output" in value:
            return value["sequence_output"]
        raise ValueError(
            f"Received an invalid value for argument `layer_or_fn`: layer {path!r} returns a "
            f"dict with keys {list(value)}; pass the path of an inner layer or a callable."
        )
    return value


def _layer_reader(model, path, layer):
    """A cached `tf.function(inputs) -> output of call 0 of layer` (no sub-model)."""
    readers = _READERS.setdefault(model, {})
    fn = readers.get(path)
    if fn is not None:
        return fn
    model_ref, layer_ref = weakref.ref(model), weakref.ref(layer)

    def read(inputs):
        with instrument.capture(layer_ref(), call=0) as state:
            model_ref()(inputs, training=False)
        state.check(path, "layer_or_fn")
        return _select_output(state.values[0], path)

    fn = readers[path] = tf_compat.function(read, reduce_retracing=True)
    return fn


def _to_model_inputs(inputs):
    """Tensors in the structure the model is called with (a list for several inputs)."""
    if isinstance(inputs, dict):
        return {k: tf.convert_to_tensor(x) for k, x in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return [tf.convert_to_tensor(x) for x in inputs]
    return tf.convert_to_tensor(inputs)


def _real_tokens(inputs, pad_id, shape):
    """`(B, T)` bool, True on real tokens, or None when unknown for this output."""
    mask, ids = None, None
    if isinstance(inputs, dict):
        if "padding_mask" in inputs:
            mask = np.asarray(inputs["padding_mask"]).astype(bool)
        else:
            ids = inputs.get(TOKEN_KEY)
    else:
        ids = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
    if mask is None and ids is not None and pad_id is not None:
        ids = np.asarray(ids)
        if np.issubdtype(ids.dtype, np.integer) and ids.ndim == 2:
            mask = ids != pad_id
    return mask if mask is not None and mask.shape == tuple(shape) else None


def _pool(h, position, mask):
    """`(B, D)` from a `(B, D)` or `(B, T, D)` representation (see `representation_fn`)."""
    h = np.asarray(h, np.float32)
    if h.ndim == 2:
        return h
    if h.ndim != 3 or position is None:
        return h.reshape(h.shape[0], -1)
    b, t = h.shape[:2]
    if isinstance(position, int):
        if not -t <= position < t:
            raise v.invalid("position", f"a position in [{-t}, {t}) for sequences of {t}", position)
        return h[:, position, :]
    if position == "mean":
        m = np.ones((b, t), bool) if mask is None else mask
        m = m.astype(np.float32)[..., None]
        return (h * m).sum(1) / np.maximum(m.sum(1), 1.0)
    if mask is None:
        idx = np.full(b, 0 if position == "cls" else t - 1)
    elif position == "cls":
        idx = np.argmax(mask, axis=1)
    else:
        idx = t - 1 - np.argmax(mask[:, ::-1], axis=1)
    return h[np.arange(b), idx, :]


def representation_fn(model, layer_or_fn, position=0, *, pad_id: int | None = 0) -> Callable:
    """`fn(batch_inputs) -> (B, D)` float32 representations.

    A layer's output is read during the model's own forward pass (call 0 of
    the layer, through `kerastrace._utils.instrument`) inside a cached
    `tf.function`; no sub-model is built, so this works for functional,
    sequential and subclassed models, layers nested inside other layers, and
    keras-hub models (whose backbones call their transformer layers inside
    themselves). Inputs are what the model takes: an array, a tuple, or a
    dict (keras-hub: `{"token_ids", "padding_mask", ...}`).

    Args:
        model: The Keras model (may be None with a callable `layer_or_fn`).
        layer_or_fn: A layer of `model`: the layer object, its path (e.g.
            `"bert_backbone/transformer_layer_1"`) or its name if unique;
            its (first) output is the representation (a keras-hub backbone's
            dict output gives its `"sequence_output"`). Or a callable
            `fn(inputs) -> (B, D)` or `(B, T, D)`.
        position: For `(B, T, D)` outputs: an int (the position kept; 0 is
            `[CLS]` for right-padded inputs), `"cls"` (the first real token),
            `"last"` (the last real token, for causal models), `"mean"`
            (mean over real tokens) or None (flatten). Real tokens come from
            a dict input's `"padding_mask"`, else from integer `(B, T)` ids
            (the dict's `"token_ids"`, or the first input) that differ from
            `pad_id`; when neither fits the output's `(B, T)`, every
            position counts as real.
        pad_id: The padding id of integer token inputs (None: no padding).

    Returns:
        A function of a batch of inputs (numpy arrays, tensors, a tuple or a
        dict) returning a `(B, D)` float32 numpy array.

    Raises:
        ValueError: for an unknown layer or an invalid `position`; a layer
            that the forward pass does not call is reported on the first call.
        TypeError: for a layer without a Keras model, or a `layer_or_fn`
            that is neither a layer nor a callable.

    Example:

    >>> import numpy as np, keras
    >>> from kerastrace.scale import representation_fn
    >>> inp = keras.Input((3,), dtype="int32")
    >>> h = keras.layers.Embedding(5, 2, name="emb")(inp)
    >>> model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.Flatten()(h)))
    >>> fn = representation_fn(model, "emb", position="mean")
    >>> ids = np.array([[1, 2, 0]])
    >>> table = model.get_layer("emb").embeddings.numpy()
    >>> bool(np.allclose(fn(ids), table[[1, 2]].mean(0), atol=1e-6))
    True
    """
    position = _check_position(position)
    if pad_id is not None:
        pad_id = v.check_non_negative_int("pad_id", pad_id)
    if isinstance(layer_or_fn, (str, keras.layers.Layer)):
        if not isinstance(model, keras.layers.Layer):
            raise TypeError(
                "Received an invalid value for argument `model`: reading a layer needs the "
                f"Keras model that calls it. Received: model={model!r}"
            )
        path, layer = instrument.resolve_layer(model, layer_or_fn, "layer_or_fn")
        reader = _layer_reader(model, path, layer)

        def call(inputs):
            return reader(_to_model_inputs(inputs))

    elif callable(layer_or_fn):
        call = layer_or_fn
    else:
        raise TypeError(
            "Received an invalid value for argument `layer_or_fn`, expected a layer, a layer "
            f"path or name, or a callable. Received: layer_or_fn={layer_or_fn!r}"
        )

    def fn(inputs):
        if isinstance(inputs, (tuple, list)):
            inputs = tuple(inputs) if len(inputs) > 1 else inputs[0]
        inputs = to_numpy(inputs)
        h = call(inputs)
        h = np.asarray(h.numpy() if hasattr(h, "numpy") else h)
        mask = _real_tokens(inputs, pad_id, h.shape[:2]) if h.ndim == 3 else None
        return _pool(h, position, mask)

    return fn


def _batches(data, labels, batch_size):
    """Yield `(features, labels)` batches from a dataset or arrays (a tuple or a dict)."""
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
    if isinstance(data, list):
        data = tuple(data)
    xs = to_numpy(data)
    sizes = {a.shape[0] if a.ndim else 0 for a in tf.nest.flatten(xs)}
    if len(sizes) != 1:
        raise ValueError(
            "Received an invalid value for argument `data`: all inputs must have the same "
            f"number of examples. Received: sizes {sorted(sizes)}"
        )
    n = sizes.pop()
    y = None if labels is None else np.asarray(labels)
    if y is not None and y.shape[0] != n:
        raise ValueError(
            f"Received an invalid value for argument `labels`: {y.shape[0]} labels for {n} "
            "examples."
        )
    for i in range(0, n, batch_size):
        part = tf.nest.map_structure(lambda a, i=i: a[i : i + batch_size], xs)
        yield part, None if y is None else y[i : i + batch_size]


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
        pad_id: int | None = 0,
        progress: bool = False,
    ) -> NeighborIndex:
        """Compute the representations of `data` in batches and index them.

        Args:
            model: A Keras model (functional, subclassed or keras-hub), or
                None with a callable.
            layer_or_fn: A layer of `model`: the object, its path (e.g.
                `"bert_backbone/transformer_layer_1"`) or its unique name
                (e.g. `"block_1"`: its first output, the hidden states); or a
                callable `fn(inputs) -> (B, D)` / `(B, T, D)`. See
                `representation_fn`.
            data: A batched `tf.data.Dataset` (`x` or `(x, y)` elements, `x`
                an array, a tuple or a dict such as keras-hub's
                `{"token_ids", "padding_mask", ...}`; the labels are kept),
                or arrays: one array, a tuple for several inputs, or a dict.
            labels: Labels of array `data`.
            metric: `"cosine"` or `"l2"`.
            batch_size: Batch size for array `data`.
            position: For `(B, T, D)` representations: the position kept (an
                int; 0 is `[CLS]`), `"cls"` (first real token), `"last"`
                (last real token), `"mean"` over real tokens, or None
                (flatten).
            pad_id: Padding id of integer token inputs, for the real-token
                mask when the inputs have no `"padding_mask"` (None: none).
            progress: Show a `keras.utils.Progbar`.

        Returns:
            A `NeighborIndex` whose `query` embeds new inputs the same way.

        Raises:
            ValueError: for empty data, an unknown layer or invalid arguments.
        """
        v.check_one_of("metric", metric, _METRICS)
        batch_size = v.check_positive_int("batch_size", batch_size)
        fn = representation_fn(model, layer_or_fn, position, pad_id=pad_id)
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

    def attach(
        self, model, layer_or_fn, position: int | str | None = 0, *, pad_id: int | None = 0
    ) -> NeighborIndex:
        """Set how `query` embeds inputs (e.g. after `load`), as in `build`. Returns self."""
        self.embed_fn = representation_fn(model, layer_or_fn, position, pad_id=pad_id)
        return self

    def query(self, inputs, k: int = 5, batch_size: int = 256) -> NeighborResult:
        """The `k` nearest indexed examples of each input.

        Args:
            inputs: Model inputs `(Q, ...)`: an array, a tuple or a dict
                (embedded like the index).
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
    """The last transformer block: the parent of the last attention layer."""
    from kerastrace.layers import TransformerBlock

    nodes = instrument.walk(model)
    blocks = [n.path for n in nodes if isinstance(n.layer, TransformerBlock)]
    if blocks:
        return blocks[-1]
    attention = list(instrument.attention_layers(model))
    if attention:
        parent = attention[-1].rpartition("/")[0]
        return parent or attention[-1]
    if len(model.layers) < 2:
        raise ValueError(
            "Received an invalid value for argument `layer`: the model has no "
            "attention layer and too few layers to pick one; pass `layer=`."
        )
    return model.layers[-2]


def _text_inputs(model, ids):
    """Token ids as the model takes them: the ids, or a keras-hub dict (pad id 0)."""
    return instrument.token_inputs(model, ids, np.asarray(ids) != 0)


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

    Tokenizes the texts with `tokenizer.tokenize(...).ids` (pad id 0), indexes
    the training texts in the representation of `layer` (default: the `[CLS]`
    output of the model's last transformer block, i.e. the last
    `TransformerBlock` or the layer holding the last attention layer) and
    searches exactly.

    Args:
        model: A token-id Keras model, or a keras-hub text model (it gets
            `{"token_ids", "padding_mask", "segment_ids"}` built from the ids).
        tokenizer: A `kerastrace.text.Tokenizer` (anything with
            `tokenize(texts).ids`).
        train_texts: The training texts to search.
        train_labels: Their labels, or None.
        queries: The query texts.
        k: Neighbours per query.
        layer: Layer (object, path or name) whose output is the representation.
        metric: `"cosine"` or `"l2"`.
        position: Token position kept (0: `[CLS]`), `"cls"`, `"last"` or `"mean"`.
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
        model, layer, _text_inputs(model, ids(train_texts)), labels,
        metric=metric, batch_size=batch_size, position=position,
    )  # fmt: skip
    res = index.query(_text_inputs(model, ids(queries)), k=k, batch_size=batch_size)
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
