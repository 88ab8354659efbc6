"""Lazy imports for heavy or optional dependencies."""

from __future__ import annotations

import importlib


def pyplot():
    """Import and return `matplotlib.pyplot` on first use.

    Selects no backend and calls no `plt.show()`; matplotlib picks its backend
    the usual way (the `MPLBACKEND` environment variable, rc files, or Agg
    when no display is available).
    """
    return importlib.import_module("matplotlib.pyplot")


def tensorflow_text():
    """Import and return `tensorflow_text`, with a clear error when missing."""
    try:
        return importlib.import_module("tensorflow_text")
    except ImportError as exc:  # pragma: no cover - installed with kerastrace
        raise ImportError(
            "kerastrace.text needs `tensorflow-text` of the same minor version as "
            "tensorflow. Install it with `pip install tensorflow-text==<tf version>`."
        ) from exc
