"""Load or build a model to profile: `.keras` files and `path.py:function` builders."""

from __future__ import annotations

import importlib.util
import os
import zipfile

import keras

__all__ = ["load_model_for_profiling", "build_from_builder"]


def load_model_for_profiling(path: str, safe_mode: bool = True) -> keras.Model:
    """Load a Keras model file (`.keras`, or legacy `.h5`) for `profile_model`.

    Args:
        path: Path of the model file.
        safe_mode: Keep Keras' safe deserialization (no `Lambda` bytecode).
            A model that needs unsafe deserialization is refused unless
            `safe_mode=False` is passed explicitly - only do that for files you trust.

    Returns:
        The loaded model.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: the file is not a Keras model, or it needs unsafe
            deserialization while `safe_mode=True`.

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
    elif ext not in (".h5", ".hdf5"):
        raise ValueError(
            f"{path!r} is not a Keras model file: expected a `.keras` file (or a legacy "
            f"`.h5`). Received extension {ext or '(none)'!r}."
        )
    # Register kerastrace's own layers ("kerastrace>SelfAttention", ...) so a
    # model that uses them loads in a process that has not imported them yet.
    import kerastrace.layers  # noqa: F401

    try:
        model = keras.saving.load_model(path, safe_mode=safe_mode)
    except ValueError as exc:
        msg = str(exc)
        if safe_mode and ("safe_mode" in msg or "unsafe" in msg.lower()):
            raise ValueError(
                f"{path!r} needs unsafe deserialization (it contains Python code such as a "
                "`Lambda` layer), which is refused by default. If you trust the file, pass "
                "`safe_mode=False` (CLI: `--unsafe`)."
            ) from exc
        raise ValueError(f"Could not load {path!r} as a Keras model: {msg[:300]}") from exc
    except (OSError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"{path!r} is not a loadable Keras model file: {first[:300]}"
        ) from exc
    if not isinstance(model, keras.layers.Layer):
        raise ValueError(f"{path!r} did not load as a Keras model (got {type(model).__name__}).")
    return model


def build_from_builder(spec: str, **kwargs) -> keras.Model:
    """Build a model from `"path/to/file.py:function"` (the function returns a Keras model).

    Args:
        spec: `"<python file>:<function name>"`.
        **kwargs: Passed to the function.

    Returns:
        The model the function returns.

    Raises:
        ValueError: malformed `spec`, missing file or function, or a return
            value that is not a Keras model.

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
    if not path.endswith(".py") or not os.path.isfile(path):
        raise ValueError(f"Builder file {path!r} does not exist or is not a `.py` file.")
    mod_name = "_kerastrace_builder_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ValueError(f"{path!r} has no function {func_name!r}.")
    model = func(**kwargs)
    if not isinstance(model, keras.layers.Layer):
        raise ValueError(
            f"Builder {spec!r} returned {type(model).__name__}, expected a Keras model."
        )
    return model
