"""Loading models safely and writing files atomically.

`load_model` checks a `.keras` archive before Keras reads it: the number of
members, their uncompressed sizes (a zip bomb such as a 1.5 MB file whose
`config.json` expands to 1.5 GiB is refused before anything is inflated),
member names that would escape a directory when extracted, and the
configuration itself (a `Lambda` layer's Python bytecode is refused in safe
mode, with the layer named); then it loads the model with kerastrace's
layers registered, keras-hub imported when the file needs it, and one-line
errors that say what to do.

`atomic_write` writes a file all at once or not at all (a temporary file in
the same directory renamed over the target), as the `kerastrace` command
line does for every file it writes.

Limits (keyword arguments of `check_archive` and `load_model`):

- `max_members`: 10,000 archive members.
- `max_config_bytes`: 64 MiB for each of `config.json` and
  `metadata.json` (configurations of real models are kilobytes to a few
  megabytes).
- `max_total_bytes`: 64 GiB uncompressed in all (weights included).
"""

from __future__ import annotations

import json
import os
import re
import stat
import warnings
import zipfile
from collections.abc import Callable

import keras

from kerastrace._utils import store as _fs

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_MEMBERS",
    "MAX_TOTAL_BYTES",
    "ArchiveError",
    "atomic_write",
    "check_archive",
    "load_model",
]

MAX_MEMBERS = 10_000
MAX_CONFIG_BYTES = 64 * 2**20
MAX_TOTAL_BYTES = 64 * 2**30
_CONFIG_MEMBERS = ("config.json", "metadata.json")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class ArchiveError(ValueError):
    """A model file refused before loading (not an archive, too large, unsafe member names)."""


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def _unsafe_name(name: str) -> str | None:
    """Why an archive member name is unsafe to extract, or None."""
    if "\0" in name:
        return "contains a NUL byte"
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        return "is an absolute path"
    if ".." in posix.split("/"):
        return "climbs out of the archive (`..`)"
    return None


def _check_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected a positive integer. "
            f"Received: {name}={value!r}"
        )
    return value


def check_archive(
    path: str | os.PathLike,
    *,
    max_members: int = MAX_MEMBERS,
    max_config_bytes: int = MAX_CONFIG_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> dict:
    """Check a `.keras` archive before loading it; return its parsed `config.json`.

    Only the zip directory is read, and `config.json` with its declared
    size as the cap (Python's `zipfile`, which Keras uses, never inflates a
    member beyond its declared size), so a zip bomb is refused without being
    inflated.

    Args:
        path: The `.keras` file.
        max_members: Most members accepted.
        max_config_bytes: Largest uncompressed `config.json` / `metadata.json`.
        max_total_bytes: Largest uncompressed total.

    Returns:
        The model configuration (`config.json`), a dict.

    Raises:
        ArchiveError: not a zip archive, no `config.json`, too many members,
            a member too large, duplicated or unsafe member names (absolute,
            `..`, links), or a `config.json` that is not JSON; the message
            names the file, the member and the limit.

    Example:

    >>> import tempfile, zipfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "evil.keras")
    >>> with zipfile.ZipFile(path, "w") as zf:
    ...     zf.writestr("config.json", "{}")
    ...     zf.writestr("../escape.txt", "x")
    >>> check_archive(path)
    Traceback (most recent call last):
    ...
    kerastrace.io.ArchiveError: ... member '../escape.txt' climbs out of the archive (`..`)...
    """
    path = os.fspath(path)
    max_members = _check_int("max_members", max_members)
    max_config_bytes = _check_int("max_config_bytes", max_config_bytes)
    max_total_bytes = _check_int("max_total_bytes", max_total_bytes)
    refuse = f"Refusing to load {path!r}:"
    if not zipfile.is_zipfile(path):
        raise ArchiveError(
            f"{path!r} is not a Keras model file: a `.keras` file is a zip archive written "
            "by `model.save(...)`."
        )
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > max_members:
                raise ArchiveError(
                    f"{refuse} it has {len(infos)} archive members, more than the limit of "
                    f"{max_members} (`max_members`); a Keras model has a handful."
                )
            seen, total = set(), 0
            for info in infos:
                why = _unsafe_name(info.filename)
                if why is None and stat.S_ISLNK(info.external_attr >> 16):
                    why = "is a symbolic link"
                if why is None and info.filename in seen:
                    why = "appears twice"
                if why is not None:
                    raise ArchiveError(
                        f"{refuse} its member {info.filename!r} {why}: not an archive "
                        "`model.save` writes."
                    )
                seen.add(info.filename)
                limit = max_config_bytes if info.filename in _CONFIG_MEMBERS else None
                if limit is not None and info.file_size > limit:
                    raise ArchiveError(
                        f"{refuse} its member {info.filename!r} expands to "
                        f"{_size(info.file_size)} ({_size(info.compress_size)} compressed), "
                        f"more than the limit of {_size(limit)} (`max_config_bytes`); this "
                        "looks like a zip bomb."
                    )
                total += info.file_size
            if total > max_total_bytes:
                raise ArchiveError(
                    f"{refuse} its members expand to {_size(total)} in all, more than the "
                    f"limit of {_size(max_total_bytes)} (`max_total_bytes`)."
                )
            if "config.json" not in seen:
                raise ArchiveError(f"{path!r} is not a Keras model file (no config.json inside).")
            with zf.open("config.json") as f:
                text = f.read(max_config_bytes + 1)
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"{path!r} is not a readable Keras model file: {exc}.") from None
    try:
        config = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArchiveError(
            f"{path!r} is not a Keras model file: its config.json is not JSON ({exc})."
        ) from None
    if not isinstance(config, dict):
        raise ArchiveError(f"{path!r} is not a Keras model file: its config.json is not a dict.")
    return config


def _lambda_layers(config) -> list[str]:
    """Names of the `Lambda` layers (Python bytecode) in a model configuration."""
    found = []

    def visit(obj):
        if isinstance(obj, dict):
            if obj.get("class_name") == "Lambda":
                inner = obj.get("config") if isinstance(obj.get("config"), dict) else {}
                found.append(str(inner.get("name", "?")))
            for value in obj.values():
                visit(value)
        elif isinstance(obj, list):
            for value in obj:
                visit(value)

    visit(config)
    return found


def _import_keras_hub(path: str) -> None:
    try:
        import keras_hub  # noqa: F401  (registers its classes for deserialization)
    except ImportError as exc:
        raise ImportError(
            f"{path!r} holds keras-hub objects, but keras-hub is not installed: "
            "`pip install keras-hub`."
        ) from exc


def _load_error(path: str, exc: Exception, safe_mode: bool) -> ValueError:
    """One clear line for a model file that Keras could not load."""
    msg = str(exc)
    if isinstance(exc, ValueError) and safe_mode and (
        "safe_mode" in msg or "unsafe" in msg.lower()
    ):
        return ValueError(
            f"{path!r} needs unsafe deserialization (it contains Python code such as a "
            "`Lambda` layer), which is refused by default. If you trust the file, pass "
            "`safe_mode=False` (CLI: `--unsafe`)."
        )
    missing = re.search(r"Could not locate (class|function) '([^']+)'", msg)
    if missing:
        return ValueError(
            f"Could not load {path!r}: it uses the custom {missing.group(1)} "
            f"{missing.group(2)!r}, which is not registered. Import the module that defines "
            "it (decorated with `@keras.saving.register_keras_serializable()`) before "
            "loading, or pass `custom_objects=` (CLI: `--custom-objects FILE.py`)."
        )
    first = " ".join(msg.split())[:300] or type(exc).__name__
    if isinstance(exc, ValueError):
        return ValueError(f"Could not load {path!r} as a Keras model: {first}")
    return ValueError(f"{path!r} is not a loadable Keras model file: {first}")


def _check_path(path: str) -> str:
    if os.path.isdir(path):
        raise ValueError(
            f"{path!r} is a directory, not a Keras model file: pass the `.keras` file written "
            "by `model.save(...)` (a TensorFlow SavedModel directory loads with "
            "`keras.layers.TFSMLayer`)."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No model file at {path!r}.")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".keras", ".h5", ".hdf5"):
        raise ValueError(
            f"{path!r} is not a Keras model file: expected a `.keras` file (or a legacy "
            f"`.h5`). Received extension {ext or '(none)'!r}."
        )
    return ext


def load_model(
    path: str | os.PathLike,
    safe_mode: bool = True,
    custom_objects: dict | None = None,
    *,
    max_members: int = MAX_MEMBERS,
    max_config_bytes: int = MAX_CONFIG_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> keras.Model:
    """Load a Keras model file (`.keras`, or legacy `.h5`) after checking it.

    A `.keras` archive is checked first (`check_archive`: member count and
    sizes against the limits, member names, `config.json`); in safe mode a
    configuration with `Lambda` layers is refused naming them. kerastrace's
    own layers are registered, and keras-hub is imported when the
    configuration names its objects (`BertTextClassifier`, ...), so such a
    file loads in a fresh process. A legacy `.h5` file must carry the HDF5
    signature.

    Args:
        path: Path of the model file.
        safe_mode: Keep Keras' safe deserialization (no `Lambda` bytecode).
            A model that needs unsafe deserialization is refused unless
            `safe_mode=False` is passed explicitly; only do that for files
            you trust.
        custom_objects: Optional `{name: class or function}` passed to
            `keras.saving.load_model` (see
            `kerastrace.profiling.import_custom_objects`).
        max_members: Most archive members accepted.
        max_config_bytes: Largest uncompressed `config.json` / `metadata.json`.
        max_total_bytes: Largest uncompressed archive.

    Returns:
        The loaded model.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: the file is not a Keras model (a directory, another
            format, a damaged archive), exceeds a limit or has unsafe member
            names (`ArchiveError`), or needs unsafe deserialization while
            `safe_mode=True`.
        TypeError: `custom_objects` is not a dict.
        ImportError: the file needs keras-hub, which is not installed.

    Example:

    >>> load_model("missing.keras")
    Traceback (most recent call last):
    ...
    FileNotFoundError: No model file at 'missing.keras'.
    """
    if not isinstance(safe_mode, bool):
        raise ValueError(
            "Received an invalid value for argument `safe_mode`, expected a boolean. "
            f"Received: safe_mode={safe_mode!r}"
        )
    if custom_objects is not None and not isinstance(custom_objects, dict):
        raise TypeError(
            "Received an invalid value for argument `custom_objects`, expected a dict of "
            f"names to classes or functions. Received: custom_objects={custom_objects!r}"
        )
    path = os.fspath(path)
    ext = _check_path(path)
    if ext == ".keras":
        config = check_archive(path, max_members=max_members,
                               max_config_bytes=max_config_bytes,
                               max_total_bytes=max_total_bytes)  # fmt: skip
        lambdas = _lambda_layers(config)
        if safe_mode and lambdas:
            raise ValueError(
                f"{path!r} needs unsafe deserialization: its Lambda layer(s) {lambdas} hold "
                "Python code, which is refused by default. If you trust the file, pass "
                "`safe_mode=False` (CLI: `--unsafe`)."
            )
        if "keras_hub" in json.dumps(config):
            _import_keras_hub(path)
    else:
        with open(path, "rb") as f:
            head = f.read(8)
        if head != _HDF5_SIGNATURE:
            raise ValueError(
                f"{path!r} is not a Keras model file: a `.h5` model is an HDF5 file, and "
                "this one does not start with the HDF5 signature."
            )
    # Register kerastrace's own layers ("kerastrace>SelfAttention", ...) so a
    # model that uses them loads in a process that has not imported them yet.
    import kerastrace.layers  # noqa: F401

    try:
        with warnings.catch_warnings():
            # keras-hub tasks override compile(); Keras then warns that it did not
            # re-compile the loaded model, which no analysis needs.
            warnings.filterwarnings("ignore", message=r"`compile\(\)` was not called",
                                    category=UserWarning)  # fmt: skip
            model = keras.saving.load_model(
                path, custom_objects=custom_objects or None, safe_mode=safe_mode
            )
    except (ValueError, TypeError, OSError, KeyError, zipfile.BadZipFile) as exc:
        raise _load_error(path, exc, safe_mode) from exc
    if not isinstance(model, keras.layers.Layer):
        raise ValueError(f"{path!r} did not load as a Keras model (got {type(model).__name__}).")
    return model


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable) -> str:
    """Write a file all at once or not at all.

    The content goes to a temporary file next to `path` (`.tmp-<random>.part`,
    mode `0o666` minus the umask), which is flushed, fsynced and renamed over
    `path`: readers (and a crash) see the old file or the new one, never a
    part. On an error the temporary file is removed and `path` is untouched.

    Args:
        path: The file to write; its directory must exist.
        data: `bytes`, `str` (written as UTF-8), or a callable
            `write(fileobj)` that writes to the binary file object it is given
            (e.g. `lambda f: fig.savefig(f, format="png")`).

    Returns:
        `path`, as a string.

    Raises:
        TypeError: for other `data`.
        FileNotFoundError: the directory of `path` does not exist.

    Example:

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.json")
    >>> atomic_write(path, '{"ok": true}') == path, open(path).read()
    (True, '{"ok": true}')
    """
    path = os.fspath(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        payload = bytes(data)

        def write(f):
            f.write(payload)

    elif callable(data):
        write = data
    else:
        raise TypeError(
            "Received an invalid value for argument `data`, expected bytes, str or a callable "
            f"write(fileobj). Received: data of type {type(data).__name__}"
        )
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Cannot write {path!r}: no directory {directory!r}.")
    _fs.atomic_write_bytes(path, write)
    return path
