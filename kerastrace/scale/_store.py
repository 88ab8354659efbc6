"""Per-example results written as `.npz` shards plus a JSON manifest.

The file helpers (atomic writes, checksummed shards) live in
`kerastrace._utils.store`; the names below stay importable from here.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator

import numpy as np

from kerastrace._utils.store import (  # noqa: F401 - re-exported for older imports
    MANIFEST,
    ShardError,
    atomic_write_bytes,
    load_shard,
    pad_concat,
    shard_name,
    write_manifest,
    write_shard,
)

FORMAT = "kerastrace.scale.attributions"
#: 2: fingerprints of the model, the method and every shard's inputs, shard checksums.
FORMAT_VERSION = 2
#: Fields of a shard file that are bookkeeping, not results (hidden by `load()`).
PRIVATE_PREFIX = "_"


def _invalid_manifest(path, why):
    return ValueError(
        f"Received an invalid value for argument `output_dir`: its manifest {path!r} {why}. "
        "Use a new directory (or delete this one to start over)."
    )


def read_manifest(directory: str) -> dict | None:
    """The attribution manifest of `directory`, None when there is none; checked for shape."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _invalid_manifest(path, f"cannot be read ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _invalid_manifest(path, "is not a kerastrace attribution manifest")
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not isinstance(manifest.get("config"), dict):
        raise _invalid_manifest(path, "has no `shards` list or no `config`")
    start = 0
    for k, entry in enumerate(shards):
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("file"), str)
            and os.path.basename(entry["file"]) == entry["file"]
            and isinstance(entry.get("count"), int)
            and entry["count"] > 0
            and entry.get("start", start) == start
        )
        if not ok:
            raise _invalid_manifest(path, f"has a malformed entry for shard {k}: {entry!r}")
        start += entry["count"]
    return manifest


def public_fields(shard: dict) -> dict:
    return {k: a for k, a in shard.items() if not k.startswith(PRIVATE_PREFIX)}


class AttributionStore:
    """Per-example attribution results, in dataset order, on disk or in memory.

    Returned by `attribute_dataset` and by `AttributionStore.open(directory)`.
    Each shard holds, for a contiguous range of examples, the arrays
    `index` (global example index), `attributions` (or `attributions_<i>` /
    `attributions_<key>` when several tuple/dict inputs are attributed),
    `targets` (-1 for a callable target), and, when available, `inputs` (the
    features of a single-input model, or the `"token_ids"` entry of dict
    features such as keras-hub's), `labels` and `delta` (convergence
    deltas). On disk, every shard's SHA-256 is recorded in `manifest.json`
    and checked when the shard is read: a truncated or damaged shard raises
    a ValueError that names the file (`attribute_dataset` with the same
    arguments recomputes it).

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
    def open(cls, directory: str | os.PathLike) -> AttributionStore:
        """Open the results written by `attribute_dataset(..., output_dir=directory)`.

        An interrupted run opens too (`complete` is then False, and
        `summarize` warns).

        Args:
            directory: The output directory.

        Returns:
            An `AttributionStore`.

        Raises:
            ValueError: if the directory holds no manifest, or a malformed one.
        """
        directory = os.fspath(directory)
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

    def _read(self, entry) -> dict[str, np.ndarray]:
        path = os.path.join(self.directory, entry["file"])
        try:
            return load_shard(path, entry.get("sha256"))
        except ShardError as e:
            raise ShardError(
                f"{e} Run `attribute_dataset` again with the same arguments and "
                f"output_dir={self.directory!r} to recompute it."
            ) from None

    def iter_shards(self) -> Iterator[dict[str, np.ndarray]]:
        """Yield the shards in dataset order, one dict of arrays each (checksums checked)."""
        if self._memory is not None:
            for shard in self._memory:
                yield public_fields(shard)
            return
        for entry in self.manifest["shards"]:
            yield public_fields(self._read(entry))

    def load(self) -> dict[str, np.ndarray]:
        """All shards concatenated in dataset order: `{field: (N, ...) array}`.

        Batches of different padded lengths are zero-padded at the end
        (token ids with the pad id 0).

        Raises:
            ValueError: a shard is missing, truncated or damaged (named).
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

    def warn_if_incomplete(self, what: str = "summarize") -> None:
        """Warn (`UserWarning`) when the store holds an interrupted run."""
        if self.complete:
            return
        where = self.directory if self.directory is not None else "memory"
        warnings.warn(
            f"{what}: the attribution store at {where!r} is incomplete: it holds the first "
            f"{len(self)} examples of an interrupted run, not the whole dataset. Run "
            "`attribute_dataset` again with the same arguments to finish it.",
            UserWarning,
            stacklevel=3,
        )

    def __repr__(self) -> str:
        where = self.directory if self.directory is not None else "memory"
        return (
            f"AttributionStore({len(self)} examples, {self.num_shards} shards, "
            f"complete={self.complete}, at {where!r})"
        )
