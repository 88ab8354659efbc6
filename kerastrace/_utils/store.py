"""Files that are never half-written: atomic writes, `.npz` shards with checksums, manifests.

Shared by the stores of `kerastrace.scale` (attributions) and
`kerastrace.influence` (training gradients), and by `kerastrace.io`.

- `atomic_write_bytes(path, write)` writes through a temporary file
  `.tmp-<random>.part` in the same directory, flushes and fsyncs it, then
  renames it over `path` (`os.replace`, atomic on POSIX and Windows): a
  reader sees the old file or the new one, never a part of one. The new
  file gets the usual permissions (`0o666` minus the umask, e.g. `0644`),
  not the `0600` of `tempfile.mkstemp`.
- `write_shard` / `load_shard`: `.npz` files whose SHA-256 is returned when
  written and checked when read (`ShardError` names the file otherwise).
- `remove_temporaries(directory)`: the `.tmp-*.part` files an interrupted
  writer left behind.
- `exclusive_lock(directory)`: one writer per directory at a time (an
  advisory `fcntl.flock` on the directory, released by the OS when the
  process dies).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import os
import secrets
from collections.abc import Callable

import numpy as np

MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"
TMP_SUFFIX = ".part"


class ShardError(ValueError):
    """A stored shard that is missing, truncated or damaged (the message names the file)."""


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


def _fsync_directory(directory: str) -> None:
    """Make a rename in `directory` durable (POSIX; a no-op where directories can't be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, write: Callable) -> None:
    """Write `path` through `write(fileobj)` on a temporary file, then rename it into place.

    The temporary file `.tmp-<random>.part` is created next to `path` with
    mode `0o666` (the umask applies, as for `open(path, "w")`), flushed and
    fsynced before `os.replace`; on any error (or Ctrl-C) it is removed and
    `path` is left as it was.

    Args:
        path: The file to write.
        write: Called with the open binary file object.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    while True:
        tmp = os.path.join(directory, f"{TMP_PREFIX}{secrets.token_hex(8)}{TMP_SUFFIX}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o666)  # fmt: skip
            break
        except FileExistsError:  # pragma: no cover - 64 random bits collided
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_directory(directory)


def remove_temporaries(directory: str) -> list[str]:
    """Delete the `.tmp-*.part` files an interrupted writer left in `directory`."""
    removed = []
    for path in glob.glob(os.path.join(glob.escape(directory), f"{TMP_PREFIX}*{TMP_SUFFIX}")):
        with contextlib.suppress(OSError):
            os.remove(path)
            removed.append(path)
    return removed


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def npz_bytes(fields: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **fields)
    return buf.getvalue()


def write_shard(path: str | os.PathLike, fields: dict[str, np.ndarray]) -> str:
    """Write `fields` as an `.npz` file atomically; return its SHA-256 (hex)."""
    data = npz_bytes(fields)
    atomic_write_bytes(path, lambda f: f.write(data))
    return sha256_bytes(data)


def load_shard(path: str | os.PathLike, sha256: str | None = None) -> dict[str, np.ndarray]:
    """Read an `.npz` shard; with `sha256`, check the file's checksum first.

    Raises:
        ShardError: the file is missing, its checksum differs (truncated or
            damaged) or it is not a readable `.npz` file; the message names
            the file.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ShardError(f"Shard {path!r} cannot be read: {exc.strerror or exc}.") from None
    if sha256 is not None and sha256_bytes(data) != sha256:
        raise ShardError(
            f"Shard {path!r} is damaged: its checksum differs from the one recorded when it "
            f"was written ({len(data)} bytes now; truncated or overwritten)."
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as exc:  # noqa: BLE001 - BadZipFile, zlib.error, ValueError, EOFError ...
        raise ShardError(
            f"Shard {path!r} is damaged: it is not a readable .npz file "
            f"({type(exc).__name__}: {exc})."
        ) from None


def write_json(path: str | os.PathLike, obj) -> None:
    """Write `obj` as indented JSON, atomically."""
    text = json.dumps(obj, indent=1, sort_keys=True).encode()
    atomic_write_bytes(path, lambda f: f.write(text))


def write_manifest(directory: str | os.PathLike, manifest: dict) -> None:
    """Write `<directory>/manifest.json` atomically."""
    write_json(os.path.join(os.fspath(directory), MANIFEST), manifest)


@contextlib.contextmanager
def exclusive_lock(directory: str, what: str = "output_dir"):
    """Hold an advisory lock on `directory` while writing it.

    A second process (or a second writer in this one) that tries to write
    the same directory meanwhile gets a ValueError instead of interleaving
    its shards with the first one's. The lock (`fcntl.flock` on the
    directory itself, no lock file) is released when the context exits or
    the process dies; where `fcntl` is missing (Windows) no lock is taken.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ValueError(
                f"Received an invalid value for argument `{what}`: another run is writing "
                f"{directory!r} right now. Wait for it to finish, or use another "
                f"directory. Received: {what}={directory!r}"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
