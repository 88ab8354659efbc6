"""Attention pictures: one head, the layer x head grid, rollout and head statistics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from kerastrace._utils.lazy import pyplot
from kerastrace.visualization._common import (
    as_1d,
    check_tokens,
    keep_positions,
    literal,
    literals,
    new_axes,
)


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


def _heatmap(ax, mat, row_labels, col_labels, cmap, vmin=0.0, vmax=None, labels=True):
    im = ax.imshow(mat, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    if labels:
        ax.set_xticks(range(len(col_labels)), literals(col_labels), rotation=90, fontsize=8)
        ax.set_yticks(range(len(row_labels)), literals(row_labels), fontsize=8)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    return im


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
):
    """One attention head as a heatmap with the tokens on both axes.

    Args:
        weights: `(Tq, Tk)`, `(H, Tq, Tk)` or `(B, H, Tq, Tk)` weights.
        tokens: `T` token strings (default: positions).
        ax: Matplotlib axes to draw on; a new figure when None.
        batch: Example to show when `weights` has a batch axis.
        head: Head to show when `weights` has a head axis.
        mask: Optional `(T,)` boolean array; masked rows and columns are left out.
        cmap: Colormap name.
        colorbar: Draw a colorbar.
        title: Axes title (default: `"head <head>"`).

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
    fig, ax = new_axes(ax)
    im = _heatmap(ax, w, labels[: w.shape[0]], labels, cmap, vmax=max(float(w.max()), 1e-12))
    if colorbar:
        fig.colorbar(im, ax=ax)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
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
    cell_size: float = 1.6,
):
    """All heads of all layers as a grid of small heatmaps (rows: layers, columns: heads).

    Args:
        weights_by_layer: `{layer: (B, H, T, T)}` (e.g. from
            `kerastrace.attention.collect`), or a list of arrays.
        tokens: Token strings, shown on the first column's and last row's axes.
        fig: Matplotlib figure to draw on (cleared); a new one when None.
        batch: Example to show.
        mask: Optional `(T,)` boolean array; masked positions are left out.
        cmap: Colormap name.
        cell_size: Size of each cell in inches for a new figure.

    Returns:
        `(fig, axes)` with `axes` a `(L, H)` numpy array of axes.

    Raises:
        ValueError: for an empty input or arrays of the wrong rank.

    Example:

    >>> import numpy as np
    >>> from kerastrace.visualization import plot_model_view
    >>> w = {"l0": np.full((1, 2, 3, 3), 1 / 3), "l1": np.full((1, 2, 3, 3), 1 / 3)}
    >>> fig, axes = plot_model_view(w, ["a", "b", "c"])
    >>> axes.shape
    (2, 2)
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
    plt = pyplot()
    if fig is None:
        fig = plt.figure(figsize=(cell_size * n_heads + 1, cell_size * n_layers + 1))
    else:
        fig.clear()
    axes = np.asarray(fig.subplots(n_layers, n_heads, squeeze=False))
    for li, (name, a) in enumerate(zip(names, arrays)):
        for h in range(n_heads):
            ax = axes[li, h]
            if h >= a.shape[1]:
                ax.axis("off")
                continue
            w = np.asarray(a[batch, h], dtype=np.float64)[np.ix_(keep, keep)]
            show = len(labels) <= 16
            _heatmap(ax, w, labels, labels, cmap, vmax=max(float(w.max()), 1e-12), labels=show)
            if show and h > 0:
                ax.set_yticks([])
            if show and li < n_layers - 1:
                ax.set_xticks([])
            if li == 0:
                ax.set_title(f"head {h}", fontsize=9)
            if h == 0:
                ax.set_ylabel(literal(name), fontsize=8)
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
        return plot_attention_head(s, tokens, ax, mask=mask, title=title, cmap="magma")
    s = as_1d("scores", s)
    toks = check_tokens(tokens, s.shape[0])
    keep = keep_positions(mask, s.shape[0])
    fig, ax = new_axes(ax)
    ax.bar(range(len(keep)), s[keep], color="tab:orange")
    ax.set_xticks(range(len(keep)), literals(toks[i] for i in keep), rotation=90, fontsize=8)
    ax.set_ylabel("share")
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
    fig, ax = new_axes(ax)
    im = ax.imshow(arr, cmap=cmap, aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax)
    lo, hi = float(arr.min()), float(arr.max())
    for (i, j), value in np.ndenumerate(arr):
        light = hi > lo and (value - lo) / (hi - lo) > 0.6
        ax.text(
            j,
            i,
            f"{value:.2f}",
            ha="center",
            va="center",
            fontsize=7,
            color="black" if light else "white",
        )
    ax.set_xticks(range(arr.shape[1]), [str(h) for h in range(arr.shape[1])])
    ax.set_yticks(range(arr.shape[0]), literals(names), fontsize=8)
    ax.set_xlabel("head")
    ax.set_title(stat.replace("_", " "))
    return fig, ax
