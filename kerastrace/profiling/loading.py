"""Load or build a model to profile: `.keras` files and `path.py:function` builders."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
import zipfile

import keras

__all__ = ["build_from_builder", "import_custom_objects", "load_model_for_profiling"]


@contextlib.contextmanager
def _folder_on_path(folder: str):
    """Put `folder` first on `sys.path` (so a file can import its siblings); undo after."""
    folder = os.path.abspath(folder)
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)


def _import_file(path: str, prefix: str, what: str):
    """Import the Python file `path` as a fresh module; one-line errors naming the file."""
    if not path.endswith(".py") or not os.path.isfile(path):
        raise ValueError(f"{what} {path!r} does not exist or is not a `.py` file.")
    mod_name = prefix + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - any error in user code: one line, the file named
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise ValueError(
            f"{what} {path!r} failed to import: {type(exc).__name__}: {first}"
        ) from exc
    return module


def import_custom_objects(path: str) -> dict:
    """Import a Python file that defines custom Keras objects; return its `CUSTOM_OBJECTS`.

    Importing the file runs its `keras.saving.register_keras_serializable`
    decorators (so registered classes load by name). If it defines a dict
    `CUSTOM_OBJECTS` (or `custom_objects`), that dict is returned for
    `keras.saving.load_model(..., custom_objects=...)`; otherwise `{}`. The
    file's folder is first on `sys.path` while it is imported, so it can
    import its sibling modules.

    Args:
        path: Path of the `.py` file.

    Returns:
        `{name: object}`, possibly empty.

    Raises:
        ValueError: the file is missing, fails to import, or its
            `CUSTOM_OBJECTS` is not a dict.

    Example:

    >>> import_custom_objects("missing.py")
    Traceback (most recent call last):
    ...
    ValueError: Custom objects file 'missing.py' does not exist or is not a `.py` file.
    """
    path = os.fspath(path)
    with _folder_on_path(os.path.dirname(path) or "."):
        module = _import_file(path, "_kerastrace_custom_objects_", "Custom objects file")
    for name in ("CUSTOM_OBJECTS", "custom_objects"):
        found = getattr(module, name, None)
        if found is None:
            continue
        if not isinstance(found, dict):
            raise ValueError(
                f"Custom objects file {path!r}: `{name}` must be a dict of names to classes "
                f"or functions. Received: {name}={type(found).__name__}"
            )
        return dict(found)
    return {}


def _uses_keras_hub(path: str) -> bool:
    with zipfile.ZipFile(path) as zf:
        with zf.open("config.json") as f:
            return b"keras_hub" in f.read()


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


def load_model_for_profiling(
    path: str, safe_mode: bool = True, custom_objects: dict | None = None
) -> keras.Model:
    """Load a Keras model file (`.keras`, or legacy `.h5`) for `profile_model`.

    kerastrace's own layers are registered first; a `.keras` file whose
    configuration names keras-hub objects (`BertTextClassifier`, ...) gets
    `keras_hub` imported first, so it loads in a fresh process.

    Args:
        path: Path of the model file.
        safe_mode: Keep Keras' safe deserialization (no `Lambda` bytecode).
            A model that needs unsafe deserialization is refused unless
            `safe_mode=False` is passed explicitly - only do that for files you trust.
        custom_objects: Optional `{name: class or function}` passed to
            `keras.saving.load_model` (see `import_custom_objects`).

    Returns:
        The loaded model.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: the file is not a Keras model, or it needs unsafe
            deserialization while `safe_mode=True`.
        ImportError: the file needs keras-hub, which is not installed.

    Example:

    >>> load_model_for_profiling("missing.keras")
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
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No model file at {path!r}.")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".keras":
        if not zipfile.is_zipfile(path):
            raise ValueError(
                f"{path!r} is not a Keras model file: a `.keras` file is a zip archive "
                "written by `model.save(...)`."
            )
        with zipfile.ZipFile(path) as zf:
            if "config.json" not in zf.namelist():
                raise ValueError(f"{path!r} is not a Keras model file (no config.json inside).")
        if _uses_keras_hub(path):
            _import_keras_hub(path)
    elif ext not in (".h5", ".hdf5"):
        raise ValueError(
            f"{path!r} is not a Keras model file: expected a `.keras` file (or a legacy "
            f"`.h5`). Received extension {ext or '(none)'!r}."
        )
    # Register kerastrace's own layers ("kerastrace>SelfAttention", ...) so a
    # model that uses them loads in a process that has not imported them yet.
    import kerastrace.layers  # noqa: F401

    try:
        model = keras.saving.load_model(
            path, custom_objects=custom_objects or None, safe_mode=safe_mode
        )
    except (ValueError, TypeError, OSError, KeyError) as exc:
        raise _load_error(path, exc, safe_mode) from exc
    if not isinstance(model, keras.layers.Layer):
        raise ValueError(f"{path!r} did not load as a Keras model (got {type(model).__name__}).")
    return model


def build_from_builder(spec: str, **kwargs) -> keras.Model:
    """Build a model from `"path/to/file.py:function"` (the function returns a Keras model).

    The file's folder is first on `sys.path` while the file is imported and
    the function runs, so the builder can import its sibling modules.

    Args:
        spec: `"<python file>:<function name>"`.
        **kwargs: Passed to the function.

    Returns:
        The model the function returns.

    Raises:
        ValueError: malformed `spec`, missing file or function, a file that
            fails to import, or a return value that is not a Keras model.

    Example:

    >>> build_from_builder("no_colon")
    Traceback (most recent call last):
    ...
    ValueError: Received an invalid value for argument `spec`, expected "path.py:function". Received: spec='no_colon'
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(
            'Received an invalid value for argument `spec`, expected "path.py:function". '
            f"Received: spec={spec!r}"
        )
    path, func_name = spec.rsplit(":", 1)
    with _folder_on_path(os.path.dirname(path) or "."):
        module = _import_file(path, "_kerastrace_builder_", "Builder file")
        func = getattr(module, func_name, None)
        if not callable(func):
            raise ValueError(f"{path!r} has no function {func_name!r}.")
        model = func(**kwargs)
    if not isinstance(model, keras.layers.Layer):
        raise ValueError(
            f"Builder {spec!r} returned {type(model).__name__}, expected a Keras model."
        )
    return model
