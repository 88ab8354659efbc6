"""The training-gradient index: per-checkpoint gradients in resumable `.npz` shards."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator

import keras
import numpy as np
import tensorflow as tf

from kerastrace._utils import store as _store

FORMAT = "kerastrace.influence.gradients"
FORMAT_VERSION = 1


# ------------------------------------------------------------------ data
def _numpy(value):
    return tf.nest.map_structure(
        lambda t: np.asarray(t.numpy() if hasattr(t, "numpy") else t), value
    )


def features(x):
    """Features as the model takes them: an array, a tuple of arrays, or a dict."""
    x = _numpy(x)
    if isinstance(x, list):
        x = tuple(x)
    if isinstance(x, tuple) and len(x) == 1:
        x = x[0]
    return x


def num_examples(x, arg) -> int:
    sizes = {int(a.shape[0]) if a.ndim else 0 for a in tf.nest.flatten(x)}
    if len(sizes) != 1:
        raise ValueError(
            f"Received an invalid value for argument `{arg}`: all inputs must have the same "
            f"number of examples. Received sizes {sorted(sizes)}"
        )
    return sizes.pop()


def iter_inputs(x, batch_size: int) -> Iterator:
    """Yield batches of model inputs (an array, a tuple of arrays or a dict)."""
    x = features(x)
    for i in range(0, num_examples(x, "inputs"), batch_size):
        yield tf.nest.map_structure(lambda a, i=i: a[i : i + batch_size], x)


def _split(element, arg):
    if isinstance(element, (tuple, list)) and len(element) in (2, 3):
        return element[0], element[1]
    raise ValueError(
        f"Received an invalid value for argument `{arg}`: TracIn needs the training labels; "
        "dataset elements must be `(x, y)` or `(x, y, sample_weight)` batches, with `x` an "
        "array, a tuple of arrays or a dict (keras-hub: {'token_ids', 'padding_mask', ...}). "
        f"Received elements of type {type(element).__name__}"
    )


def iter_batches(data, labels, batch_size: int, arg: str = "data") -> Iterator:
    """Yield `(start, features, labels)` numpy batches from a dataset or arrays.

    `data` is a batched `tf.data.Dataset` of `(x, y)` elements (`labels`
    must be None), or arrays: one array, a tuple of arrays, or a dict, with
    `labels` the matching `(N, ...)` array.
    """
    if isinstance(data, tf.data.Dataset):
        if labels is not None:
            raise ValueError(
                "Received an invalid value for argument `labels`: with a tf.data.Dataset the "
                "labels come from its `(x, y)` elements; pass labels=None."
            )
        start = 0
        for element in data:
            x, y = _split(element, arg)
            x, y = features(x), _numpy(y)
            n = num_examples(x, arg)
            yield start, x, y
            start += n
        return
    if labels is None:
        raise ValueError(
            "Received an invalid value for argument `labels`: TracIn differentiates the "
            f"training loss, which needs a label per example of `{arg}`. Pass labels=..., or "
            "a tf.data.Dataset of (x, y) batches."
        )
    x = features(data)
    y = _numpy(labels)
    n = num_examples(x, arg)
    n_y = num_examples(y, "labels")
    if n_y != n:
        raise ValueError(
            f"Received an invalid value for argument `labels`: {n_y} labels for {n} examples "
            f"of `{arg}`."
        )
    for i in range(0, n, batch_size):
        yield (
            i,
            tf.nest.map_structure(lambda a, i=i: a[i : i + batch_size], x),
            tf.nest.map_structure(lambda a, i=i: a[i : i + batch_size], y),
        )


def _slice(tree, lo):
    return tf.nest.map_structure(lambda a: a[lo:], tree)


# ------------------------------------------------------------------ store
def _shard_file(c: int, k: int) -> str:
    return f"checkpoint-{c:03d}-{_store.shard_name(k)}"


def _read_manifest(directory: str) -> dict | None:
    path = os.path.join(directory, _store.MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"Received an invalid value for argument `output_dir`: its manifest {path!r} "
            f"cannot be read ({exc}). Use a new directory."
        ) from None
    if manifest.get("format") != FORMAT:
        raise ValueError(
            f"Received an invalid value for argument `output_dir`: {path!r} is not the "
            "manifest of a kerastrace gradient index. Use a new directory."
        )
    return manifest


class GradientIndex:
    """Per-example training-loss gradients at every checkpoint, for TracIn queries.

    Built once by `TracIn.build_index`, then queried many times; with a
    directory, each checkpoint's gradients are `.npz` shards
    (`checkpoint-<c>-shard-<k>.npz`, fields `index`, `grads` `(n, D)`,
    `losses` `(n,)` and `labels`) described by `manifest.json`, and the
    build resumes after an interruption.

    Attributes:
        directory: The index directory, or None when held in memory.
        manifest: The manifest (a dict).
    """

    def __init__(self, directory: str | None, manifest: dict, memory: dict | None = None):
        self.directory = directory
        self.manifest = manifest
        self._memory = memory  # {checkpoint: [shard dicts]} when in memory
        self._cache: dict = {}

    @classmethod
    def open(cls, directory: str | os.PathLike) -> GradientIndex:
        """Open an index written by `TracIn.build_index(..., output_dir=directory)`.

        Raises:
            ValueError: if the directory holds no gradient index.
        """
        directory = os.fspath(directory)
        manifest = _read_manifest(directory)
        if manifest is None:
            raise ValueError(
                "Received an invalid value for argument `directory`: it holds no "
                f"{_store.MANIFEST}. Received: directory={directory!r}"
            )
        return cls(directory, manifest)

    @property
    def complete(self) -> bool:
        """Whether every checkpoint's gradients of the whole data set are stored."""
        return bool(self.manifest.get("complete", False))

    @property
    def num_checkpoints(self) -> int:
        return len(self.manifest["checkpoints"])

    @property
    def dim(self) -> int:
        """Length of each stored gradient (the projection dimension when projected)."""
        return int(self.manifest["dim"])

    @property
    def learning_rates(self) -> np.ndarray:
        return np.array([c["learning_rate"] for c in self.manifest["checkpoints"]], np.float64)

    def __len__(self) -> int:
        entry = self.manifest["checkpoints"][0]
        return int(sum(s["count"] for s in entry["shards"]))

    def iter_shards(self, checkpoint: int) -> Iterator[dict[str, np.ndarray]]:
        """Yield the shards of one checkpoint, in data order."""
        if self._memory is not None:
            yield from self._memory.get(checkpoint, [])
            return
        for entry in self.manifest["checkpoints"][checkpoint]["shards"]:
            yield _store.load_shard(os.path.join(self.directory, entry["file"]))

    def _field(self, checkpoint: int, name: str):
        key = (checkpoint, name)
        if key not in self._cache:
            parts = [s[name] for s in self.iter_shards(checkpoint) if name in s]
            self._cache[key] = _store.pad_concat(parts) if parts else None
        return self._cache[key]

    def gradients(self, checkpoint: int) -> np.ndarray:
        """`(N, D)` float32 gradients of every training example at one checkpoint."""
        return self._field(checkpoint, "grads")

    def losses(self, checkpoint: int = -1) -> np.ndarray:
        """`(N,)` training losses at one checkpoint (default: the last one)."""
        return self._field(checkpoint % self.num_checkpoints, "losses")

    @property
    def labels(self) -> np.ndarray | None:
        """The training labels, as stored."""
        return self._field(0, "labels")

    def _require_complete(self):
        if not self.complete:
            raise ValueError(
                "The gradient index is incomplete (its build was interrupted): call "
                "`TracIn.build_index` again with the same arguments to finish it."
            )

    def scores(self, test_grads: list[np.ndarray]) -> np.ndarray:
        """`(Q, N)` TracIn scores: `sum_c lr_c * test_grads[c] @ gradients(c).T`."""
        self._require_complete()
        q = int(test_grads[0].shape[0])
        out = np.zeros((q, len(self)), np.float64)
        for c, lr in enumerate(self.learning_rates):
            t = tf.constant(np.asarray(test_grads[c], np.float32))
            for shard in self.iter_shards(c):
                idx = shard["index"]
                dots = tf.linalg.matmul(t, tf.constant(shard["grads"]), transpose_b=True)
                out[:, idx[0] : idx[-1] + 1] += lr * dots.numpy().astype(np.float64)
        return out

    def self_influence(self) -> np.ndarray:
        """`(N,)`: `sum_c lr_c * |gradient(c)|^2` of every training example."""
        self._require_complete()
        out = np.zeros(len(self), np.float64)
        for c, lr in enumerate(self.learning_rates):
            for shard in self.iter_shards(c):
                g = shard["grads"].astype(np.float64)
                idx = shard["index"]
                out[idx[0] : idx[-1] + 1] += lr * np.einsum("nd,nd->n", g, g)
        return out

    def __repr__(self) -> str:
        where = self.directory if self.directory is not None else "memory"
        return (
            f"GradientIndex({len(self)} examples, {self.num_checkpoints} checkpoints, "
            f"dim={self.dim}, complete={self.complete}, at {where!r})"
        )


# ------------------------------------------------------------------ build
def _new_manifest(config, checkpoints, dim) -> dict:
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "config": config,
        "dim": int(dim),
        "checkpoints": [
            {**c.to_dict(), "shards": [], "complete": False} for c in checkpoints
        ],
        "complete": False,
    }


def _open_run(directory, config, checkpoints, dim, resume) -> dict:
    manifest = _new_manifest(config, checkpoints, dim)
    if directory is None:
        return manifest
    os.makedirs(directory, exist_ok=True)
    old = _read_manifest(directory)
    if old is None:
        return manifest
    if not resume:
        raise ValueError(
            "Received an invalid value for argument `output_dir`: it already holds a "
            "gradient index; with resume=False nothing is overwritten. Use a new directory, "
            f"delete this one, or pass resume=True. Received: output_dir={directory!r}"
        )
    if old["config"] != config:
        diff = sorted(k for k in config if old["config"].get(k) != config[k])
        raise ValueError(
            "Received an invalid value for argument `output_dir`: it holds a gradient index "
            f"built with other settings ({', '.join(diff)} differ: "
            f"{ {k: old['config'].get(k) for k in diff} } vs { {k: config[k] for k in diff} }). "
            f"Use a new directory. Received: output_dir={directory!r}"
        )
    return old


class _Writer:
    """Buffers per-batch results into shards: `.npz` files, or (in memory) one per batch."""

    def __init__(self, index: GradientIndex, checkpoint: int, shard_size: int, on_shard):
        self.index = index
        self.c = checkpoint
        self.shard_size = shard_size
        self.on_shard = on_shard
        self.buffer: list[dict] = []

    def add(self, part: dict):
        if self.index.directory is None:
            self._record(part)  # in memory a batch is a shard: nothing is copied
            return
        self.buffer.append(part)
        while self.buffered() >= self.shard_size:
            self.flush(self.shard_size)

    def buffered(self) -> int:
        return sum(len(p["index"]) for p in self.buffer)

    def flush_rest(self):
        if self.buffered():
            self.flush(self.buffered())

    def flush(self, n):
        parts, left, rest = [], n, []
        for p in self.buffer:
            m = len(p["index"])
            if left >= m:
                parts.append(p)
                left -= m
            elif left > 0:
                parts.append({k: a[:left] for k, a in p.items()})
                rest.append({k: a[left:] for k, a in p.items()})
                left = 0
            else:
                rest.append(p)
        self.buffer = rest
        self._record({k: _store.pad_concat([p[k] for p in parts]) for k in parts[0]})

    def _record(self, shard):
        index, entry = self.index, self.index.manifest["checkpoints"][self.c]
        k = len(entry["shards"])
        n = len(shard["index"])
        record = {"file": _shard_file(self.c, k), "start": int(shard["index"][0]), "count": n}
        if index.directory is not None:
            _store.write_shard(os.path.join(index.directory, record["file"]), shard)
        else:
            index._memory.setdefault(self.c, []).append(shard)
        entry["shards"].append(record)
        if index.directory is not None:
            _store.write_manifest(index.directory, index.manifest)
        index._cache = {}
        if self.on_shard is not None:
            self.on_shard(self.c, k)


def _labels_field(y):
    y = np.asarray(y) if not isinstance(y, (dict, tuple, list)) else None
    if y is None or not np.issubdtype(y.dtype, np.number):
        return None
    return y


def build_index(
    engine,
    loader,
    checkpoints,
    data,
    labels,
    *,
    config: dict,
    output_dir,
    shard_size: int,
    batch_size: int,
    resume: bool,
    progress: bool,
    on_shard: Callable[[int, int], None] | None,
) -> GradientIndex:
    """Compute and store every training example's gradient at every checkpoint."""
    directory = None if output_dir is None else os.fspath(output_dir)
    manifest = _open_run(directory, config, checkpoints, engine.out_dim, resume)
    index = GradientIndex(directory, manifest, None if directory is not None else {})
    if manifest.get("complete"):
        return index
    bar = keras.utils.Progbar(None, unit_name="batch") if progress else None
    counts = [
        sum(s["count"] for s in e["shards"]) for e in manifest["checkpoints"] if e["complete"]
    ]
    with loader.loading() as load:
        for c, ckpt in enumerate(checkpoints):
            entry = manifest["checkpoints"][c]
            if entry["complete"]:
                continue
            load(ckpt)
            n = _checkpoint_pass(engine, index, c, data, labels, shard_size, batch_size,
                                 on_shard, bar)  # fmt: skip
            if counts and n != counts[0]:
                raise ValueError(
                    "Received an invalid value for argument `data`: it gave "
                    f"{n} examples at checkpoint {c} but {counts[0]} before; the data must "
                    "be the same (and in the same order) on every pass (no reshuffling)."
                )
            counts.append(n)
            entry["complete"] = True
            if directory is not None:
                _store.write_manifest(directory, manifest)
    manifest["complete"] = True
    manifest["num_examples"] = counts[0]
    if directory is not None:
        _store.write_manifest(directory, manifest)
    return index


def _checkpoint_pass(engine, index, c, data, labels, shard_size, batch_size, on_shard, bar):
    entry = index.manifest["checkpoints"][c]
    n_done = sum(s["count"] for s in entry["shards"])
    writer = _Writer(index, c, shard_size, on_shard)
    pos = 0
    for start, x, y in iter_batches(data, labels, batch_size, "data"):
        b = num_examples(x, "data")
        pos = start + b
        if pos <= n_done or b == 0:
            continue
        lo = max(0, n_done - start)
        if lo:
            x, y = _slice(x, lo), _slice(y, lo)
        grads, losses = engine(x, y)
        part = {
            "index": np.arange(start + lo, pos, dtype=np.int64),
            "grads": np.asarray(grads, np.float32),
            "losses": np.asarray(losses, np.float32),
        }
        kept = _labels_field(y)
        if kept is not None:
            part["labels"] = kept
        writer.add(part)
        if bar is not None:
            bar.add(1)
    if pos == 0:
        raise ValueError(
            "Received an invalid value for argument `data`: it is empty (no training "
            "examples), so there is nothing to attribute to. Check the input pipeline."
        )
    if pos < n_done:
        raise ValueError(
            f"Received an invalid value for argument `data`: it has {pos} examples but the "
            f"index in `output_dir` already holds {n_done} for checkpoint {c}; it is not the "
            "same data."
        )
    writer.flush_rest()
    return pos
