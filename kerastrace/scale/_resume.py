"""Resuming `attribute_dataset`: what the stored run holds, whether it still fits, and writing.

A run directory holds `manifest.json` and `.npz` shards. The manifest
records the run's settings (`config`), the fingerprints of the method's
settings and of the model (`fingerprints`), and per shard its file, first
example, count, SHA-256 (`sha256`) and the fingerprint of its inputs
(`inputs`: a hash of the per-example digests of `_fingerprint`). Each shard
also carries the per-example digests (`_digest`) and the run fingerprint
(`_run`), so a shard written just before an interruption hit the manifest
can be adopted safely.

Resuming (`open_run`, `verify`): the settings and the model are compared
first, then every stored shard is read and its checksum checked (a damaged
shard is recomputed), then the dataset is read over the stored range and
each shard's inputs are compared with what the dataset holds now. A
difference is an error that says what differs (settings, weights,
configuration, order, data, length), unless `on_mismatch="recompute"`.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import hashlib
import json
import logging
import os

import numpy as np

from kerastrace._utils import store as fs
from kerastrace.scale import _fingerprint as fp
from kerastrace.scale._store import FORMAT, FORMAT_VERSION, AttributionStore, read_manifest

logger = logging.getLogger("kerastrace.scale")

MISMATCH = ("error", "recompute")
_HOW = (
    "Resume with the same dataset in the same order (a shuffled dataset must give the same "
    "order on every pass: `shuffle(..., seed=..., reshuffle_each_iteration=False)`, or "
    "shuffle the files once beforehand), pass on_mismatch='recompute' to recompute the "
    "shards whose inputs changed, or use a new output_dir."
)


def run_fingerprint(fingerprints: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprints, sort_keys=True).encode()).hexdigest()


def new_manifest(config, fingerprints) -> dict:
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "config": config,
        "fingerprints": fingerprints,
        "run": run_fingerprint(fingerprints),
        "shards": [],
        "complete": False,
    }


# ------------------------------------------------------------------ stored shards
class Stored:
    """One shard of the stored run: its manifest entry, digests, and whether it is kept."""

    def __init__(self, k, entry, digests=None, damaged=None):
        self.k = k
        self.entry = entry
        self.start = int(entry["start"]) if "start" in entry else None
        self.count = int(entry["count"])
        self.digests = digests
        self.damaged = damaged  # reason, or None
        self.recompute = damaged is not None

    @property
    def stop(self):
        return self.start + self.count


def _mismatch_error(what, old, new, directory):
    return ValueError(
        f"Received an invalid value for argument `{what}`: {old} {new} The stored "
        "attributions would not describe this run. Pass on_mismatch='recompute' to "
        "recompute every shard, or use a new output_dir. "
        f"Received: output_dir={directory!r}"
    )


def _compare_runs(old, config, fingerprints, directory, on_mismatch) -> bool:
    """Whether the stored run `old` is this run; raise (or False to restart) when not."""
    if old.get("version") != FORMAT_VERSION or "fingerprints" not in old:
        if on_mismatch == "recompute":
            return False
        raise ValueError(
            "Received an invalid value for argument `output_dir`: it holds a run written "
            f"by an older kerastrace (manifest version {old.get('version')!r}, without the "
            "fingerprints of its data and model), which cannot be checked against this run. "
            "Pass on_mismatch='recompute' to recompute it, or use a new output_dir. "
            f"Received: output_dir={directory!r}"
        )
    if old["config"] != config:
        if on_mismatch == "recompute":
            return False
        diff = sorted(k for k in set(config) | set(old["config"])
                      if old["config"].get(k) != config.get(k))  # fmt: skip
        detail = "; ".join(
            f"{k}: {old['config'].get(k)!r} then, {config.get(k)!r} now" for k in diff
        )
        raise ValueError(
            "Received an invalid value for argument `output_dir`: it holds a run with "
            f"different settings ({', '.join(diff)}): {detail}. Use the same settings to "
            "resume, pass on_mismatch='recompute' to recompute it with these, or use a new "
            f"output_dir. Received: output_dir={directory!r}"
        )
    old_model, new_model = old["fingerprints"].get("model"), fingerprints.get("model")
    if old_model != new_model:
        if on_mismatch == "recompute":
            return False
        if old_model is None or new_model is None:
            why = "one of the two runs' models cannot be fingerprinted (not a Keras model)."
        else:
            parts = []
            if old_model["weights"] != new_model["weights"]:
                parts.append("its weights differ (trained further, `set_weights`, another "
                             "checkpoint)")  # fmt: skip
            if old_model["config"] != new_model["config"]:
                parts.append("its configuration differs (layers, activations, shapes)")
            why = " and ".join(parts) + "."
        raise _mismatch_error("method", "the model is not the model of the run in "
                              "`output_dir`:", why, directory)  # fmt: skip
    return True


def _adopt_orphans(directory, manifest):
    """Take over shards written just before an interruption hit the manifest update.

    A shard file beyond the manifest is adopted when it reads back whole, was
    written by this very run (`_run`), and continues the stored examples.
    """
    while True:
        k = len(manifest["shards"])
        name = fs.shard_name(k)
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            return
        start = sum(e["count"] for e in manifest["shards"])
        try:
            with open(path, "rb") as f:
                data = f.read()
            shard = fs.load_shard(path, fs.sha256_bytes(data))
        except (OSError, fs.ShardError):
            return
        index = shard.get("index")
        ok = (
            str(shard.get("_run", "")) == manifest["run"]
            and "_digest" in shard
            and index is not None
            and index.size > 0
            and np.array_equal(index, np.arange(start, start + index.size))
        )
        if not ok:
            return
        manifest["shards"].append({
            "file": name, "start": start, "count": int(index.size),
            "sha256": fs.sha256_bytes(data), "inputs": fp.combine(shard["_digest"]),
        })  # fmt: skip
        fs.write_manifest(directory, manifest)
        logger.info("attribute_dataset: adopted %s, written before an interruption.", path)


def _read_stored(directory, manifest) -> list[Stored]:
    """Every stored shard, read back and checked: its digests, or why it is damaged."""
    stored = []
    for k, entry in enumerate(manifest["shards"]):
        path = os.path.join(directory, entry["file"])
        try:
            shard = fs.load_shard(path, entry.get("sha256"))
            if str(shard.get("_run", "")) != manifest["run"] or "_digest" not in shard:
                raise fs.ShardError(f"Shard {path!r} was not written by this run.")
            digests = shard["_digest"]
            if len(digests) != entry["count"]:
                raise fs.ShardError(f"Shard {path!r} holds {len(digests)} examples, "
                                    f"not {entry['count']}.")  # fmt: skip
        except fs.ShardError as exc:
            logger.warning("attribute_dataset: %s It is recomputed.", exc)
            stored.append(Stored(k, entry, damaged=str(exc)))
            continue
        stored.append(Stored(k, entry, digests=digests))
    return stored


def remove_unlisted_shards(directory, manifest):
    """Delete `shard-*.npz` files the manifest does not list (left by a longer earlier run)."""
    listed = {e["file"] for e in manifest["shards"]}
    for path in glob.glob(os.path.join(glob.escape(directory), "shard-*.npz")):
        if os.path.basename(path) not in listed:
            with contextlib.suppress(OSError):
                os.remove(path)


def open_run(directory, config, fingerprints, resume, on_mismatch):
    """`(manifest, stored)`: a new run, or the run found in `directory` with its shards checked."""
    manifest = new_manifest(config, fingerprints)
    if directory is None:
        return manifest, []
    old = read_manifest(directory) if os.path.isdir(directory) else None
    if old is None:
        if os.path.isdir(directory):
            fs.remove_temporaries(directory)
        return manifest, []
    if not resume:
        raise ValueError(
            "Received an invalid value for argument `output_dir`: it already holds "
            f"a run ({len(old['shards'])} shards); with resume=False nothing is "
            "overwritten. Use a new directory, delete this one, or pass resume=True. "
            f"Received: output_dir={directory!r}"
        )
    fs.remove_temporaries(directory)
    if not _compare_runs(old, config, fingerprints, directory, on_mismatch):
        logger.warning(
            "attribute_dataset: the run in %r has other settings or another model; "
            "on_mismatch='recompute': every shard is recomputed.", directory
        )
        fs.write_manifest(directory, manifest)
        remove_unlisted_shards(directory, manifest)
        return manifest, []
    _adopt_orphans(directory, old)
    return old, _read_stored(directory, old)


# ------------------------------------------------------------------ verification
def _locate(p, stored):
    for s in stored:
        if s.start <= p < s.stop:
            return s
    return None


def _diagnose(batches, current, stored, directory) -> ValueError:
    """Say how the dataset differs from the stored run (reads the rest of the dataset)."""
    n_stored = stored[-1].stop
    scanned = [current]
    count = len(current)
    for batch in batches:
        scanned.append(batch.digests)
        count += len(batch)
        if count > 4 * n_stored + 100_000:
            break
    now = np.concatenate(scanned) if count else np.zeros((0, 2), np.int64)
    known = [(s.start, s.digests) for s in stored if s.digests is not None]
    first = None
    for start, d in known:
        m = min(len(d), max(len(now) - start, 0))
        diff = np.flatnonzero((d[:m] != now[start : start + m]).any(axis=1))
        if diff.size:
            first = start + int(diff[0])
            break
    counts = collections.Counter(r.tobytes() for r in now)
    missing = 0
    total = 0
    for _, d in known:
        for r in d:
            total += 1
            key = r.tobytes()
            if counts[key] > 0:
                counts[key] -= 1
            else:
                missing += 1
    if first is None and len(now) < n_stored:
        what = (f"the dataset is shorter: it has {len(now)} examples but the run holds "
                f"{n_stored}")  # fmt: skip
    elif missing == 0 and total and first is not None:
        what = (
            "the dataset's order differs: it holds the same examples in another order "
            f"(reshuffled; position {first} holds another example than in the stored run)"
        )
    else:
        where = f"position {first} holds another example" if first is not None else (
            "a damaged shard's inputs differ")
        what = (f"the data differs: {where}, and {missing} of the {total} stored examples "
                "are not in the dataset at all")  # fmt: skip
    s = _locate(first, stored) if first is not None else None
    shard = f" (shard {s.entry['file']!r}, examples {s.start}..{s.stop - 1})" if s else ""
    return ValueError(
        "Received an invalid value for argument `dataset`: it is not the data of the run "
        f"in `output_dir`: {what}{shard}. {_HOW} Received: output_dir={directory!r}"
    )


def verify(batches, stored, on_mismatch, directory) -> int | None:
    """Read the dataset over the stored range and compare each shard's inputs.

    Marks the shards to recompute (`on_mismatch="recompute"`) or raises
    (`"error"`). Consumes `batches` up to the end of the stored range (the
    rest of a batch that straddles it is pushed back).

    Returns:
        The number of examples of the dataset when it ends inside the stored
        range, else None.
    """
    stored_end = stored[-1].stop
    parts, seen = [], 0
    for batch in batches:
        lo = int(batch.index[0]) if len(batch) else seen
        take = max(0, min(len(batch), stored_end - lo))
        if take:
            parts.append(batch.digests[:take])
        seen = lo + len(batch)
        if seen >= stored_end:
            if seen > stored_end:
                batches.push_back(batch.rows(slice(take, None)))
            break
    current = np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)
    n = len(current)
    for s in stored:
        seg = current[s.start : s.stop]
        if len(seg) == s.count and fp.combine(seg) == s.entry.get("inputs"):
            continue
        if on_mismatch == "error":
            raise _diagnose(batches, current, stored, directory)
        s.recompute = True
    if n < stored_end:
        return n
    return None


def check_unchanged(batch, stored, stored_end, directory):
    """On a second pass over a kept range: the rows must still be the stored examples."""
    keep = batch.index < stored_end
    if not keep.any():
        return
    for s in stored:
        if s.recompute:
            continue
        rows = np.flatnonzero(keep & (batch.index >= s.start) & (batch.index < s.stop))
        if rows.size and not np.array_equal(batch.digests[rows],
                                            s.digests[batch.index[rows] - s.start]):  # fmt: skip
            raise ValueError(
                "Received an invalid value for argument `dataset`: it gave other examples "
                f"on the second pass than on the first one (shard {s.entry['file']!r}); a "
                "dataset that reshuffles on every iteration cannot be resumed. "
                f"{_HOW} Received: output_dir={directory!r}"
            )


# ------------------------------------------------------------------ writer
def _take(buffer, n):
    """Pop the first `n` examples of a list of per-batch dicts."""
    out, left, rest = [], n, []
    for i, part in enumerate(buffer):
        m = len(part["index"])
        if left == 0:
            rest.extend(buffer[i:])
            break
        if m <= left:
            out.append(part)
            left -= m
        else:
            out.append({k: a[:left] for k, a in part.items()})
            rest.append({k: a[left:] for k, a in part.items()})
            rest.extend(buffer[i + 1 :])
            left = 0
            break
    buffer[:] = rest
    return {k: fs.pad_concat([p[k] for p in out]) for k in out[0]}


def _rows(res, sel):
    return {k: a[sel] for k, a in res.items()}


class Writer:
    """Routes computed rows to recomputed stored shards or new shards, and writes them.

    `mode`: `"disk"` (the chief, or a single process, with `output_dir`),
    `"memory"` (no `output_dir`) or `"discard"` (a non-chief worker with
    `output_dir`: the chief writes).
    """

    def __init__(self, store: AttributionStore, stored, shard_size, on_shard, mode):
        self.store = store
        self.manifest = store.manifest
        self.stored = stored
        self.stored_end = stored[-1].stop if stored else 0
        self.shard_size = shard_size
        self.on_shard = on_shard
        self.mode = mode
        self.redo = {s.k: [] for s in stored if s.recompute}
        self.buffer: list = []
        self.changed = False

    # -- routing
    def add(self, res):
        index = res["index"]
        old = index < self.stored_end
        if old.any():
            starts = np.array([s.start for s in self.stored])
            which = np.searchsorted(starts, index[old], side="right") - 1
            part = _rows(res, old)
            for k in np.unique(which):
                self.redo[int(k)].append(_rows(part, which == k))
                if sum(len(p["index"]) for p in self.redo[int(k)]) == self.stored[k].count:
                    self._rewrite(int(k))
        if (~old).any():
            self.buffer.append(_rows(res, ~old))
            while self._buffered() >= self.shard_size:
                self._new(self.shard_size)

    def _buffered(self):
        return sum(len(p["index"]) for p in self.buffer)

    def finish(self, n_total):
        """The dataset ended after `n_total` examples: write what is left."""
        for k in sorted(self.redo):
            if self.redo[k]:
                self._rewrite(k)
        shards = self.manifest["shards"]
        keep = [e for e in shards if e["start"] < n_total]
        if len(keep) != len(shards):
            shards[:] = keep
            if self.mode == "memory":
                self.store._memory[:] = self.store._memory[: len(keep)]
            self.changed = True
        if self._buffered():
            self._new(self._buffered())

    # -- writing
    def _write(self, k, part, name):
        part = dict(part)
        part["_run"] = np.array(self.manifest["run"])
        entry = {"file": name, "start": int(part["index"][0]), "count": int(len(part["index"])),
                 "inputs": fp.combine(part["_digest"])}  # fmt: skip
        if self.mode == "disk":
            entry["sha256"] = fs.write_shard(os.path.join(self.store.directory, name), part)
        elif self.mode == "memory":
            if k < len(self.store._memory):
                self.store._memory[k] = part
            else:
                self.store._memory.append(part)
        shards = self.manifest["shards"]
        if k < len(shards):
            shards[k] = entry
        else:
            shards.append(entry)
        if self.mode == "disk":
            fs.write_manifest(self.store.directory, self.manifest)
        self.store._cache = None
        self.changed = True
        if self.on_shard is not None:
            self.on_shard(k, self.store)

    def _rewrite(self, k):
        parts = self.redo.pop(k)
        part = {key: fs.pad_concat([p[key] for p in parts]) for key in parts[0]}
        order = np.argsort(part["index"], kind="stable")
        part = _rows(part, order)
        self._write(k, part, self.stored[k].entry["file"])

    def _new(self, n):
        k = len(self.manifest["shards"])
        self._write(k, _take(self.buffer, n), fs.shard_name(k))

