"""Shared helpers for the plot functions (no pyplot import at module level)."""

from __future__ import annotations

import html

import numpy as np

from kerastrace._utils.lazy import pyplot


def new_axes(ax=None, figsize=None):
    """Return `(fig, ax)`: the given axes' figure, or a new figure (lazy pyplot)."""
    if ax is not None:
        return ax.figure, ax
    plt = pyplot()
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


def as_1d(name, scores) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1:
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected a 1D array of one "
            f"score per token (or shape (1, T)). Received: {name}.shape={arr.shape}"
        )
    return arr


def check_tokens(tokens, n, name="tokens") -> list[str]:
    if tokens is None:
        return [str(i) for i in range(n)]
    toks = [str(t) for t in tokens]
    if len(toks) != n:
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected {n} tokens (one per "
            f"position). Received: {name} of length {len(toks)}"
        )
    return toks


def keep_positions(mask, n) -> np.ndarray:
    """Indices of unmasked positions from a `(T,)` or `(1, T)` boolean mask."""
    if mask is None:
        return np.arange(n)
    m = np.asarray(mask).astype(bool)
    if m.ndim == 2 and m.shape[0] == 1:
        m = m[0]
    if m.shape != (n,):
        raise ValueError(
            f"Received an invalid value for argument `mask`, expected a boolean array of shape "
            f"({n},), True on real tokens. Received: mask.shape={m.shape}"
        )
    return np.flatnonzero(m)


def diverging_rgb(scores: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """White for 0, red for positive, blue for negative; `(N, 3)` floats in [0, 1]."""
    s = np.asarray(scores, dtype=np.float64)
    vmax = float(np.max(np.abs(s))) if vmax is None else float(vmax)
    x = np.clip(s / vmax, -1.0, 1.0) if vmax > 0 else np.zeros_like(s)
    rgb = np.ones((*x.shape, 3))
    pos, neg = np.clip(x, 0, None), np.clip(-x, 0, None)
    rgb[..., 1] -= pos + neg
    rgb[..., 0] -= neg
    rgb[..., 2] -= pos
    return np.clip(rgb, 0.0, 1.0)


def rgb_hex(rgb) -> str:
    r, g, b = (int(round(255 * c)) for c in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def escape(text: str) -> str:
    """`text` for HTML: `&`, `<`, `>` and quotes escaped."""
    return html.escape(str(text), quote=True)


def literal(text) -> str:
    """`text` as matplotlib draws it, character for character.

    Matplotlib reads a string with a pair of `$` as mathtext (`"$x^2$"` becomes
    x squared, `"$\\frac$"` fails when the figure is drawn); a token of the
    user's text is never math, so every `$` is escaped (`\\$` is drawn as `$`).
    """
    return str(text).replace("$", r"\$")


def literals(texts) -> list[str]:
    return [literal(t) for t in texts]
