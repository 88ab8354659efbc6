"""Attribution pictures: token text, images, tabular features; and profile charts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kerastrace.visualization._common import (
    DIVERGING_MEANING,
    MAX_INCHES,
    as_1d,
    check_tokens,
    diverging_cmap,
    diverging_rgb,
    fit,
    ink,
    keep_positions,
    literal,
    literals,
    new_axes,
    new_figure,
    shorten,
    shorten_path,
)
from kerastrace.visualization._common import colorbar as add_colorbar


def plot_token_attributions(
    scores,
    tokens: Sequence[str],
    ax=None,
    *,
    mask=None,
    fontsize: float = 12,
    vmax: float | None = None,
    title: str | None = None,
    colorbar: bool = True,
    colorbar_label: str | None = None,
):
    """Token scores as coloured text: red for positive, blue for negative, white for 0.

    The text is black or white, whichever contrasts more with its box.

    Colours are scaled by `vmax` (default: the largest absolute unmasked score),
    so the strongest token is fully saturated. Tokens wrap onto new lines; a
    new figure is as tall as its lines need and as wide as the text (5 to 10
    inches, wider for a long title), with a colour bar below the tokens that
    says what the colours mean. Its layout keeps the title and the colour bar
    inside the picture, also for `fig.savefig(path)` without `bbox_inches`.

    Args:
        scores: `(T,)` (or `(1, T)`) token scores, e.g. an attribution summed
            over the embedding axis.
        tokens: `T` token strings, drawn literally (`$` is not mathtext).
        ax: Matplotlib axes; a new figure when None.
        mask: Optional `(T,)` boolean array; masked tokens are left out.
        fontsize: Font size of the tokens.
        vmax: Score that maps to the full colour.
        title: Axes title.
        colorbar: Draw a colour bar below the tokens.
        colorbar_label: Its label (default: `"attribution score (red: raises
            the target score, blue: lowers it)"`).

    Returns:
        `(fig, ax)`; the token text artists are `ax.texts`, in order. They
        are placed in points from the axes' top-left corner, so they keep
        their size and place when the figure is saved at another dpi.

    Raises:
        ValueError: when `scores` and `tokens` do not fit.

    Example:

    >>> from kerastrace.visualization import plot_token_attributions
    >>> fig, ax = plot_token_attributions([0.9, -0.2, 0.0], ["good", "not", "bad"])
    >>> [t.get_text() for t in ax.texts]
    ['good', 'not', 'bad']
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    s = as_1d("scores", scores)
    toks = check_tokens(tokens, s.shape[0])
    keep = keep_positions(mask, s.shape[0])
    s, toks = s[keep], [toks[i] for i in keep]
    if vmax is None:
        vmax = float(np.max(np.abs(s))) if s.size else 0.0
    colors = diverging_rgb(s, vmax)
    created = ax is None
    cax = grid = None
    if created:
        fig = new_figure(figsize=(8.0, 2.0))
        if colorbar:
            grid = fig.add_gridspec(2, 1, height_ratios=[1.0, 0.1])
            ax, cax = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
        else:
            ax = fig.add_subplot()
    else:
        fig = ax.figure
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    if colorbar:
        top = float(vmax) if vmax and vmax > 0 else 1.0
        mappable = ScalarMappable(Normalize(-top, top), diverging_cmap())
        where = {"cax": cax} if cax is not None else {"ax": ax, "shrink": 0.8, "aspect": 40}
        cb = add_colorbar(
            fig,
            mappable,
            colorbar_label or f"attribution score ({DIVERGING_MEANING})",
            orientation="horizontal",
            **where,
        )
        cb.ax.tick_params(labelsize=8)

    pad = 2.0  # points of coloured box around each token
    gap = 2 * pad + 0.3 * fontsize
    line_h = 1.9 * fontsize
    texts = [
        ax.annotate(
            literal(tok),
            xy=(0.0, 1.0),
            xycoords="axes fraction",
            xytext=(pad, -0.5 * line_h - pad),
            textcoords="offset points",
            fontsize=fontsize,
            color=ink(c),
            va="center",
            ha="left",
            bbox={"facecolor": tuple(c), "edgecolor": "none", "pad": pad},
            annotation_clip=False,
        )
        for tok, c in zip(toks, colors)
    ]
    for text in texts:
        text.set_in_layout(False)
    to_pt = 72.0 / fig.dpi
    widths = [t.get_window_extent().width * to_pt for t in texts]
    if created:
        wanted = sum(w + gap for w in widths) / 72.0 + 0.4
        if title:
            wanted = max(wanted, ax.title.get_window_extent().width / fig.dpi + 0.4)
        fig.set_size_inches(fit(wanted, 5.0, 10.0), 2.0)
    engine = fig.get_layout_engine()
    if engine is not None:
        engine.execute(fig)
    avail = max(ax.get_window_extent().width * to_pt - pad, 1.0)
    x, line = pad, 0
    for text, width in zip(texts, widths):
        if x > pad and x + width + pad > avail:
            line, x = line + 1, pad
        text.xyann = (x, -(line + 0.5) * line_h - pad)
        x += width + gap
    if created:
        # Grow or shrink the figure so that the text axes is exactly as tall as
        # the lines; the title, the colour bar and the margins keep their inches.
        need = ((line + 1) * line_h + 2 * pad) / 72.0
        fig_w, fig_h = fig.get_size_inches()
        used = ax.get_window_extent().height / fig.dpi
        if grid is not None:
            bar = cax.get_window_extent().height / fig.dpi
            grid.set_height_ratios([need, 0.12])
            fig.set_size_inches(fig_w, fig_h - used - bar + need + 0.12)
        else:
            fig.set_size_inches(fig_w, fig_h - used + need)
    return fig, ax


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
    non-negative maps `"hot"`; the colour bar's label says what the colours
    mean.

    Args:
        attr: `(H, W)` or `(H, W, C)` attribution (a leading batch axis of 1 is dropped).
        image: Optional `(H, W)` or `(H, W, C)` image drawn beneath.
        ax: Matplotlib axes; a new figure when None.
        alpha: Opacity of the heatmap over the image, in `[0, 1]`.
        cmap: Colormap override.
        reduce: `"sum"` or `"abs"`.
        colorbar: Draw a labelled colour bar.

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
    channels = a.ndim == 3
    if channels:
        a = np.abs(a).sum(-1) if reduce == "abs" else a.sum(-1)
    if a.ndim != 2:
        raise ValueError(
            "Received an invalid value for argument `attr`, expected shape (H, W) or "
            f"(H, W, C). Received: attr.shape={np.shape(attr)}"
        )
    fig, ax = new_axes(ax, figsize=(6.4, 5.0))
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
        name = (
            "|attribution| summed over channels"
            if channels and reduce == "abs"
            else ("attribution summed over channels" if channels else "attribution")
        )
        if signed and cmap is None:
            label = f"{name}\n{DIVERGING_MEANING}"
        elif signed:
            label = f"{name}\n(> 0 raises the target score, < 0 lowers it)"
        else:
            label = f"{name}\n(higher: more influence on the target score)"
        add_colorbar(fig, im, label, ax=ax)
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

    Largest |score| on top; red for positive, blue for negative (the axis
    label says so). A new figure grows with the number of features.

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
    fig, ax = new_axes(ax, figsize=(7.0, fit(0.32 * len(order) + 1.4, 2.5, MAX_INCHES)))
    vals = s[order]
    colors = ["tab:red" if x >= 0 else "tab:blue" for x in vals]
    ax.barh(range(len(order)), vals, color=colors)
    ax.set_yticks(range(len(order)), literals(shorten(labels[i], 60) for i in order))
    ax.invert_yaxis()
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel(f"attribution ({DIVERGING_MEANING})")
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


def _layer_tree(profile) -> list[dict] | None:
    """The rows of a `ModelProfile` (or a list of its `LayerProfile`s) with depth and
    *self* numbers, the model's own row included; None for flat duck-typed rows."""
    if getattr(profile, "rows", None) is not None:
        return None
    items = getattr(profile, "layers", profile)
    if not isinstance(items, (list, tuple)) or not items:
        return None
    if not all(hasattr(r, n) for r in items for n in ("path", "depth", "self_flops")):
        return None
    return [
        {
            "path": str(r.path),
            "label": str(getattr(r, "label", "") or r.path),
            "class_name": str(getattr(r, "class_name", "")),
            "depth": int(r.depth),
            "flops": float(r.self_flops or 0),
            "params": float(getattr(r, "self_params", 0) or 0),
            "time_ms": float(getattr(r, "self_time_ms", 0) or 0),
        }
        for r in items
    ]


_QUANTITIES = ("flops", "time_ms", "params")


def fold_profile(
    rows: list[dict], depth: int | None = None, key: str = "time_ms", max_rows: int = 15
) -> list[dict]:
    """Fold sublayers into their parent: one row per shown layer, with its subtree total.

    `rows` hold `path`, `depth` and the *self* numbers (`flops`, `time_ms`,
    `params`) of every layer, parents included (as `ModelProfile.layers`). A
    shown layer's numbers are its own plus those of all its sublayers; a
    layer whose sublayers are shown separately keeps a row for its own ops
    (labelled `"<path> (own ops)"`). The sums over the result equal the sums
    over `rows`: nothing is dropped or counted twice.

    Args:
        rows: The rows (see above).
        depth: Show the layers at this depth (1: the model's layers) and the
            leaves above it. `None`: the deepest depth at which at most
            `max_rows` rows have FLOPs or time; there, a layer whose
            sublayers hold less than half of its `key` (an attention layer
            with only a dropout inside) stays whole.
        key: The quantity that decides which layers stay whole when `depth` is None.
        max_rows: See `depth`.

    Returns:
        A list of row dicts (`path`, `label`, `class_name`, `depth`,
        `flops`, `time_ms`, `params`), in model order.

    Example:

    >>> rows = [
    ...     {"path": "", "label": "m", "depth": 0, "flops": 0, "time_ms": 0},
    ...     {"path": "att", "depth": 1, "flops": 80, "time_ms": 4},
    ...     {"path": "att/dropout", "depth": 2, "flops": 0, "time_ms": 0},
    ...     {"path": "att/dense", "depth": 2, "flops": 10, "time_ms": 1},
    ...     {"path": "dense", "depth": 1, "flops": 10, "time_ms": 1}]
    >>> [(r["label"], r["flops"]) for r in fold_profile(rows, 1)]
    [('m (own ops)', 0.0), ('att', 90.0), ('dense', 10.0)]
    >>> [(r["label"], r["flops"]) for r in fold_profile(rows, 2)][1:]
    [('att (own ops)', 80.0), ('att/dropout', 0.0), ('att/dense', 10.0), ('dense', 10.0)]
    """
    rows = [
        {
            "path": str(r["path"]),
            "label": str(r.get("label") or r["path"]),
            "class_name": str(r.get("class_name", "")),
            "depth": int(r["depth"]),
            **{q: float(r.get(q) or 0.0) for q in _QUANTITIES},
        }
        for r in rows
    ]
    by_path = {r["path"]: r for r in rows}

    def parent_of(path):
        if path == "":
            return None
        parts = path.split("/")
        for k in range(len(parts) - 1, 0, -1):
            if "/".join(parts[:k]) in by_path:
                return "/".join(parts[:k])
        return "" if "" in by_path else None

    parent = {r["path"]: parent_of(r["path"]) for r in rows}
    children: dict = {}
    for r in rows:
        children.setdefault(parent[r["path"]], []).append(r["path"])
    total = {r["path"]: {q: r[q] for q in _QUANTITIES} for r in rows}
    for r in sorted(rows, key=lambda r: -r["depth"]):
        up = parent[r["path"]]
        if up is not None:
            for q in _QUANTITIES:
                total[up][q] += total[r["path"]][q]

    def cut(d, whole_if_thin):
        opened = set()
        for r in rows:
            p = r["path"]
            if r["depth"] >= d or not children.get(p):
                continue
            inside = sum(total[c][key] for c in children[p])
            if whole_if_thin and p and inside < 0.5 * total[p][key]:
                continue
            opened.add(p)
        out = []
        for r in rows:
            p = r["path"]
            if any(a not in opened for a in _ancestors(p, parent)):
                continue  # folded into an ancestor
            row = dict(r)
            if p in opened:
                row["label"] = f"{r['label']} (own ops)" if r["label"] else "(model's own ops)"
            else:
                row.update(total[p])
            out.append(row)
        return out

    if depth is not None:
        return cut(depth, whole_if_thin=False)
    deepest = max((r["depth"] for r in rows), default=1)
    chosen = cut(1, whole_if_thin=True)
    for d in range(2, deepest + 1):
        rows_d = cut(d, whole_if_thin=True)
        if sum(1 for r in rows_d if r["flops"] > 0 or r["time_ms"] > 0) > max_rows:
            break
        chosen = rows_d
    return chosen


def _ancestors(path, parent):
    up = parent[path]
    while up is not None:
        yield up
        up = parent[up]


def plot_profile(
    profile,
    ax=None,
    *,
    top_k: int = 15,
    sort_by: str | None = None,
    depth: int | None = None,
    title: str | None = None,
):
    """Per-layer FLOPs and measured time as grouped horizontal bars (share of total).

    For a `kerastrace.profiling.ModelProfile` (or a list of its
    `LayerProfile`s) sublayers are folded into their parent
    (`fold_profile`): each bar is a layer with everything inside it, so a
    layer with sublayers (an attention layer with its dropout) is never left
    out and nothing is counted twice; ops outside every layer are one more
    row. Other inputs are duck-typed: any object with `.rows` or a list of
    rows, each a dict or an object with `path` (str), `flops` (number) and
    `time_ms` (number), drawn as they are.

    Rows that are 0 in every plotted quantity are left out; the largest row
    is on top (the y tick labels are listed bottom to top, smallest first).
    The time bars are drawn when any row has a time. A new figure grows with
    the number of rows and its layout keeps long layer paths inside it.

    Args:
        profile: The profile (see above).
        ax: Matplotlib axes; a new figure when None.
        top_k: Number of layers shown (largest first).
        sort_by: `"time_ms"` or `"flops"`; default: time when any row has
            a time, else FLOPs.
        depth: For a `ModelProfile`: show the layers at this depth (1: the
            model's own layers), deeper ones folded into them. Default: the
            deepest depth at which at most `top_k` rows have FLOPs or time,
            where a layer whose sublayers hold less than half of its total
            (an attention layer with only a dropout inside) stays whole.
        title: Axes title (default: says what is shown).

    Returns:
        `(fig, ax)`.

    Raises:
        ValueError: for an empty profile or bad `top_k`/`sort_by`/`depth`.
        TypeError: for an object without rows.

    Example:

    >>> from kerastrace.visualization import plot_profile
    >>> rows = [{"path": "dense", "flops": 200, "time_ms": 0.1},
    ...         {"path": "attention", "flops": 600, "time_ms": 0.5},
    ...         {"path": "dropout", "flops": 0, "time_ms": 0.0}]
    >>> fig, ax = plot_profile(rows)
    >>> [t.get_text() for t in ax.get_yticklabels()]
    ['dense', 'attention']
    """
    from kerastrace._utils import validation as v

    top_k = v.check_positive_int("top_k", top_k)
    if depth is not None:
        depth = v.check_positive_int("depth", depth)
    tree = _layer_tree(profile)
    rows = profile_rows(profile) if tree is None else tree
    if sort_by is None:
        sort_by = "time_ms" if any(r["time_ms"] > 0 for r in rows) else "flops"
    v.check_one_of("sort_by", sort_by, ("time_ms", "flops"))
    if tree is not None:
        rows = fold_profile(tree, depth, key=sort_by, max_rows=top_k)
        outside = {
            "flops": float(getattr(profile, "unassigned_flops", 0) or 0),
            "time_ms": float(getattr(profile, "unassigned_time_ms", 0) or 0),
        }
        if outside["flops"] > 0 or outside["time_ms"] > 0:
            rows.append({"path": "", "label": "(outside any layer)", **outside})
    for r in rows:
        r.setdefault("label", r["path"])
    with_time = any(r["time_ms"] > 0 for r in rows)
    tot_f = sum(r["flops"] for r in rows) or 1.0
    tot_t = sum(r["time_ms"] for r in rows) or 1.0
    shown = [r for r in rows if r["flops"] > 0 or (with_time and r["time_ms"] > 0)]
    other = "time_ms" if sort_by == "flops" else "flops"
    shown = sorted(shown, key=lambda r: (-r[sort_by], -r[other]))[:top_k][::-1]
    y = np.arange(len(shown))
    labels = [shorten_path(r["label"], 60) for r in shown]
    if ax is None:
        longest = max((len(x) for x in labels), default=0)
        fig, ax = new_axes(
            None,
            figsize=(fit(5.5 + 0.07 * longest, 8.0, 12.0), fit(0.42 * len(shown) + 1.4, 2.5, 24.0)),
        )
    else:
        fig = ax.figure
    h = 0.4 if with_time else 0.7
    ax.barh(
        y + (h / 2 if with_time else 0.0),
        [100 * r["flops"] / tot_f for r in shown],
        height=h,
        label="FLOPs %",
        color="tab:blue",
    )
    if with_time:
        ax.barh(
            y - h / 2,
            [100 * r["time_ms"] / tot_t for r in shown],
            height=h,
            label="time %",
            color="tab:orange",
        )
    ax.set_yticks(y, literals(labels), fontsize=8)
    ax.set_ylim(-0.6, len(shown) - 0.4)
    ax.set_xlabel("share of the model's total (%)")
    if not shown:
        ax.text(0.5, 0.5, "no layer has FLOPs or measured time", ha="center",
                transform=ax.transAxes)  # fmt: skip
    else:
        ax.legend(loc="lower right", fontsize=8)
    if title is None:
        what = "FLOPs and time" if with_time else "FLOPs"
        how = " (sublayers folded into their parent)" if tree is not None else ""
        title = f"{what} per layer{how}: top {len(shown)} by {sort_by.replace('_ms', '')}"
    ax.set_title(title, fontsize=10)
    return fig, ax
