"""Attribution pictures: token text, images, tabular features; and profile charts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kerastrace.visualization._common import (
    as_1d,
    check_tokens,
    diverging_rgb,
    escape,
    keep_positions,
    literal,
    literals,
    new_axes,
    rgb_hex,
)


def plot_token_attributions(
    scores,
    tokens: Sequence[str],
    ax=None,
    *,
    mask=None,
    fontsize: float = 12,
    vmax: float | None = None,
    title: str | None = None,
):
    """Token scores as coloured text: red for positive, blue for negative, white for 0.

    Colours are scaled by `vmax` (default: the largest absolute unmasked score),
    so the strongest token is fully saturated. Tokens wrap onto new lines.

    Args:
        scores: `(T,)` (or `(1, T)`) token scores, e.g. an attribution summed
            over the embedding axis.
        tokens: `T` token strings, drawn literally (`$` is not mathtext).
        ax: Matplotlib axes; a new figure when None.
        mask: Optional `(T,)` boolean array; masked tokens are left out.
        fontsize: Font size of the tokens.
        vmax: Score that maps to the full colour.
        title: Axes title.

    Returns:
        `(fig, ax)`; the token text artists are `ax.texts`, in order.

    Raises:
        ValueError: when `scores` and `tokens` do not fit.

    Example:

    >>> from kerastrace.visualization import plot_token_attributions
    >>> fig, ax = plot_token_attributions([0.9, -0.2, 0.0], ["good", "not", "bad"])
    >>> [t.get_text() for t in ax.texts]
    ['good', 'not', 'bad']
    """
    s = as_1d("scores", scores)
    toks = check_tokens(tokens, s.shape[0])
    keep = keep_positions(mask, s.shape[0])
    s, toks = s[keep], [toks[i] for i in keep]
    colors = diverging_rgb(s, vmax)
    created = ax is None
    fig, ax = new_axes(ax, figsize=(8, 1.2) if created else None)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    try:
        renderer = fig.canvas.get_renderer()
    except AttributeError:  # pragma: no cover - backends without a renderer
        renderer = None
    ax_w = max(ax.get_window_extent(renderer).width, 1.0) if renderer else 576.0
    line_h = 1.9 * fontsize * fig.dpi / 72.0
    ax_h = max(ax.get_window_extent(renderer).height, 1.0) if renderer else 86.0
    x, line = 0.0, 0
    gap = 0.4 * fontsize * fig.dpi / 72.0 / ax_w
    for tok, c in zip(toks, colors):
        text = ax.text(
            x,
            1.0 - (line + 0.5) * line_h / ax_h,
            literal(tok),
            fontsize=fontsize,
            va="center",
            ha="left",
            transform=ax.transAxes,
            bbox={"facecolor": tuple(c), "edgecolor": "none", "pad": 2.0},
        )
        width = (
            text.get_window_extent(renderer).width / ax_w
            if renderer
            else 0.6 * fontsize * len(tok) / ax_w * fig.dpi / 72.0
        )
        if x > 0 and x + width > 1.0:
            line += 1
            x = 0.0
            text.set_position((x, 1.0 - (line + 0.5) * line_h / ax_h))
        x += width + gap
    if created and line > 0:
        fig.set_size_inches(8, 1.2 + line * 1.9 * fontsize / 72.0)
        # keep the text inside the (taller) axes: re-place lines from the top.
        new_h = ax.get_window_extent(renderer).height if renderer else ax_h
        for text in ax.texts:
            px, py = text.get_position()
            row = round((1.0 - py) * ax_h / line_h - 0.5)
            text.set_position((px, 1.0 - (row + 0.5) * line_h / new_h))
    return fig, ax


class TokenAttributionsHTML(str):
    """An HTML snippet (a `str`) that notebooks render via `_repr_html_`."""

    def _repr_html_(self) -> str:
        return str(self)


def token_attributions_html(
    scores, tokens: Sequence[str], *, mask=None, vmax: float | None = None
) -> TokenAttributionsHTML:
    """Token scores as a self-contained HTML snippet of coloured `<span>`s.

    Red for positive, blue for negative, white for zero; each span's tooltip
    shows the score. No scripts, no external styles. The returned string also
    has `_repr_html_`, so it displays as coloured text in Jupyter.

    Args:
        scores: `(T,)` token scores.
        tokens: `T` token strings (HTML-escaped in the output; the snippet is
            marked for Jupyter's MathJax to skip, so `$` stays literal).
        mask: Optional `(T,)` boolean array; masked tokens are left out.
        vmax: Score that maps to the full colour (default: max absolute score).

    Returns:
        A `TokenAttributionsHTML` (a `str`).

    Raises:
        ValueError: when `scores` and `tokens` do not fit.

    Example:

    >>> from kerastrace.visualization import token_attributions_html
    >>> html = token_attributions_html([1.0, -1.0], ["good", "<bad>"])
    >>> "#ff0000" in html, "#0000ff" in html, "&lt;bad&gt;" in html
    (True, True, True)
    """
    s = as_1d("scores", scores)
    toks = check_tokens(tokens, s.shape[0])
    keep = keep_positions(mask, s.shape[0])
    colors = diverging_rgb(s[keep], vmax)
    spans = [
        f'<span title="{s[i]:.4g}" style="background-color:{rgb_hex(c)};color:#000;'
        f'padding:1px 3px;margin:1px;border-radius:3px;">{escape(toks[i])}</span>'
        for i, c in zip(keep, colors)
    ]
    body = " ".join(spans)
    return TokenAttributionsHTML(
        '<div class="kerastrace-tokens tex2jax_ignore mathjax_ignore" '
        f'style="font-family:monospace;line-height:1.9;">{body}</div>'
    )


def plot_image_attribution(
    attr,
    image=None,
    ax=None,
    *,
    alpha: float = 0.5,
    cmap: str | None = None,
    reduce: str = "sum",
    colorbar: bool = True,
):
    """An image attribution as a heatmap, overlaid on the image when given.

    Channel attributions `(H, W, C)` are reduced to `(H, W)` by `reduce`
    (`"sum"`, signed, or `"abs"`, the sum of absolute values). Signed maps use
    a diverging colormap centered at 0 (red positive, blue negative), all
    non-negative maps `"hot"`.

    Args:
        attr: `(H, W)` or `(H, W, C)` attribution (a leading batch axis of 1 is dropped).
        image: Optional `(H, W)` or `(H, W, C)` image drawn beneath.
        ax: Matplotlib axes; a new figure when None.
        alpha: Opacity of the heatmap over the image, in `[0, 1]`.
        cmap: Colormap override.
        reduce: `"sum"` or `"abs"`.
        colorbar: Draw a colorbar.

    Returns:
        `(fig, ax)`.

    Raises:
        ValueError: for shapes that do not fit or an unknown `reduce`.

    Example:

    >>> import numpy as np
    >>> from kerastrace.visualization import plot_image_attribution
    >>> fig, ax = plot_image_attribution(np.eye(4), image=np.zeros((4, 4, 3)))
    >>> len(ax.images)
    2
    """
    from kerastrace._utils import validation as v

    v.check_one_of("reduce", reduce, ("sum", "abs"))
    alpha = v.check_probability("alpha", alpha, inclusive_high=True)
    a = np.asarray(attr, dtype=np.float64)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3:
        a = np.abs(a).sum(-1) if reduce == "abs" else a.sum(-1)
    if a.ndim != 2:
        raise ValueError(
            "Received an invalid value for argument `attr`, expected shape (H, W) or "
            f"(H, W, C). Received: attr.shape={np.shape(attr)}"
        )
    fig, ax = new_axes(ax)
    if image is not None:
        img = np.asarray(image, dtype=np.float64)
        if img.ndim == 4 and img.shape[0] == 1:
            img = img[0]
        if img.shape[:2] != a.shape:
            raise ValueError(
                "Received an invalid value for argument `image`: its height and width must "
                f"match the attribution's {a.shape}. Received: image.shape={img.shape}"
            )
        if img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        lo, hi = float(img.min()), float(img.max())
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
    signed = bool((a < 0).any())
    if signed:
        m = float(np.abs(a).max()) or 1.0
        im = ax.imshow(
            a,
            cmap=cmap or "bwr",
            vmin=-m,
            vmax=m,
            interpolation="nearest",
            alpha=alpha if image is not None else 1.0,
        )
    else:
        im = ax.imshow(
            a,
            cmap=cmap or "hot",
            vmin=0.0,
            interpolation="nearest",
            alpha=alpha if image is not None else 1.0,
        )
    if colorbar:
        fig.colorbar(im, ax=ax)
    ax.set_xticks([])
    ax.set_yticks([])
    return fig, ax


def plot_feature_attributions(
    scores,
    names: Sequence[str] | None = None,
    ax=None,
    *,
    top_k: int | None = None,
    title: str | None = None,
):
    """Tabular feature attributions as horizontal bars sorted by absolute value.

    Largest |score| on top; red for positive, blue for negative.

    Args:
        scores: `(F,)` scores.
        names: `F` feature names (default: `"f0"`, `"f1"`, ...).
        ax: Matplotlib axes; a new figure when None.
        top_k: Only the `top_k` largest by absolute value.
        title: Axes title.

    Returns:
        `(fig, ax)`; bars in `ax.patches`, top to bottom.

    Raises:
        ValueError: when `scores` and `names` do not fit.

    Example:

    >>> from kerastrace.visualization import plot_feature_attributions
    >>> fig, ax = plot_feature_attributions([0.1, -2.0, 0.5], ["a", "b", "c"])
    >>> [t.get_text() for t in ax.get_yticklabels()]
    ['b', 'c', 'a']
    """
    from kerastrace._utils import validation as v

    s = as_1d("scores", scores)
    labels = (
        check_tokens(names, s.shape[0], "names")
        if names is not None
        else [f"f{i}" for i in range(s.shape[0])]
    )
    order = np.argsort(-np.abs(s), kind="stable")
    if top_k is not None:
        order = order[: v.check_positive_int("top_k", top_k)]
    fig, ax = new_axes(ax)
    vals = s[order]
    colors = ["tab:red" if x >= 0 else "tab:blue" for x in vals]
    ax.barh(range(len(order)), vals, color=colors)
    ax.set_yticks(range(len(order)), literals(labels[i] for i in order))
    ax.invert_yaxis()
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("attribution")
    if title:
        ax.set_title(title)
    return fig, ax


def profile_rows(profile) -> list[dict]:
    """Normalize a profile to a list of `{"path", "flops", "time_ms", ...}` dicts.

    Accepts a `kerastrace.profiling.ModelProfile` (its layer rows below the
    model, with their *self* FLOPs, time and parameters so that nested layers
    are not counted twice), any object with `.rows` (rows being dicts or
    objects with attributes `path`, `flops`, `time_ms`, optionally
    `class_name`, `params`), or such a list directly. Missing numbers become 0.
    """
    layers = getattr(profile, "layers", None)
    if getattr(profile, "rows", None) is None and isinstance(layers, (list, tuple)):
        return [
            {
                "path": str(r.path),
                "class_name": str(r.class_name),
                "flops": float(r.self_flops or 0),
                "params": float(r.self_params or 0),
                "time_ms": float(r.self_time_ms or 0),
            }
            for r in layers
            if getattr(r, "depth", 1) > 0
        ] or profile_rows([])
    rows = getattr(profile, "rows", profile)
    if callable(rows):
        rows = rows()
    if rows is None or isinstance(rows, (str, bytes)):
        raise TypeError(
            "Received an invalid value for argument `profile`, expected an object with "
            "`.rows` or a list of rows with `path`, `flops` and `time_ms`. Received: "
            f"profile={type(profile).__name__}"
        )
    out = []
    for r in rows:

        def get(key, default=0.0, r=r):
            if isinstance(r, dict):
                val = r.get(key, default)
            else:
                val = getattr(r, key, default)
            return default if val is None else val

        path = get("path", None) or get("name", "?")
        out.append(
            {
                "path": str(path),
                "class_name": str(get("class_name", "")),
                "flops": float(get("flops")),
                "params": float(get("params")),
                "time_ms": float(get("time_ms")),
            }
        )
    if not out:
        raise ValueError(
            "Received an invalid value for argument `profile`, expected at least one row. "
            "Received: profile with no rows"
        )
    return out


def plot_profile(profile, ax=None, *, top_k: int = 15, sort_by: str | None = None):
    """Per-layer FLOPs and measured time as grouped horizontal bars (share of total).

    Duck-typed: `profile` is any object with `.rows` (e.g.
    `kerastrace.profiling.ModelProfile`) or a list of rows; each row is a dict
    or an object with `path` (str), `flops` (number) and `time_ms` (number).

    Args:
        profile: The profile (see above).
        ax: Matplotlib axes; a new figure when None.
        top_k: Number of layers shown (largest first).
        sort_by: `"time_ms"` or `"flops"`; default: time when any row has
            a time, else FLOPs.

    Returns:
        `(fig, ax)`.

    Raises:
        ValueError: for an empty profile or bad `top_k`/`sort_by`.
        TypeError: for an object without rows.

    Example:

    >>> from kerastrace.visualization import plot_profile
    >>> rows = [{"path": "dense", "flops": 200, "time_ms": 0.1},
    ...         {"path": "attention", "flops": 600, "time_ms": 0.5}]
    >>> fig, ax = plot_profile(rows)
    >>> [t.get_text() for t in ax.get_yticklabels()]
    ['attention', 'dense']
    """
    from kerastrace._utils import validation as v

    top_k = v.check_positive_int("top_k", top_k)
    rows = profile_rows(profile)
    if sort_by is None:
        sort_by = "time_ms" if any(r["time_ms"] > 0 for r in rows) else "flops"
    v.check_one_of("sort_by", sort_by, ("time_ms", "flops"))
    rows = sorted(rows, key=lambda r: -r[sort_by])[:top_k]
    all_rows = profile_rows(profile)
    tot_f = sum(r["flops"] for r in all_rows) or 1.0
    tot_t = sum(r["time_ms"] for r in all_rows) or 1.0
    y = np.arange(len(rows))
    fig, ax = new_axes(ax, figsize=(8, 0.45 * len(rows) + 1.2) if ax is None else None)
    ax.barh(
        y - 0.2,
        [100 * r["flops"] / tot_f for r in rows],
        height=0.4,
        label="FLOPs %",
        color="tab:blue",
    )
    ax.barh(
        y + 0.2,
        [100 * r["time_ms"] / tot_t for r in rows],
        height=0.4,
        label="time %",
        color="tab:orange",
    )
    ax.set_yticks(y, literals(r["path"] for r in rows), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("share of total (%)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"per-layer profile (top {len(rows)} by {sort_by})")
    return fig, ax
