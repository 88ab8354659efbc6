"""Attention pictures: one head, the layer x head grid, rollout and head statistics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from kerastrace.visualization._common import (
    MAX_INCHES,
    as_1d,
    check_tokens,
    fit,
    keep_positions,
    literal,
    literals,
    new_axes,
    new_figure,
    shorten,
    token_fontsize,
    wrap_path,
)
from kerastrace.visualization._common import colorbar as add_colorbar

#: Colour-bar labels of the head statistics.
_STAT_LABELS = {
    "entropy": "mean attention entropy (nats)",
    "distance": "mean attention distance (tokens)",
    "special_share": "share of attention on special tokens",
}


def _pick_matrix(weights, batch, head):
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 4:
        w = w[batch]
    if w.ndim == 3:
        w = w[head]
    if w.ndim != 2:
        raise ValueError(
            "Received an invalid value for argument `weights`, expected an array of shape "
            "(Tq, Tk), (H, Tq, Tk) or (B, H, Tq, Tk). Received: "
            f"weights.shape={np.shape(weights)}"
        )
    return w


def _heatmap(ax, mat, row_labels, col_labels, cmap, vmin=0.0, vmax=None, labels=True, fontsize=8.0):
    im = ax.imshow(mat, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    if labels:
        ax.set_xticks(range(len(col_labels)), literals(col_labels), rotation=90, fontsize=fontsize)
        ax.set_yticks(range(len(row_labels)), literals(row_labels), fontsize=fontsize)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    return im


def _axes_inches(ax) -> tuple[float, float]:
    """The axes' current width and height in inches."""
    box = ax.get_window_extent()
    return box.width / ax.figure.dpi, box.height / ax.figure.dpi


def plot_attention_head(
    weights,
    tokens: Sequence[str] | None = None,
    ax=None,
    *,
    batch: int = 0,
    head: int = 0,
    mask=None,
    cmap: str = "viridis",
    colorbar: bool = True,
    title: str | None = None,
    colorbar_label: str = "attention weight",
):
    """One attention head as a heatmap with the tokens on both axes.

    A new figure grows with the number of tokens (up to 14 inches a side) and
    the token labels shrink to fit; its layout keeps the title, the labels and
    the colour bar inside the picture.

    Args:
        weights: `(Tq, Tk)`, `(H, Tq, Tk)` or `(B, H, Tq, Tk)` weights.
        tokens: `T` token strings (default: positions).
        ax: Matplotlib axes to draw on; a new figure when None.
        batch: Example to show when `weights` has a batch axis.
        head: Head to show when `weights` has a head axis.
        mask: Optional `(T,)` boolean array; masked rows and columns are left out.
        cmap: Colormap name.
        colorbar: Draw a colour bar.
        title: Axes title (default: `"head <head>"`).
        colorbar_label: What the colour means, written along the colour bar.

    Returns:
        `(fig, ax)`.

    Raises:
        ValueError: for shapes that do not fit.

    Example:

    >>> import numpy as np
    >>> from kerastrace.visualization import plot_attention_head
    >>> fig, ax = plot_attention_head(np.eye(3), ["a", "b", "c"])
    >>> [t.get_text() for t in ax.get_xticklabels()]
    ['a', 'b', 'c']
    """
    w = _pick_matrix(weights, batch, head)
    toks = check_tokens(tokens, w.shape[-1])
    keep = keep_positions(mask, w.shape[-1])
    w = w[np.ix_(keep, keep)] if w.shape[0] == w.shape[1] else w[:, keep]
    labels = [toks[i] for i in keep]
    n = max(w.shape)
    if ax is None:
        side = fit(0.28 * n + 2.2, 4.0, 14.0)
        fig, ax = new_axes(None, figsize=(side + (1.0 if colorbar else 0.0), side))
    else:
        fig = ax.figure
    fontsize = token_fontsize(n, min(_axes_inches(ax)))
    vmax = max(float(w.max()), 1e-12) if w.size else 1.0
    im = _heatmap(ax, w, labels[: w.shape[0]], labels, cmap, vmax=vmax, fontsize=fontsize)
    if colorbar:
        add_colorbar(fig, im, colorbar_label, ax=ax)
    ax.set_xlabel("key (attended-to token)")
    ax.set_ylabel("query (attending token)")
    ax.set_title(title if title is not None else f"head {head}")
    return fig, ax


def plot_model_view(
    weights_by_layer,
    tokens: Sequence[str] | None = None,
    fig=None,
    *,
    batch: int = 0,
    mask=None,
    cmap: str = "viridis",
    cell_size: float | None = None,
    title: str | None = None,
):
    """All heads of all layers as a grid of small heatmaps (rows: layers, columns: heads).

    Every row is labelled with its layer (written across, long paths broken
    at their `/`), every column with its head, and one
    colour bar serves the whole grid: all cells share one colour scale (0 to
    the largest weight shown), so heads can be compared. The tokens are
    written on the first column (queries) and the last row (keys) when they
    fit at a legible size. A new figure grows with the number of layers,
    heads and tokens (up to 24 inches a side).

    Args:
        weights_by_layer: `{layer: (B, H, T, T)}` (e.g. from
            `kerastrace.attention.collect`), or a list of arrays.
        tokens: Token strings, shown on the first column's and last row's axes.
        fig: Matplotlib figure to draw on (cleared); a new one when None.
        batch: Example to show.
        mask: Optional `(T,)` boolean array; masked positions are left out.
        cmap: Colormap name.
        cell_size: Size of each cell in inches for a new figure (default:
            from the number of tokens, 1.4 to 3.5 inches); smaller when the
            figure would exceed 24 inches.
        title: Figure title (default: says what rows, columns and cells are).

    Returns:
        `(fig, axes)` with `axes` a `(L, H)` numpy array of axes.

    Raises:
        ValueError: for an empty input or arrays of the wrong rank.

    Example:

    >>> import numpy as np
    >>> from kerastrace.visualization import plot_model_view
    >>> w = {"l0": np.full((1, 2, 3, 3), 1 / 3), "l1": np.full((1, 2, 3, 3), 1 / 3)}
    >>> fig, axes = plot_model_view(w, ["a", "b", "c"])
    >>> axes.shape, axes[1, 0].get_ylabel(), axes[0, 1].get_title()
    ((2, 2), 'l1', 'head 1')
    """
    if isinstance(weights_by_layer, Mapping):
        names = [str(k) for k in weights_by_layer]
        arrays = [np.asarray(a) for a in weights_by_layer.values()]
    else:
        arrays = [np.asarray(a) for a in weights_by_layer]
        names = [f"layer_{i}" for i in range(len(arrays))]
    if not arrays or any(a.ndim != 4 for a in arrays):
        raise ValueError(
            "Received an invalid value for argument `weights_by_layer`, expected a non-empty "
            "dict or list of (B, H, T, T) arrays. Received: "
            f"shapes={[a.shape for a in arrays]}"
        )
    n_layers = len(arrays)
    n_heads = max(a.shape[1] for a in arrays)
    t = arrays[0].shape[-1]
    toks = check_tokens(tokens, t)
    keep = keep_positions(mask, t)
    labels = [toks[i] for i in keep]
    n = max(len(labels), 1)
    cells = {
        (li, h): np.asarray(a[batch, h], dtype=np.float64)[np.ix_(keep, keep)]
        for li, a in enumerate(arrays)
        for h in range(a.shape[1])
    }
    vmax = max([float(c.max()) for c in cells.values() if c.size] + [1e-12])

    row_names = [wrap_path(x, 24) for x in names]  # written across, left of each row
    names_in = max(len(line) for x in row_names for line in x.split("\n")) * 8 * 0.62 / 72
    if fig is None:
        cell = fit(0.12 * n + 0.8, 1.4, 3.5) if cell_size is None else float(cell_size)
        room_w = MAX_INCHES - 1.6 - names_in
        cell = max(0.5, min(cell, room_w / n_heads, (MAX_INCHES - 1.2) / n_layers))
        fontsize = token_fontsize(n, cell, largest=8.0)
        show = 72.0 * cell / n >= 5.0
        longest = max((len(x) for x in labels), default=1) if show else 0
        margin = 0.6 * longest * fontsize / 72.0  # the token labels, left and below
        width = cell * n_heads + margin + names_in + 1.6  # + the colour bar
        height = cell * n_layers + margin + 1.2  # + head titles and the figure title
        fig = new_figure(figsize=(fit(width, 4.0, MAX_INCHES), fit(height, 2.5, MAX_INCHES)))
    else:
        fig.clear()
        if fig.get_layout_engine() is None:
            fig.set_layout_engine("constrained")
        w_in, h_in = fig.get_size_inches()
        cell = min(w_in / (n_heads + 1.0), h_in / (n_layers + 0.7))
        fontsize = token_fontsize(n, cell, largest=8.0)
        show = 72.0 * cell / n >= 5.0
    axes = np.asarray(fig.subplots(n_layers, n_heads, squeeze=False))
    im = None
    for li in range(n_layers):
        for h in range(n_heads):
            ax = axes[li, h]
            if (li, h) not in cells:
                ax.axis("off")
                continue
            im = _heatmap(
                ax, cells[li, h], labels, labels, cmap, vmax=vmax, labels=show, fontsize=fontsize
            )
            if show and h > 0:
                ax.set_yticks([])
            if show and li < n_layers - 1:
                ax.set_xticks([])
            if li == 0:
                ax.set_title(f"head {h}", fontsize=9)
            if h == 0:
                ax.set_ylabel(
                    literal(row_names[li]), fontsize=8, rotation=0, ha="right", va="center"
                )
    add_colorbar(fig, im, "attention weight", ax=axes, shrink=0.9 if n_layers > 2 else 1.0)
    if title is None:
        hidden = "" if show else f"; {len(labels)} tokens, too many to label"
        title = (
            "attention: rows = layers, columns = heads\n"
            f"(in each cell: query down, key across{hidden})"
        )
    fig.suptitle(title, fontsize=10)
    return fig, axes


def plot_rollout(
    scores,
    tokens: Sequence[str] | None = None,
    ax=None,
    *,
    batch: int = 0,
    query: int | None = None,
    mask=None,
    title: str = "attention rollout",
):
    """Rollout (or flow) scores per input token as bars, or the full matrix as a heatmap.

    Args:
        scores: `(T,)` scores per token, a `(T, T)` matrix or a `(B, T, T)`
            result of `attention_rollout` / `attention_flow`. With a matrix and
            `query` set, the bars show that output position's row (e.g.
            `query=0` for [CLS]); with `query=None` the matrix is drawn.
        tokens: `T` token strings.
        ax: Matplotlib axes; a new figure when None.
        batch: Example to show for `(B, T, T)` input.
        query: Row of the matrix to show as bars.
        mask: Optional `(T,)` boolean array; masked tokens are left out.
        title: Axes title.

    Returns:
        `(fig, ax)`.

    Raises:
        ValueError: for shapes that do not fit.

    Example:

    >>> import numpy as np
    >>> from kerastrace.visualization import plot_rollout
    >>> fig, ax = plot_rollout(np.array([0.5, 0.3, 0.2]), ["[CLS]", "hi", "[SEP]"])
    >>> len(ax.patches)
    3
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 3:
        s = s[batch]
    if s.ndim == 2 and query is not None:
        s = s[query]
    if s.ndim == 2:
        return plot_attention_head(
            s, tokens, ax, mask=mask, title=title, cmap="magma",
            colorbar_label="share of attention",
        )  # fmt: skip
    s = as_1d("scores", s)
    toks = check_tokens(tokens, s.shape[0])
    keep = keep_positions(mask, s.shape[0])
    if ax is None:
        fig, ax = new_axes(None, figsize=(fit(0.3 * len(keep) + 1.8, 4.0, 16.0), 3.6))
    else:
        fig = ax.figure
    fontsize = token_fontsize(len(keep), _axes_inches(ax)[0], largest=8.0)
    ax.bar(range(len(keep)), s[keep], color="tab:orange")
    ax.set_xticks(range(len(keep)), literals(toks[i] for i in keep), rotation=90, fontsize=fontsize)
    ax.set_xlim(-0.6, len(keep) - 0.4)
    ax.set_ylabel("share of attention")
    ax.set_title(title)
    return fig, ax


def plot_head_statistics(stats, ax=None, *, stat: str = "entropy", cmap: str = "viridis"):
    """One head statistic as a layer x head heatmap with the values written in.

    Args:
        stats: A `kerastrace.attention.HeadStatistics` (or any object with
            `layers` and `(L, H)` arrays named like `stat`), or an `(L, H)` array.
        ax: Matplotlib axes; a new figure when None.
        stat: `"entropy"`, `"distance"` or `"special_share"`.
        cmap: Colormap name.

    Returns:
        `(fig, ax)`.

    Raises:
        ValueError: when `stats` has no such statistic or it is not 2D.

    Example:

    >>> import numpy as np
    >>> from kerastrace.visualization import plot_head_statistics
    >>> fig, ax = plot_head_statistics(np.array([[0.1, 0.9], [0.5, 0.4]]))
    >>> len(ax.texts)
    4
    """
    if hasattr(stats, stat):
        arr = getattr(stats, stat)
        names = list(getattr(stats, "layers", []))
    else:
        arr, names = stats, []
    if arr is None:
        raise ValueError(
            f"Received an invalid value for argument `stat`: the statistics hold no {stat!r} "
            f"(pass `special=` to head_statistics). Received: stat={stat!r}"
        )
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(
            "Received an invalid value for argument `stats`, expected (L, H) values. "
            f"Received: shape={arr.shape}"
        )
    names = names or [f"layer_{i}" for i in range(arr.shape[0])]
    n_layers, n_heads = arr.shape
    if ax is None:
        longest = min(max(len(str(x)) for x in names), 48)
        fig, ax = new_axes(
            None,
            figsize=(
                fit(0.6 * n_heads + 0.07 * longest + 2.2, 4.0, MAX_INCHES),
                fit(0.45 * n_layers + 1.4, 2.5, MAX_INCHES),
            ),
        )
    else:
        fig = ax.figure
    im = ax.imshow(arr, cmap=cmap, aspect="auto", interpolation="nearest")
    add_colorbar(fig, im, _STAT_LABELS.get(stat, stat.replace("_", " ")), ax=ax)
    w_in, h_in = _axes_inches(ax)
    cell_pt = 72.0 * min(w_in / n_heads, h_in / n_layers)
    value_size = fit(cell_pt / 3.2, 4.0, 8.0)
    lo, hi = float(arr.min()), float(arr.max())
    for (i, j), value in np.ndenumerate(arr):
        light = hi > lo and (value - lo) / (hi - lo) > 0.6
        ax.text(
            j,
            i,
            f"{value:.2f}",
            ha="center",
            va="center",
            fontsize=value_size,
            color="black" if light else "white",
        )
    ax.set_xticks(range(n_heads), [str(h) for h in range(n_heads)], fontsize=8)
    ax.set_yticks(range(n_layers), literals(shorten(x) for x in names), fontsize=8)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(stat.replace("_", " "))
    return fig, ax
