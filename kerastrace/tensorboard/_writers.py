"""`tf.summary` writers for attention maps, attributions, head statistics and profiles."""

from __future__ import annotations

import contextlib
import errno
import html
import io
import logging
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from kerastrace._utils.lazy import pyplot

logger = logging.getLogger(__name__)


class SummaryWriteError(OSError):
    """TensorBoard summaries could not be written (the message names the log directory)."""


class _Cached:
    """A cached writer, with what identifies the directory and event file it writes."""

    def __init__(self, writer, ident, event_file):
        self.writer = writer
        self.ident = ident
        self.event_file = event_file


_WRITERS: dict[str, _Cached] = {}


def _ident(path):
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def _events(path) -> set[str]:
    try:
        return {n for n in os.listdir(path) if n.startswith("events.out.tfevents.")}
    except OSError:
        return set()


def _vanished(key: str, cached: _Cached) -> bool:
    """Whether the directory (or the event file) the writer writes is gone or replaced."""
    try:
        if _ident(key) != cached.ident:
            return True
    except OSError:
        return True
    return cached.event_file is not None and not os.path.exists(cached.event_file)


def _reason(exc: BaseException) -> str:
    """The operating-system reason in an error message ("No space left on device", ...)."""
    message = str(exc)
    found = [os.strerror(code) for code in errno.errorcode if os.strerror(code) in message]
    if found:
        return max(found, key=len)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    first = message.strip().splitlines()[0] if message.strip() else ""
    return f"{type(exc).__name__}: {first}"[:300]


def write_error(
    exc: BaseException, logdir, any_oserror: bool = True
) -> SummaryWriteError | None:
    """A `SummaryWriteError` for an error raised while writing summaries to `logdir`, else None.

    The cached writer of `logdir` is forgotten (the next `get_writer` makes a
    new one, in a new event file). The message depends only on the
    directory and the reason, so that a repeated failure reads the same.
    `any_oserror=False` leaves OSErrors that are not `SummaryWriteError`
    alone (code that does more than writing summaries).
    """
    if isinstance(exc, SummaryWriteError):
        forget_writer(logdir)
        return exc
    summary_op = isinstance(exc, tf.errors.OpError) and "Summary" in str(exc)
    if not (summary_op or (any_oserror and isinstance(exc, OSError))) or logdir is None:
        return None
    if isinstance(logdir, (str, os.PathLike)):
        where = os.path.abspath(os.fspath(logdir))
    else:  # a writer: ours (cached for a log directory) or the caller's
        keys = [k for k, cached in _WRITERS.items() if cached.writer is logdir]
        where = keys[0] if keys else "a tf.summary writer"
    forget_writer(logdir)
    return SummaryWriteError(
        f"Cannot write TensorBoard summaries to {where!r}: {_reason(exc)}. Check that the log "
        "directory is a writable directory with free space."
    )


def forget_writer(logdir_or_writer) -> None:
    """Drop the cached writer of a log directory (or this writer); the next write makes a new one."""
    for key, cached in list(_WRITERS.items()):
        same = cached.writer is logdir_or_writer or (
            isinstance(logdir_or_writer, (str, os.PathLike))
            and key == os.path.abspath(os.fspath(logdir_or_writer))
        )
        if same:
            del _WRITERS[key]
            with contextlib.suppress(Exception):
                cached.writer.close()


def _create(key: str) -> _Cached:
    if os.path.exists(key) and not os.path.isdir(key):
        raise SummaryWriteError(
            f"Cannot write TensorBoard summaries to {key!r}: it is a file, not a directory. "
            "Pass a log directory."
        )
    before = _events(key)
    try:
        writer = tf.summary.create_file_writer(key)
    except (tf.errors.OpError, OSError) as exc:
        raise write_error(exc, key) from exc
    new = sorted(_events(key) - before)
    event_file = os.path.join(key, new[-1]) if len(new) == 1 else None
    try:
        ident = _ident(key)
    except OSError as exc:  # deleted again in between
        raise write_error(exc, key) from exc
    return _Cached(writer, ident, event_file)


def get_writer(logdir_or_writer) -> tf.summary.SummaryWriter:
    """A `tf.summary` writer: the given one, or a cached one per log directory.

    A log directory's writer is cached for the process, and checked each
    time it is asked for: when the directory was deleted or replaced (a
    notebook's `!rm -rf logs`) or its event file removed, the old writer,
    which would keep writing into a deleted file, is dropped and a new one
    is created, which recreates the directory (a warning is logged). Errors
    (the path is a file, the directory cannot be created or written) raise
    `SummaryWriteError` (an `OSError`) naming the directory; the kerastrace
    callbacks count them in `.failures`.

    Args:
        logdir_or_writer: A log directory path or a `tf.summary.SummaryWriter`.

    Returns:
        The writer.

    Raises:
        TypeError: for anything else.
        SummaryWriteError: the log directory cannot be written.
    """
    if isinstance(logdir_or_writer, tf.summary.SummaryWriter):
        return logdir_or_writer
    if isinstance(logdir_or_writer, (str, os.PathLike)):
        key = os.path.abspath(os.fspath(logdir_or_writer))
        cached = _WRITERS.get(key)
        if cached is not None and _vanished(key, cached):
            logger.warning(
                "The TensorBoard log directory %r (or its event file) was deleted or "
                "replaced; writing to a new event file there.",
                key,
            )
            forget_writer(key)
            cached = None
        if cached is None:
            cached = _WRITERS[key] = _create(key)
        return cached.writer
    raise TypeError(
        "Received an invalid value for argument `logdir_or_writer`, expected a log "
        "directory path or a tf.summary.SummaryWriter. Received: "
        f"logdir_or_writer={type(logdir_or_writer).__name__}"
    )


def flush_writer(writer, logdir=None) -> None:
    """`writer.flush()`, with a write error raised as `SummaryWriteError` (writer forgotten)."""
    try:
        writer.flush()
    except (tf.errors.OpError, OSError) as exc:
        err = write_error(exc, logdir if logdir is not None else writer)
        if err is None:
            raise
        raise err from exc


@contextlib.contextmanager
def _writing(logdir_or_writer):
    writer = get_writer(logdir_or_writer)
    try:
        with writer.as_default():
            yield writer
        writer.flush()
    except (tf.errors.OpError, OSError) as exc:
        err = write_error(exc, logdir_or_writer)
        if err is None:
            raise
        raise err from exc


def figure_to_image(fig) -> np.ndarray:
    """Render a matplotlib figure to a `(1, H, W, 4)` uint8 array and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    pyplot().close(fig)
    return tf.image.decode_png(buf.getvalue(), channels=4)[None].numpy()


def _check_step(step) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(
            "Received an invalid value for argument `step`, expected a non-negative "
            f"integer. Received: step={step!r}"
        )
    return int(step)


def _clean(tag: str) -> str:
    return str(tag).replace(":", "_").replace(" ", "_")


_MARKDOWN = re.compile(r"([\\`*_\[\]#|~])")


def escape_token(token) -> str:
    r"""A token as literal text for TensorBoard's markdown text dashboard.

    Tokens come from user text: markdown characters are backslash-escaped
    (`**`, `|`, `#` stay literal) and HTML is escaped (`html.escape`), so a
    token such as `<script>` or `a|b` is shown as written and cannot break
    the table or inject markup.

    Example:

    >>> from kerastrace.tensorboard._writers import escape_token
    >>> escape_token("<b>"), escape_token("a|b"), escape_token("##ing")
    ('&lt;b&gt;', 'a\\|b', '\\#\\#ing')
    """
    return html.escape(_MARKDOWN.sub(r"\\\1", str(token)))


def _tokens_for(tokens, b, t):
    """Per-example token lists (or positions)."""
    if tokens is None:
        return [[str(i) for i in range(t)] for _ in range(b)]
    if len(tokens) and isinstance(tokens[0], str):
        return [list(tokens)] * b
    return [list(x) for x in tokens]


_CMAP_LUT: dict[str, np.ndarray] = {}


def _lut(cmap: str) -> np.ndarray:
    """A (256, 3) uint8 colormap table (matplotlib.colormaps; no pyplot import)."""
    if cmap not in _CMAP_LUT:
        import matplotlib

        colors = matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3]
        _CMAP_LUT[cmap] = (255 * colors).round().astype(np.uint8)
    return _CMAP_LUT[cmap]


def attention_grid_image(
    weights_by_layer: Mapping[str, np.ndarray],
    *,
    batch: int = 0,
    mask=None,
    cell: int = 96,
    cmap: str = "viridis",
) -> np.ndarray:
    """Render the layer x head grid straight to pixels, without matplotlib figures.

    Each head's `(T, T)` weights (masked positions left out) are scaled to
    `[0, max]`, colour-mapped and upscaled (nearest) to about `cell` pixels,
    with 2-pixel white separators. Much cheaper than a figure, for callbacks
    that log every epoch.

    Args:
        weights_by_layer: `{layer: (B, H, T, T)}`.
        batch: Example to draw.
        mask: Optional `(T,)` boolean array, True on real tokens.
        cell: Approximate cell size in pixels.
        cmap: Matplotlib colormap name.

    Returns:
        A `(1, height, width, 3)` uint8 array.
    """
    arrays = [np.asarray(a, dtype=np.float32)[batch] for a in weights_by_layer.values()]
    t = arrays[0].shape[-1]
    keep = np.arange(t) if mask is None else np.flatnonzero(np.asarray(mask, bool))
    n = max(len(keep), 1)
    scale = max(1, cell // n)
    size = n * scale
    heads = max(a.shape[0] for a in arrays)
    sep = 2
    out = np.full((len(arrays) * (size + sep) + sep, heads * (size + sep) + sep, 3), 255, np.uint8)
    lut = _lut(cmap)
    for li, a in enumerate(arrays):
        for h in range(a.shape[0]):
            w = a[h][np.ix_(keep, keep)]
            top = float(w.max()) if w.size else 0.0
            idx = np.zeros(w.shape, np.int64) if top <= 0 else (w / top * 255).astype(np.int64)
            img = lut[np.clip(idx, 0, 255)]
            img = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
            y0, x0 = sep + li * (size + sep), sep + h * (size + sep)
            out[y0 : y0 + size, x0 : x0 + size] = img
    return out[None]


def write_attention(
    logdir_or_writer,
    weights_by_layer: Mapping[str, np.ndarray],
    tokens: Sequence[str] | Sequence[Sequence[str]] | None = None,
    step: int = 0,
    *,
    batch: int = 0,
    mask=None,
    prefix: str = "attention",
    per_layer: bool = True,
    style: str = "figure",
) -> list[str]:
    """Write attention pictures of one example as TensorBoard images.

    Writes `"<prefix>/model_view"` (the layer x head grid) and, with
    `per_layer=True`, one `"<prefix>/<layer path>"` image per layer with all
    its heads. Masked positions are left out of the pictures.

    `style="figure"` draws matplotlib figures with token labels;
    `style="fast"` renders the grid directly to pixels (rows: layers, columns:
    heads, see `attention_grid_image`), about 100x cheaper, and writes the
    tokens as the text `"<prefix>/tokens"`; use it when logging every epoch.

    Args:
        logdir_or_writer: Log directory or a `tf.summary.SummaryWriter`.
        weights_by_layer: `{layer: (B, H, T, T)}`, e.g. from
            `kerastrace.attention.collect`.
        tokens: `T` token strings, or one list per example.
        step: Summary step (e.g. the epoch).
        batch: Example to draw.
        mask: Optional `(B, T)` or `(T,)` boolean array, True on real tokens.
        prefix: Tag prefix.
        per_layer: Also write one image per layer.
        style: `"figure"` or `"fast"`.

    Returns:
        The tags written.

    Raises:
        ValueError: for a bad `step`, `style` or shapes that do not fit.
        TypeError: for a bad `logdir_or_writer`.

    Example:

    >>> import tempfile, numpy as np
    >>> from kerastrace.tensorboard import write_attention
    >>> w = {"block/attention": np.full((1, 2, 3, 3), 1 / 3)}
    >>> write_attention(tempfile.mkdtemp(), w, ["a", "b", "c"], step=0)
    ['attention/model_view', 'attention/block/attention']
    """
    from kerastrace._utils import validation as v
    from kerastrace.visualization import plot_model_view

    step = _check_step(step)
    v.check_one_of("style", style, ("figure", "fast"))
    first = np.asarray(next(iter(weights_by_layer.values())))
    b, t = first.shape[0], first.shape[-1]
    toks = _tokens_for(tokens, b, t)[batch]
    m = None if mask is None else np.asarray(mask)
    if m is not None and m.ndim == 2:
        m = m[batch]
    tags = []
    if style == "fast":
        keep = range(t) if m is None else np.flatnonzero(np.asarray(m, bool))
        with _writing(logdir_or_writer):
            tags.append(f"{prefix}/model_view")
            tf.summary.image(
                tags[-1], attention_grid_image(weights_by_layer, batch=batch, mask=m), step=step
            )
            if per_layer:
                for name, w in weights_by_layer.items():
                    tags.append(_clean(f"{prefix}/{name}"))
                    img = attention_grid_image({name: w}, batch=batch, mask=m, cell=160)
                    tf.summary.image(tags[-1], img, step=step)
            tags.append(f"{prefix}/tokens")
            text = "rows: layers " + ", ".join(escape_token(n) for n in weights_by_layer)
            text += "; columns: heads; tokens: " + " ".join(escape_token(toks[i]) for i in keep)
            tf.summary.text(tags[-1], text, step=step)
        return tags
    with _writing(logdir_or_writer):
        fig, _ = plot_model_view(weights_by_layer, toks, batch=batch, mask=m)
        tags.append(f"{prefix}/model_view")
        tf.summary.image(tags[-1], figure_to_image(fig), step=step)
        if per_layer:
            for name, w in weights_by_layer.items():
                fig, _ = plot_model_view({name: w}, toks, batch=batch, mask=m, cell_size=2.4)
                tags.append(_clean(f"{prefix}/{name}"))
                tf.summary.image(tags[-1], figure_to_image(fig), step=step)
    return tags


def _markdown_tokens(scores, tokens, shown, ranked, top_k):
    """The sentence (top tokens in bold) and the top-`top_k` table, tokens escaped.

    `shown`: positions in the sentence; `ranked`: positions that may be ranked.
    """
    ranked = np.asarray(ranked, np.int64)
    order = ranked[np.argsort(-np.abs(scores[ranked]), kind="stable")[:top_k]]
    top = set(order.tolist())
    words = [
        f"**{escape_token(tokens[i])}**" if i in top else escape_token(tokens[i]) for i in shown
    ]
    lines = [" ".join(words), "", "| rank | token | score |", "|---|---|---|"]
    for r, i in enumerate(order, 1):
        lines.append(f"| {r} | {escape_token(tokens[i])} | {scores[i]:.4g} |")
    return "\n".join(lines)


def _bool_rows(name, value, b, t):
    if value is None:
        return np.zeros((b, t), bool)
    arr = np.asarray(value)
    try:
        return np.broadcast_to(arr.astype(bool), (b, t))
    except ValueError:
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected a boolean array of "
            f"shape ({b}, {t}) or ({t},) (the scores' shape). Received: {name}.shape={arr.shape}"
        ) from None


def write_token_attributions(
    logdir_or_writer,
    scores,
    tokens: Sequence[str] | Sequence[Sequence[str]],
    step: int = 0,
    *,
    name: str = "attributions",
    mask=None,
    special=None,
    top_k: int = 5,
    max_examples: int = 3,
) -> list[str]:
    """Write token scores as coloured-text images and a markdown text summary.

    Per example `i` (up to `max_examples`): an image `"<name>/example_<i>"`
    (red positive, blue negative) and a text `"<name>/example_<i>/text"` with
    the sentence (top tokens in bold) and a table of the `top_k` tokens by
    absolute score. Masked tokens are left out. `special` tokens (e.g.
    `[CLS]`, `[SEP]`) are shown but not ranked, and do not set the colour
    scale, so that they cannot push the words that matter out of the top
    `top_k` nor wash out their colours. Tokens are escaped for the markdown
    text dashboard (`escape_token`).

    Args:
        logdir_or_writer: Log directory or a `tf.summary.SummaryWriter`.
        scores: `(T,)` or `(B, T)` token scores.
        tokens: `T` token strings, or one list per example.
        step: Summary step.
        name: Tag prefix.
        mask: Optional `(B, T)` or `(T,)` boolean array, True on tokens to show.
        special: Optional `(B, T)` or `(T,)` boolean array, True on tokens to
            show but leave out of the ranking and the colour scale.
        top_k: Rows in the text table.
        max_examples: Examples written.

    Returns:
        The tags written.

    Raises:
        ValueError: for a bad `step` or shapes that do not fit.

    Example:

    >>> import tempfile
    >>> from kerastrace.tensorboard import write_token_attributions
    >>> write_token_attributions(tempfile.mkdtemp(), [0.9, -0.1], ["good", "film"])
    ['attributions/example_0', 'attributions/example_0/text']
    """
    from kerastrace.visualization import plot_token_attributions

    step = _check_step(step)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[None]
    if s.ndim != 2:
        raise ValueError(
            "Received an invalid value for argument `scores`, expected (T,) or (B, T) token "
            f"scores. Received: scores.shape={s.shape}"
        )
    b, t = s.shape
    toks = _tokens_for(tokens, b, t)
    m = np.ones((b, t), bool) if mask is None else _bool_rows("mask", mask, b, t)
    sp = _bool_rows("special", special, b, t)
    tags = []
    with _writing(logdir_or_writer):
        for i in range(min(b, max_examples)):
            shown = np.flatnonzero(m[i])
            ranked = np.flatnonzero(m[i] & ~sp[i])
            vmax = float(np.abs(s[i][ranked]).max()) if ranked.size else None
            fig, _ = plot_token_attributions(s[i], toks[i], mask=m[i], vmax=vmax or None)
            tags.append(f"{name}/example_{i}")
            tf.summary.image(tags[-1], figure_to_image(fig), step=step)
            tags.append(f"{name}/example_{i}/text")
            text = _markdown_tokens(s[i], toks[i], shown, ranked, top_k)
            tf.summary.text(tags[-1], text, step=step)
    return tags


def write_head_statistics(
    logdir_or_writer,
    stats,
    step: int = 0,
    *,
    prefix: str = "heads",
    image: bool = False,
) -> list[str]:
    """Write per-head statistics as scalars (and optionally heatmap images).

    Tags: `"<prefix>/<stat>/<layer>/head_<h>"` for `entropy`, `distance` and,
    when computed, `special_share`.

    Args:
        logdir_or_writer: Log directory or a `tf.summary.SummaryWriter`.
        stats: A `kerastrace.attention.HeadStatistics` (anything with a
            `scalars()` method returning `{tag: float}`, or such a dict).
        step: Summary step.
        prefix: Tag prefix.
        image: Also write `"<prefix>/<stat>_chart"` heatmaps.

    Returns:
        The tags written.

    Raises:
        ValueError: for a bad `step`.

    Example:

    >>> import tempfile, numpy as np
    >>> from kerastrace.attention import head_statistics
    >>> from kerastrace.tensorboard import write_head_statistics
    >>> stats = head_statistics({"l": np.full((1, 1, 2, 2), 0.5)})
    >>> write_head_statistics(tempfile.mkdtemp(), stats)
    ['heads/entropy/l/head_0', 'heads/distance/l/head_0']
    """
    step = _check_step(step)
    scalars = stats.scalars() if hasattr(stats, "scalars") else dict(stats)
    tags = []
    with _writing(logdir_or_writer):
        for tag, value in scalars.items():
            tags.append(_clean(f"{prefix}/{tag}"))
            tf.summary.scalar(tags[-1], float(value), step=step)
        if image and hasattr(stats, "entropy"):
            from kerastrace.visualization import plot_head_statistics

            for stat in ("entropy", "distance", "special_share"):
                if getattr(stats, stat, None) is None:
                    continue
                fig, _ = plot_head_statistics(stats, stat=stat)
                tags.append(f"{prefix}/{stat}_chart")
                tf.summary.image(tags[-1], figure_to_image(fig), step=step)
    return tags


def write_profile(
    logdir_or_writer, profile, step: int = 0, *, name: str = "profile", top_k: int = 15
) -> list[str]:
    """Write a per-layer profile as a markdown table and a chart image.

    Duck-typed: `profile` is any object with `.rows` (e.g.
    `kerastrace.profiling.ModelProfile`) or a list of rows; each row is a dict
    or object with `path`, `flops`, `time_ms` (and optionally `class_name`,
    `params`).

    Args:
        logdir_or_writer: Log directory or a `tf.summary.SummaryWriter`.
        profile: The profile (see above).
        step: Summary step.
        name: Tag prefix.
        top_k: Layers in the chart.

    Returns:
        The tags written (`"<name>/table"`, `"<name>/chart"`).

    Raises:
        ValueError: for an empty profile or a bad `step`.
        TypeError: for an object without rows.

    Example:

    >>> import tempfile
    >>> from kerastrace.tensorboard import write_profile
    >>> write_profile(tempfile.mkdtemp(), [{"path": "dense", "flops": 10, "time_ms": 0.2}])
    ['profile/table', 'profile/chart']
    """
    from kerastrace.visualization import plot_profile, profile_rows

    step = _check_step(step)
    rows = profile_rows(profile)
    lines = ["| layer | class | params | FLOPs | time (ms) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['path']} | {r['class_name']} | {int(r['params'])} | {int(r['flops'])} | "
            f"{r['time_ms']:.4g} |"
        )
    with _writing(logdir_or_writer):
        tf.summary.text(f"{name}/table", "\n".join(lines), step=step)
        fig, _ = plot_profile(profile, top_k=top_k)
        tf.summary.image(f"{name}/chart", figure_to_image(fig), step=step)
    return [f"{name}/table", f"{name}/chart"]
