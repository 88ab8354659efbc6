"""Per-example results written as `.npz` shards plus a JSON manifest."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator

import numpy as np

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.npz"


def pad_concat(arrays: list[np.ndarray], fill=0) -> np.ndarray:
    """Concatenate along axis 0, zero-padding trailing axes to the largest shape.

    Batches of a `padded_batch` dataset can have different sequence lengths;
    they are padded at the end (with `fill`, the pad id for token ids) so the
    examples line up position by position.
    """
    if not arrays:
        raise ValueError("Nothing to concatenate.")
    if len(arrays) == 1:
        return arrays[0]
    rank = {a.ndim for a in arrays}
    if len(rank) != 1:
        raise ValueError(
            f"Cannot concatenate per-example arrays of different ranks: {sorted(rank)}."
        )
    full = tuple(max(a.shape[i] for a in arrays) for i in range(1, arrays[0].ndim))
    out = []
    for a in arrays:
        if a.shape[1:] != full:
            pad = [(0, 0)] + [(0, f - s) for f, s in zip(full, a.shape[1:])]
            a = np.pad(a, pad, constant_values=fill)
        out.append(a)
    return np.concatenate(out, axis=0)


def atomic_write_bytes(path: str, write) -> None:
    """Write through `write(fileobj)` to a temporary file, fsync, then `os.replace`."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_shard(path: str, fields: dict[str, np.ndarray]) -> None:
    atomic_write_bytes(path, lambda f: np.savez(f, **fields))


def write_manifest(directory: str, manifest: dict) -> None:
    text = json.dumps(manifest, indent=1, sort_keys=True).encode()
    atomic_write_bytes(os.path.join(directory, MANIFEST), lambda f: f.write(text))


def read_manifest(directory: str) -> dict | None:
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(
            f"Received an invalid value for argument `output_dir`: its manifest {path!r} "
            f"cannot be read ({e}). Use a new directory."
        ) from None
    if manifest.get("format") != "kerastrace.scale.attributions":
        raise ValueError(
            f"Received an invalid value for argument `output_dir`: {path!r} is not a "
            "kerastrace attribution manifest. Use a new directory."
        )
    return manifest


def load_shard(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


class AttributionStore:
    """Per-example attribution results, in dataset order, on disk or in memory.

    Returned by `attribute_dataset` and by `AttributionStore.open(directory)`.
    Each shard holds, for a contiguous range of examples, the arrays
    `index` (global example index), `attributions` (or `attributions_<i>` /
    `attributions_<key>` when several tuple/dict inputs are attributed),
    `targets` (-1 for a callable target), and, when available, `inputs` (the
    features of a single-input model, or the `"token_ids"` entry of dict
    features such as keras-hub's), `labels` and `delta` (convergence
    deltas).

    Attributes:
        directory: The output directory, or None for an in-memory store.
        manifest: The run's manifest (a dict; `manifest.json` on disk).

    Example:

    >>> import numpy as np, keras, tensorflow as tf
    >>> from kerastrace.attribution import Saliency
    >>> from kerastrace.scale import attribute_dataset
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> ds = tf.data.Dataset.from_tensor_slices(
    ...     (np.ones((5, 3), "float32"), np.array([0, 1, 0, 1, 1]))).batch(2)
    >>> store = attribute_dataset(Saliency(model), ds, progress=False)
    >>> len(store), store.load()["attributions"].shape, store.labels.tolist()
    (5, (5, 3), [0, 1, 0, 1, 1])
    """

    def __init__(self, directory: str | None, manifest: dict, shards: list | None = None):
        self.directory = directory
        self.manifest = manifest
        self._memory = shards  # list of dicts when in memory
        self._cache: dict | None = None

    @classmethod
    def open(cls, directory: str) -> AttributionStore:
        """Open the results written by `attribute_dataset(..., output_dir=directory)`.

        Args:
            directory: The output directory.

        Returns:
            An `AttributionStore`.

        Raises:
            ValueError: if the directory holds no manifest.
        """
        manifest = read_manifest(directory)
        if manifest is None:
            raise ValueError(
                "Received an invalid value for argument `directory`: it holds no "
                f"{MANIFEST}. Received: directory={directory!r}"
            )
        return cls(directory, manifest)

    @property
    def complete(self) -> bool:
        """Whether the whole dataset was processed (False after an interruption)."""
        return bool(self.manifest.get("complete", False))

    @property
    def num_shards(self) -> int:
        return len(self.manifest["shards"])

    def __len__(self) -> int:
        return int(sum(s["count"] for s in self.manifest["shards"]))

    def iter_shards(self) -> Iterator[dict[str, np.ndarray]]:
        """Yield the shards in dataset order, one dict of arrays each."""
        if self._memory is not None:
            yield from self._memory
            return
        for entry in self.manifest["shards"]:
            yield load_shard(os.path.join(self.directory, entry["file"]))

    def load(self) -> dict[str, np.ndarray]:
        """All shards concatenated in dataset order: `{field: (N, ...) array}`.

        Batches of different padded lengths are zero-padded at the end
        (token ids with the pad id 0).
        """
        if self._cache is None:
            shards = list(self.iter_shards())
            if not shards:
                self._cache = {}
            else:
                self._cache = {
                    k: pad_concat([s[k] for s in shards]) for k in shards[0] if k in shards[-1]
                }
        return self._cache

    def _field(self, name):
        return self.load().get(name)

    @property
    def attributions(self) -> np.ndarray:
        return self._field("attributions")

    @property
    def inputs(self) -> np.ndarray | None:
        return self._field("inputs")

    @property
    def labels(self) -> np.ndarray | None:
        return self._field("labels")

    @property
    def targets(self) -> np.ndarray:
        return self._field("targets")

    @property
    def delta(self) -> np.ndarray | None:
        return self._field("delta")

    def __repr__(self) -> str:
        where = self.directory if self.directory is not None else "memory"
        return (
            f"AttributionStore({len(self)} examples, {self.num_shards} shards, "
            f"complete={self.complete}, at {where!r})"
        )
