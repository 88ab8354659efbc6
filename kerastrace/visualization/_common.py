"""Shared helpers for the plot functions (no pyplot import at module level)."""

from __future__ import annotations

import html

import numpy as np

from kerastrace._utils.lazy import pyplot

#: What the diverging attribution colours mean (plots, colour bars and legends).
DIVERGING_MEANING = "red: raises the target score, blue: lowers it"

#: Largest side of a figure these functions size by themselves, in inches.
MAX_INCHES = 24.0


def new_figure(figsize=None):
    """A new figure with constrained layout: titles, labels and colour bars stay inside it.

    Constrained layout runs on every draw, so `fig.savefig(path)` keeps every
    title and tick label inside the picture without `bbox_inches="tight"`.
    """
    return pyplot().figure(figsize=figsize, layout="constrained")


def new_axes(ax=None, figsize=None):
    """Return `(fig, ax)`: the given axes' figure, or a new constrained-layout figure."""
    if ax is not None:
        return ax.figure, ax
    fig = new_figure(figsize)
    return fig, fig.add_subplot()


def fit(value: float, low: float, high: float) -> float:
    """`value` clipped to `[low, high]`."""
    return float(min(max(value, low), high))


def token_fontsize(n_tokens: int, inches: float, largest: float = 9.0) -> float:
    """A font size (points) at which `n_tokens` labels fit side by side in `inches`."""
    return fit(0.8 * 72.0 * inches / max(n_tokens, 1), 4.0, largest)


def shorten(text: str, width: int = 48) -> str:
    """`text` cut in the middle with `...` when longer than `width` characters.

    Layer paths keep their start (the outer layer) and their end (the layer's
    own name), e.g. `"bert_backbone/.../self_attention"`.
    """
    text = str(text)
    if len(text) <= width:
        return text
    head = (width - 3) // 2
    return text[:head] + "..." + text[len(text) - (width - 3 - head) :]


def shorten_path(text: str, width: int = 50) -> str:
    """A layer path cut to `width` characters by dropping its outer parts: the end stays.

    `"bert_backbone/transformer_layer_0/feedforward_intermediate_dense"`
    becomes `"…/transformer_layer_0/feedforward_intermediate_dense"`; a last
    part that alone is too long is cut in the middle (`shorten`).
    """
    text = str(text)
    if len(text) <= width:
        return text
    parts = text.split("/")
    for k in range(1, len(parts)):
        tail = "…/" + "/".join(parts[k:])
        if len(tail) <= width:
            return tail
    return shorten(text, width)


def wrap_path(text: str, width: int) -> str:
    """A layer path broken into lines at its `/` so that no line is much over `width`."""
    text = str(text)
    if len(text) <= width or "/" not in text:
        return text
    lines, line = [], ""
    for part in text.split("/"):
        piece = part if not line else "/" + part
        if line and len(line) + len(piece) > width:
            lines.append(line + "/")
            line = part
        else:
            line += piece
    lines.append(line)
    return "\n".join(lines)


def colorbar(fig, mappable, label: str, **kwargs):
    """`fig.colorbar(mappable, ...)` with its label set; returns the `Colorbar`."""
    cb = fig.colorbar(mappable, **kwargs)
    cb.set_label(label, fontsize=9)
    return cb


def diverging_cmap():
    """The colormap of `diverging_rgb` (blue, white, red) for colour bars."""
    from matplotlib.colors import ListedColormap

    return ListedColormap(diverging_rgb(np.linspace(-1.0, 1.0, 257), 1.0), name="kerastrace_rwb")


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


def ink(rgb) -> str:
    """`"black"` or `"white"`: the text colour that contrasts more with background `rgb`.

    `rgb` holds floats in [0, 1]; contrast is WCAG 2's ratio of relative
    luminances, so dark blue gets white text and light colours black text.
    """
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    lum = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    return "black" if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else "white"


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
