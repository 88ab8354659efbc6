"""Load or build a model to profile: `.keras` files and `path.py:function` builders."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

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


def load_model_for_profiling(
    path: str, safe_mode: bool = True, custom_objects: dict | None = None
) -> keras.Model:
    """Load a Keras model file (`.keras`, or legacy `.h5`) for `profile_model`.

    The same as `kerastrace.io.load_model`, archive checks included (member
    sizes and names are checked before anything is read: a zip bomb is refused).

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
    from kerastrace.io import load_model

    return load_model(path, safe_mode=safe_mode, custom_objects=custom_objects)


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
