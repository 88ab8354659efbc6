"""Self-contained HTML views: attributions over the user's words, generation traces.

One set of views, shared by the result objects (`_repr_html_` and
`to_html(path=None)` of `kerastrace.explain.TextExplanation` and
`kerastrace.generation.GenerationTrace`), the `kerastrace` command line, the
demo and the scripts. Every view is plain HTML with its styles inline:

- no network: no CDN, no web fonts, no external scripts or style sheets;
- every string of the user's (text, tokens, class names, method names) is
  HTML-escaped, and the views are marked for Jupyter's MathJax to leave
  them alone (`class="tex2jax_ignore mathjax_ignore"`), so `$x$` stays literal;
- scores use a diverging palette, blue (negative) - near white (0) - red
  (positive) (the ends of ColorBrewer's RdBu, as in the TensorBoard
  dashboard); probabilities use viridis. The text on every coloured chip is
  black or white, whichever contrasts more with the chip (WCAG relative
  luminance), which guarantees a contrast ratio of at least 4.5 on every
  colour of both palettes;
- a legend says what the colours mean, and the heading of an attribution
  gives the sentence, the prediction (class name and probability) and the
  method.

`kerastrace.tensorboard.dashboard_html(logdir)` puts the kerastrace
TensorBoard dashboard (its static frontend and a run's data) into one offline
HTML file, framed by these helpers.

Example:

>>> from kerastrace.visualization import attribution_html, contrast_ratio, diverging_color
>>> view = attribution_html([("good", (0, 4), 0.8), ("film", (5, 9), -0.1)],
...                         text="good film", method="occlusion",
...                         probabilities=[0.1, 0.9], class_names=["neg", "pos"])
>>> "pos (class 1), probability 0.900" in view
True
>>> bg, fg = diverging_color(1.0)
>>> bg, fg, contrast_ratio(bg, fg) >= 4.5
('#b2182b', '#ffffff', True)
"""

from __future__ import annotations

import html as _html
import json
import math
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np

from kerastrace.visualization._common import as_1d

# ------------------------------------------------------------------ palette

#: The diverging palette: negative end, zero, positive end (RGB 0-255).
NEGATIVE_RGB = (33, 102, 172)
NEUTRAL_RGB = (247, 247, 247)
POSITIVE_RGB = (178, 24, 43)
#: Viridis at 9 stops (the sequential palette of probabilities).
VIRIDIS = (
    (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
    (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
)  # fmt: skip
BLACK = "#000000"
WHITE = "#ffffff"
#: What the colours of an attribution mean.
ATTRIBUTION_LEGEND = (
    "red: supports the explained class (raises its score) · "
    "blue: speaks against it (lowers it) · white: no effect"
)
#: Default mark of a word the model read as the unknown token.
UNKNOWN_MARK = " (unknown)"
#: The note shown with the pictures when some words are unknown.
UNKNOWN_NOTE = (
    "(unknown): word not in the tokenizer's vocabulary; the model read [UNK] there, "
    "so its score is that of the unknown token."
)


def _rgb(color) -> tuple:
    """`(r, g, b)` ints 0-255 from `"#rrggbb"` or a 3-sequence of 0-255 numbers."""
    if isinstance(color, str):
        m = re.fullmatch(r"#?([0-9a-fA-F]{6})", color.strip())
        if not m:
            raise ValueError(
                "Received an invalid value for argument `color`, expected '#rrggbb' or "
                f"(r, g, b) in 0-255. Received: color={color!r}"
            )
        h = m.group(1)
        return tuple(int(h[i: i + 2], 16) for i in (0, 2, 4))
    try:
        r, g, b = (float(c) for c in color)
    except (TypeError, ValueError):
        raise ValueError(
            "Received an invalid value for argument `color`, expected '#rrggbb' or "
            f"(r, g, b) in 0-255. Received: color={color!r}"
        ) from None
    return (r, g, b)


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(round(min(255.0, max(0.0, c)))):02x}" for c in rgb)


def relative_luminance(color) -> float:
    """WCAG 2 relative luminance of a colour (`"#rrggbb"` or `(r, g, b)` in 0-255), in [0, 1].

    Example:

    >>> relative_luminance("#ffffff"), relative_luminance((0, 0, 0))
    (1.0, 0.0)
    """

    def lin(c):
        c = c / 255.0
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = _rgb(color)
    return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)


def contrast_ratio(a, b) -> float:
    """WCAG 2 contrast ratio of two colours, from 1 (same) to 21 (black on white).

    Example:

    >>> round(contrast_ratio("#000000", "#ffffff"), 1)
    21.0
    """
    la, lb = relative_luminance(a), relative_luminance(b)
    hi, lo = max(la, lb), min(la, lb)
    return (hi + 0.05) / (lo + 0.05)


def text_color(background) -> str:
    """`"#000000"` or `"#ffffff"`: the text colour that contrasts more with `background`.

    The better of the two always reaches a contrast ratio of at least 4.58
    (the worst case is a background of luminance 0.179).

    Example:

    >>> text_color("#f7f7f7"), text_color("#2166ac")
    ('#000000', '#ffffff')
    """
    return BLACK if contrast_ratio(background, BLACK) >= contrast_ratio(background, WHITE) \
        else WHITE


def _mix(a, b, t):
    return tuple(x + (y - x) * t for x, y in zip(a, b))


def diverging_color(t) -> tuple:
    """`(background, text)` hex colours for `t` in [-1, 1] (clipped; NaN counts as 0).

    Blue for negative, near white for 0, red for positive, linear in between;
    the text colour is `text_color(background)`.

    Example:

    >>> diverging_color(0.0), diverging_color(-1.0)
    (('#f7f7f7', '#000000'), ('#2166ac', '#ffffff'))
    """
    x = float(t)
    x = 0.0 if not math.isfinite(x) else max(-1.0, min(1.0, x))
    rgb = _mix(NEUTRAL_RGB, POSITIVE_RGB, x) if x >= 0 else _mix(NEUTRAL_RGB, NEGATIVE_RGB, -x)
    bg = _hex(rgb)
    return bg, text_color(bg)


def sequential_color(t) -> tuple:
    """`(background, text)` hex colours of viridis at `t` in [0, 1] (clipped; NaN counts as 0).

    Example:

    >>> sequential_color(0.0), sequential_color(1.0)
    (('#440154', '#ffffff'), ('#fde725', '#000000'))
    """
    x = float(t)
    x = 0.0 if not math.isfinite(x) else max(0.0, min(1.0, x))
    pos = x * (len(VIRIDIS) - 1)
    i = min(len(VIRIDIS) - 2, int(math.floor(pos)))
    bg = _hex(_mix(VIRIDIS[i], VIRIDIS[i + 1], pos - i))
    return bg, text_color(bg)


def _gradient(color_of, lo, hi, n=11) -> str:
    stops = [f"{color_of(lo + (hi - lo) * k / (n - 1))[0]} {100 * k / (n - 1):.0f}%"
             for k in range(n)]
    return "linear-gradient(to right, " + ", ".join(stops) + ")"


# ------------------------------------------------------------------ building blocks


def escape(text) -> str:
    """`text` for HTML: `&`, `<`, `>` and both quotes escaped."""
    return _html.escape(str(text), quote=True)


class HTMLView(str):
    """An HTML view: a `str` that Jupyter renders (`_repr_html_`) and that can be saved.

    Example:

    >>> view = HTMLView("<p>hi</p>")
    >>> view._repr_html_() == view
    True
    """

    def _repr_html_(self) -> str:
        return str(self)

    def save(self, path) -> str:
        """Write the view to `path` atomically (see `write_html`); returns the path."""
        return write_html(path, self)


class TokenAttributionsHTML(HTMLView):
    """A snippet of coloured tokens (a `str`) that notebooks render via `_repr_html_`."""


def write_html(path, html: str) -> str:
    """Write `html` to `path` (UTF-8) with `kerastrace.io.atomic_write`; returns the path.

    The parent directory is created when missing.

    Raises:
        TypeError: when `path` is not a string or path-like object.
    """
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            "Received an invalid value for argument `path`, expected a file path (str or "
            f"os.PathLike). Received: path={path!r} of type {type(path).__name__}"
        )
    from kerastrace.io import atomic_write

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    return atomic_write(path, str(html))


_CSS = """
.kt-view{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,
 sans-serif;color:#1b1b1b;background:#ffffff;line-height:1.45;margin:0 0 1.4em 0;
 max-width:64em}
.kt-view .kt-head{margin:0 0 .4em 0}
.kt-view .kt-title{font-size:1.15em;font-weight:600;margin:.2em 0 .15em 0}
.kt-view .kt-meta{margin:0;color:#333333;font-size:.92em}
.kt-view .kt-row{margin:.3em 0}
.kt-view .kt-method{display:inline-block;min-width:12em;font-weight:600;font-size:.9em;
 color:#333333}
.kt-view .kt-text{line-height:2.3;font-size:1.05em}
.kt-view .kt-w{padding:.12em .3em;border-radius:.3em;white-space:pre-wrap}
.kt-view .kt-special{background:#e6e6e6;color:#444444;font-style:italic}
.kt-view .kt-legend{display:flex;flex-wrap:wrap;align-items:center;gap:.45em;
 font-size:.85em;color:#333333;margin:.35em 0}
.kt-view .kt-bar{display:inline-block;width:9em;height:.9em;border:1px solid #bbbbbb;
 border-radius:.2em}
.kt-view .kt-note{font-size:.85em;color:#444444;margin:.3em 0}
.kt-view table.kt-table{border-collapse:collapse;font-size:.9em;margin:.4em 0}
.kt-view .kt-table th,.kt-view .kt-table td{padding:.15em .5em;text-align:left;
 border-bottom:1px solid #e5e5e5;vertical-align:top}
.kt-view .kt-gen{cursor:pointer}
.kt-view .kt-selected{outline:2px solid #000000;outline-offset:1px}
.kt-page{max-width:68em;margin:1.5em auto;padding:0 1em;font-family:system-ui,
 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1b1b1b}
.kt-page>h1{font-size:1.4em}
.kt-page>.kt-intro{color:#333333}
"""

_IGNORE = "tex2jax_ignore mathjax_ignore"


def _style() -> str:
    return f"<style>{_CSS}</style>"


def _chip(text, bg, fg, *, cls="kt-w", title=None, attrs=None, style="") -> str:
    extra = "".join(f' {k}="{escape(v)}"' for k, v in (attrs or {}).items() if v is not None)
    tip = "" if title is None else f' title="{escape(title)}"'
    return (f'<span class="{cls}"{extra}{tip} style="{style}background:{bg};color:{fg}">'
            f"{escape(text)}</span>")


def _signed(x) -> str:
    x = float(x)
    if not math.isfinite(x):
        return "n/a"
    return f"{x:+.3g}" if x != 0 else "0"


def legend_html(vmax: float = 1.0, caption: str = ATTRIBUTION_LEGEND, *, palette="diverging",
                low_label=None, high_label=None) -> str:
    """A colour legend: the palette from its low to its high end, labelled, and a caption.

    Args:
        vmax: For the diverging palette, the score at full colour (labels
            `-vmax` and `+vmax`).
        caption: What the colours mean.
        palette: `"diverging"` or `"sequential"` (0 to 1).
        low_label: Label of the low end (default from `vmax`).
        high_label: Label of the high end.

    Returns:
        An HTML fragment (`<div class="kt-legend">`), styled inline.

    Raises:
        ValueError: for an unknown `palette`.
    """
    if palette == "diverging":
        color_of, lo, hi = diverging_color, -1.0, 1.0
        low_label = _signed(-abs(vmax)) if low_label is None else low_label
        high_label = _signed(abs(vmax)) if high_label is None else high_label
    elif palette == "sequential":
        color_of, lo, hi = sequential_color, 0.0, 1.0
        low_label = "0" if low_label is None else low_label
        high_label = "1" if high_label is None else high_label
    else:
        raise ValueError(
            "Received an invalid value for argument `palette`, expected one of "
            f"('diverging', 'sequential'). Received: palette={palette!r}"
        )
    lo_bg, lo_fg = color_of(lo)
    hi_bg, hi_fg = color_of(hi)
    return (
        f'<div class="kt-legend" role="note">{_chip(low_label, lo_bg, lo_fg)}'
        f'<span class="kt-bar" style="background:{_gradient(color_of, lo, hi)}"></span>'
        f'{_chip(high_label, hi_bg, hi_fg)}<span class="kt-caption">{escape(caption)}</span>'
        "</div>"
    )


def html_page(sections, *, title: str = "kerastrace", intro: str | None = None,
              script: str | None = None) -> HTMLView:
    """One self-contained HTML document around view fragments.

    Args:
        sections: HTML fragments (e.g. from `attribution_html`), in order.
        title: Page title and top heading (escaped).
        intro: Optional paragraph under the heading (plain text, escaped).
        script: Optional inline JavaScript, put at the end of the body.

    Returns:
        An `HTMLView` starting with `<!DOCTYPE html>`.
    """
    if isinstance(sections, str):
        sections = [sections]
    intro_html = "" if not intro else f'<p class="kt-intro">{escape(intro)}</p>'
    style = _style()  # once, in the head: fragments carry their own copy for notebooks
    body = "\n".join(str(s)[len(style):] if str(s).startswith(style) else str(s)
                     for s in sections)
    tail = "" if not script else f"<script>{script}</script>"
    return HTMLView(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title>{_style()}</head>\n"
        f'<body><main class="kt-page {_IGNORE}"><h1>{escape(title)}</h1>{intro_html}\n'
        f"{body}\n</main>{tail}</body></html>\n"
    )


# ------------------------------------------------------------------ token snippet


def _vmax(scores, keep=None) -> float:
    s = np.asarray(scores, np.float64)
    if keep is not None:
        s = s[np.asarray(keep, bool)]
    s = s[np.isfinite(s)]
    return float(np.max(np.abs(s))) if s.size else 0.0


def _scaled(x, vmax) -> float:
    return float(x) / vmax if vmax > 0 and math.isfinite(float(x)) else 0.0


def token_attributions_html(
    scores, tokens: Sequence[str], *, mask=None, vmax: float | None = None
) -> TokenAttributionsHTML:
    """Token scores as a self-contained HTML snippet of coloured `<span>`s.

    Red for positive, blue for negative, near white for zero (the diverging
    palette, scaled by `vmax`); black or white text, whichever reads better
    on each colour. Each span's tooltip and `data-score` give the score. No
    scripts, no external styles. The returned string also has
    `_repr_html_`, so it displays as coloured text in Jupyter. For a view
    with a heading and a legend, see `attribution_html`.

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
    >>> "#b2182b" in html, "#2166ac" in html, "&lt;bad&gt;" in html
    (True, True, True)
    """
    s = as_1d("scores", scores)
    toks = [str(t) for t in tokens]
    if len(toks) != s.shape[0]:
        raise ValueError(
            f"Received an invalid value for argument `tokens`, expected {s.shape[0]} tokens "
            f"(one per position). Received: tokens of length {len(toks)}"
        )
    if mask is None:
        keep = np.arange(s.shape[0])
    else:
        m = np.asarray(mask).astype(bool)
        if m.ndim == 2 and m.shape[0] == 1:
            m = m[0]
        if m.shape != s.shape:
            raise ValueError(
                "Received an invalid value for argument `mask`, expected a boolean array of "
                f"shape {s.shape}, True on real tokens. Received: mask.shape={m.shape}"
            )
        keep = np.flatnonzero(m)
    top = _vmax(s[keep]) if vmax is None else float(vmax)
    spans = []
    for i in keep:
        bg, fg = diverging_color(_scaled(s[i], top))
        spans.append(_chip(toks[i], bg, fg, title=f"{s[i]:.4g}",
                           attrs={"data-score": f"{s[i]:.6g}"},
                           style="padding:1px 3px;margin:1px;border-radius:3px;"))
    return TokenAttributionsHTML(
        f'<div class="kerastrace-tokens {_IGNORE}" style="line-height:1.9;">'
        + " ".join(spans) + "</div>"
    )


# ------------------------------------------------------------------ attributions


def _unit(u):
    """`(text, (start, end) or None, score or None)` from a word/token entry."""
    if isinstance(u, str):
        return u, None, None
    word = getattr(u, "word", None)
    if word is not None:
        return str(word), tuple(u.span), float(u.score)
    items = tuple(u)
    if len(items) in (2, 3) and isinstance(items[1], (tuple, list)) and len(items[1]) == 2:
        score = float(items[2]) if len(items) == 3 else None
        return str(items[0]), (int(items[1][0]), int(items[1][1])), score
    raise ValueError(
        "Received an invalid value for argument `units`, expected token strings, "
        "`WordScore`s or `(word, (start, end)[, score])` tuples. Received: "
        f"{str(u)[:80]!r}"
    )


def _class_name(c, class_names) -> str:
    if c is None:
        return "n/a"
    c = int(c)
    if class_names is not None and 0 <= c < len(class_names):
        return f"{class_names[c]} (class {c})"
    return f"class {c}"


_DELTA_NAMES = {
    "integrated_gradients": "convergence delta",
    "shapley": "efficiency residual",
    "kernel_shap": "efficiency residual",
}


def attribution_html(
    units,
    scores=None,
    *,
    text: str | None = None,
    method: str | None = None,
    probabilities=None,
    predicted: int | None = None,
    probability: float | None = None,
    target: int | None = None,
    label: int | None = None,
    class_names=None,
    delta=None,
    unknown=None,
    special=None,
    title: str | None = None,
    note: str | None = None,
    unknown_mark: str = UNKNOWN_MARK,
) -> HTMLView:
    """One attributed text: heading (sentence, prediction, method), coloured words, legend.

    Each word (or token) is one `<span class="kt-w">` coloured by its score
    with the diverging palette (scaled per method by the largest |score|),
    with its score in `data-score` and in the tooltip. With `text` and words
    that carry character spans into it, the text between the words
    (spaces, punctuation not scored) is kept as it is, so the line reads as
    the user wrote it.

    Args:
        units: The scored units, in order: `kerastrace.text.WordScore`s,
            `(word, (start, end)[, score])` tuples, or token strings.
        scores: The scores when `units` carry none: a sequence (one per
            unit) for one method, or `{method: sequence}` for several (one
            row each). Default: the units' own scores.
        text: The user's text (shown in the heading; gives the spacing).
        method: Name of the method when `scores` is not a dict.
        probabilities: Class probabilities; `predicted` and `probability`
            default to its argmax and maximum.
        predicted: The predicted class.
        probability: Its probability.
        target: The explained class (shown when it is not the predicted one).
        label: The true class, when known.
        class_names: Names of the classes (`class_names[c]`).
        delta: Convergence delta / efficiency residual, per method (dict) or
            one number.
        unknown: One bool per unit: the model read the unknown token there;
            such units show `unknown_mark` and a note.
        special: One bool per unit: special tokens (`[CLS]`, padding), drawn
            grey and left out of the colour scale.
        title: The heading (default: `text`, else the units joined).
        note: A note under the view (default: an explanation of
            `unknown_mark` when some unit is unknown).
        unknown_mark: Appended to unknown units.

    Returns:
        An `HTMLView` fragment (a `<section>` with its styles).

    Raises:
        ValueError: when the scores do not fit the units.

    Example:

    >>> from kerastrace.visualization import attribution_html
    >>> view = attribution_html(["[CLS]", "great", "[SEP]"], {"occlusion": [0.0, 2.0, 0.0]},
    ...                         special=[True, False, True], probabilities=[0.3, 0.7])
    >>> 'data-score="2"' in view, "class 1, probability 0.700" in view
    (True, True)
    """
    parsed = [_unit(u) for u in units]
    n = len(parsed)
    if scores is None:
        if any(p[2] is None for p in parsed):
            raise ValueError(
                "Received an invalid value for argument `scores`: the units carry no scores, "
                "so `scores` is required. Received: scores=None"
            )
        rows = {method or "scores": [p[2] for p in parsed]}
    elif isinstance(scores, Mapping):
        rows = {str(k): list(np.asarray(val, np.float64).ravel()) for k, val in scores.items()}
    else:
        rows = {method or "scores": list(np.asarray(scores, np.float64).ravel())}
    for name, row in rows.items():
        if len(row) != n:
            raise ValueError(
                f"Received an invalid value for argument `scores`, expected {n} scores (one "
                f"per unit) for method {name!r}. Received: {len(row)} scores"
            )
    flags_unknown = [bool(x) for x in unknown] if unknown is not None else [False] * n
    flags_special = [bool(x) for x in special] if special is not None else [False] * n
    for arg, flags in (("unknown", flags_unknown), ("special", flags_special)):
        if len(flags) != n:
            raise ValueError(
                f"Received an invalid value for argument `{arg}`, expected {n} flags (one per "
                f"unit). Received: {len(flags)} flags"
            )
    if probabilities is not None:
        probs = np.asarray(probabilities, np.float64).ravel()
        if probs.size:
            if predicted is None:
                predicted = int(np.argmax(probs)) if probs.size > 1 else int(probs[0] >= 0.5)
            if probability is None and probs.size > 1 and 0 <= predicted < probs.size:
                probability = float(probs[predicted])
            elif probability is None and probs.size == 1:
                probability = float(probs[0]) if predicted == 1 else 1.0 - float(probs[0])
    methods = list(rows)

    # heading
    heading = title if title is not None else (
        text if text is not None else " ".join(p[0] for p in parsed))
    meta = []
    if predicted is not None:
        prob = "" if probability is None else f", probability {float(probability):.3f}"
        meta.append(f'<span class="kt-prediction"><strong>Prediction:</strong> '
                    f"{escape(_class_name(predicted, class_names))}{escape(prob)}</span>")
    if target is not None and (predicted is None or int(target) != int(predicted)):
        meta.append(f'<span class="kt-target"><strong>Explained:</strong> '
                    f"{escape(_class_name(target, class_names))}</span>")
    if label is not None:
        meta.append(f'<span class="kt-label"><strong>Label:</strong> '
                    f"{escape(_class_name(label, class_names))}</span>")
    meta.append(f'<span class="kt-methods"><strong>Method{"s" if len(methods) > 1 else ""}:'
                f"</strong> {escape(', '.join(methods))}</span>")
    deltas = delta if isinstance(delta, Mapping) else (
        {} if delta is None else {methods[0]: delta})
    for name, d in deltas.items():
        if d is not None and name in rows:
            meta.append(f'<span class="kt-delta">{escape(_DELTA_NAMES.get(name, "delta"))}'
                        f"{'' if len(methods) == 1 else ' (' + escape(name) + ')'} "
                        f"{float(d):+.2e}</span>")
    head = (f'<header class="kt-head"><h3 class="kt-title">{escape(heading)}</h3>'
            f'<p class="kt-meta">{" · ".join(meta)}</p></header>')

    # the text, one row per method
    spans_ok = text is not None and all(p[1] is not None for p in parsed)
    if spans_ok:
        last = 0
        for _, (s, e), _ in parsed:
            if not 0 <= s <= e <= len(text) or s < last:
                spans_ok = False
                break
            last = e
    body = []
    for name, row in rows.items():
        keep = [not sp for sp in flags_special]
        top = _vmax(row, keep)
        parts, cursor = [], 0
        for i, (word, span, _) in enumerate(parsed):
            shown = word + (unknown_mark if flags_unknown[i] else "")
            x = row[i]
            if spans_ok:
                s, e = span
                if s > cursor:
                    parts.append(escape(text[cursor:s]))
                cursor = e
            elif i:
                parts.append(" ")
            attrs = {"data-word": word, "data-index": str(i),
                     "data-score": f"{x:.6g}" if math.isfinite(x) else ""}
            if flags_special[i]:
                parts.append(f'<span class="kt-w kt-special" data-word="{escape(word)}" '
                             f'data-index="{i}" title="{escape(word)}: special token, not '
                             f'scored">{escape(shown)}</span>')
                continue
            bg, fg = diverging_color(_scaled(x, top))
            tip = f"{word}: {_signed(x)}" + (
                " (read by the model as the unknown token)" if flags_unknown[i] else "")
            parts.append(_chip(shown, bg, fg, title=tip, attrs=attrs,
                               cls="kt-w kt-unknown" if flags_unknown[i] else "kt-w"))
        if spans_ok and cursor < len(text):
            parts.append(escape(text[cursor:]))
        label_html = "" if len(rows) == 1 else f'<div class="kt-method">{escape(name)}</div>'
        body.append(
            f'<div class="kt-row" data-method="{escape(name)}" data-vmax="{top:.6g}">'
            f'{label_html}<div class="kt-text kerastrace-tokens">{"".join(parts)}</div></div>'
        )
    vmax_all = max((_vmax(r, [not sp for sp in flags_special]) for r in rows.values()),
                   default=0.0)
    scale = ("full colour at the largest |score| of each method" if len(rows) > 1
             else "full colour at the largest |score|")
    legend = legend_html(vmax_all if len(rows) == 1 else 1.0, f"{ATTRIBUTION_LEGEND} ({scale})",
                         low_label=None if len(rows) == 1 else "−max",
                         high_label=None if len(rows) == 1 else "+max")
    if note is None and any(flags_unknown):
        note = (f"{unknown_mark.strip()}: word not in the tokenizer's vocabulary; the model "
                "read the unknown token there, so its score is that of the unknown token.")
    note_html = "" if not note else f'<p class="kt-note">{escape(note)}</p>'
    return HTMLView(
        f'{_style()}<section class="kt-view kt-attribution {_IGNORE}">{head}'
        f'{"".join(body)}{legend}{note_html}</section>'
    )


def explanation_html(explanation, *, class_names=None, title: str | None = None) -> HTMLView:
    """The view of one `kerastrace.explain.TextExplanation`: the user's words, coloured.

    Words (not word pieces): each word of the text gets the sum of its
    pieces' scores; words the model read as `[UNK]` are marked. The heading
    gives the sentence, the prediction (class and probability), the
    explained class when it differs, and the method.

    Args:
        explanation: A `TextExplanation` (from `kerastrace.explain.explain_text`).
        class_names: Names of the classes.
        title: The heading (default: the text).

    Returns:
        An `HTMLView` fragment.
    """
    mark, unknown_note = UNKNOWN_MARK, UNKNOWN_NOTE

    e = explanation
    words = list(e.words)
    unknown = list(e.unknown_words) if e.unknown_words else None
    if not words:  # no word survived (all truncated): show the real tokens
        keep = np.asarray(e.mask, bool)
        toks = [t for t, k in zip(e.tokens, keep) if k]
        scores = np.asarray(e.token_scores, np.float64)[keep]
        special = None if e.special is None else np.asarray(e.special, bool)[keep]
        return attribution_html(toks, scores, text=None, method=e.method,
                                probabilities=e.probabilities, target=e.target,
                                class_names=class_names, delta=e.delta, special=special,
                                title=title if title is not None else e.text)
    return attribution_html(
        words, text=e.text, method=e.method, probabilities=e.probabilities, target=e.target,
        class_names=class_names, delta=e.delta, unknown=unknown, title=title,
        note=unknown_note if unknown and any(unknown) else None, unknown_mark=mark,
    )


def explanations_page(explanations, *, title: str = "kerastrace: word attributions",
                      class_names=None, intro: str | None = None) -> HTMLView:
    """A whole page of `TextExplanation` views (one per text), ready to save.

    Example:

    >>> import numpy as np
    >>> from kerastrace.explain import TextExplanation
    >>> from kerastrace.visualization import explanations_page
    >>> e = TextExplanation("ok", "occlusion", 0, np.array([0.8, 0.2]), ["ok"],
    ...                     np.array([0.5]), np.array([True]), [("ok", (0, 2), 0.5)])
    >>> page = explanations_page([e])
    >>> page.startswith("<!DOCTYPE html>"), "probability 0.800" in page
    (True, True)
    """
    if not isinstance(explanations, (list, tuple)):
        explanations = [explanations]
    return html_page([explanation_html(e, class_names=class_names) for e in explanations],
                     title=title, intro=intro)


def _pick(values, i):
    return None if values is None else values[i]


def attributions_page(
    words=None,
    *,
    tokens=None,
    scores=None,
    mask=None,
    special=None,
    texts=None,
    probabilities=None,
    targets=None,
    labels=None,
    class_names=None,
    deltas=None,
    title: str = "kerastrace: attributions",
    intro: str | None = None,
) -> HTMLView:
    """A page of attributed texts, one `attribution_html` view per example.

    Give either `words`, the scores per word of the user's texts (what
    `kerastrace.text.aggregate_to_words` returns, per method), or `tokens`
    and token `scores` (for inputs without text, e.g. token ids).

    Args:
        words: `{method: [per example: list of WordScore]}`; the methods
            share the words of each example (one row per method).
        tokens: Per example, the token strings (with `scores`).
        scores: `{method: (B, T) scores}` for `tokens`.
        mask: `(B, T)` bool, True on the tokens to show (with `tokens`).
        special: `(B, T)` bool, special tokens drawn grey (with `tokens`).
        texts: Per example, the user's text.
        probabilities: `(B, C)` class probabilities.
        targets: `(B,)` explained classes.
        labels: `(B,)` true classes.
        class_names: Names of the classes.
        deltas: `{method: (B,) convergence deltas}`.
        title: Page title.
        intro: A paragraph under the title.

    Returns:
        The page, an `HTMLView`.

    Raises:
        ValueError: when neither or both of `words` and `tokens` are given,
            or the per-method lists do not have one entry per example.

    Example:

    >>> from kerastrace.visualization import attributions_page
    >>> page = attributions_page({"occlusion": [[("hi", (0, 2), 1.0)]]}, texts=["hi"],
    ...                         probabilities=[[0.25, 0.75]], class_names=["no", "yes"])
    >>> "yes (class 1), probability 0.750" in page
    True
    """
    if (words is None) == (tokens is None):
        raise ValueError(
            "Received an invalid value for argument `words`: give either `words` "
            "({method: per-example word scores}) or `tokens` with `scores`. "
            f"Received: words={'None' if words is None else 'given'}, "
            f"tokens={'None' if tokens is None else 'given'}"
        )
    if words is not None:
        if not isinstance(words, Mapping) or not words:
            raise ValueError(
                "Received an invalid value for argument `words`, expected a non-empty dict "
                f"{{method: per-example word scores}}. Received: words={type(words).__name__}"
            )
        methods = list(words)
        n = len(words[methods[0]])
    else:
        if not isinstance(scores, Mapping) or not scores:
            raise ValueError(
                "Received an invalid value for argument `scores`, expected a non-empty dict "
                f"{{method: (B, T) scores}} with `tokens`. Received: scores={scores!r:.80}"
            )
        methods = list(scores)
        n = len(tokens)
    table = words if words is not None else scores
    for m in methods:
        if len(table[m]) != n:
            raise ValueError(
                f"Received an invalid value for argument `{'words' if words is not None else 'scores'}`"
                f": method {m!r} has {len(table[m])} examples, expected {n}."
            )
    sections = []
    for i in range(n):
        common = dict(
            text=_pick(texts, i), probabilities=_pick(probabilities, i),
            target=_pick(targets, i), label=_pick(labels, i), class_names=class_names,
            delta=None if deltas is None else {m: _pick(d, i) for m, d in deltas.items()},
        )
        if words is not None:
            units = [_unit(w) for w in words[methods[0]][i]]
            rows = {m: [_unit(w)[2] for w in words[m][i]] for m in methods}
            sections.append(attribution_html([(u[0], u[1]) if u[1] is not None else u[0]
                                              for u in units], rows, **common))
        else:
            toks = [str(t) for t in tokens[i]]
            keep = np.ones(len(toks), bool) if mask is None else np.asarray(mask[i], bool)
            sp = None if special is None else np.asarray(special[i], bool)[keep].tolist()
            rows = {m: np.asarray(scores[m][i], np.float64)[keep] for m in methods}
            sections.append(attribution_html([t for t, k in zip(toks, keep) if k], rows,
                                             special=sp, **common))
    return html_page(sections, title=title, intro=intro)


# ------------------------------------------------------------------ generation

_GENERATION_SCRIPT = """
(function () {
  document.querySelectorAll('.kt-generation[data-colors]').forEach(function (sec) {
    var colors = JSON.parse(sec.getAttribute('data-colors'));
    var toks = sec.querySelectorAll('.kt-text .kt-tok');
    var focus = sec.querySelector('.kt-focus');
    function paint(el, bg, fg) { el.style.background = bg || ''; el.style.color = fg || ''; }
    function show(k) {
      toks.forEach(function (el) {
        paint(el, el.getAttribute('data-bg'), el.getAttribute('data-fg'));
        el.classList.remove('kt-selected');
        el.removeAttribute('data-score');
      });
      (colors[k] || []).forEach(function (c, j) {
        paint(toks[j], c[0], c[1]);
        toks[j].setAttribute('data-score', c[2]);
      });
      var sel = sec.querySelector('.kt-text .kt-gen[data-step="' + k + '"]');
      if (sel) sel.classList.add('kt-selected');
      if (focus && sel) focus.textContent = 'Sources of step ' + k + ': \\u201c' +
        sel.textContent + '\\u201d (red: supported it, blue: spoke against it)';
    }
    sec.querySelectorAll('.kt-text .kt-gen').forEach(function (el) {
      var k = Number(el.getAttribute('data-step'));
      el.addEventListener('mouseenter', function () { show(k); });
      el.addEventListener('click', function () { show(k); });
      el.addEventListener('keydown', function (ev) { if (ev.key === 'Enter') show(k); });
    });
  });
})();
"""


def _json_attr(value) -> str:
    return escape(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def generation_html(trace, example: int | None = None, *, top_k: int = 3) -> HTMLView:
    """A `kerastrace.generation.GenerationTrace` as HTML: tokens coloured by step probability.

    Generated tokens are shaded by their probability (viridis) and carry,
    in their tooltip, probability, rank, entropy and their strongest
    sources; a table lists every step with its `top_k` sources as coloured
    chips. That much needs no JavaScript (notebooks); the page of
    `generation_page` adds a tiny inline script: hover or click a generated
    token to colour every earlier token by its source score.

    Args:
        trace: A `GenerationTrace`.
        example: One example's index, or None for all.
        top_k: Sources listed per generated token.

    Returns:
        An `HTMLView` fragment (one `<section>` per example).
    """
    from kerastrace._utils import validation as v

    top_k = v.check_positive_int("top_k", top_k)
    data = trace.to_dict()
    examples = data["examples"]
    if example is not None:
        if isinstance(example, bool) or not isinstance(example, (int, np.integer)) or \
                not 0 <= int(example) < len(examples):
            raise v.invalid("example", f"an example index in [0, {len(examples)})", example)
        picked = [int(example)]
    else:
        picked = list(range(len(examples)))
    sections = []
    for i in picked:
        ex = examples[i]
        toks = [str(t) for t in ex["tokens"]]
        p_len = len(ex["prompt_ids"])
        steps = ex["steps"]
        prob = [float(x) for x in np.asarray(steps.get("probability", []), np.float64).ravel()]
        rank = steps.get("rank")
        entropy = steps.get("entropy")
        colors, top_lists = [], []
        for k, row in enumerate(ex["sources"]):
            row = np.asarray(row, np.float64)
            upto = min(p_len + k, row.size)
            vm = _vmax(row[:upto])
            colors.append([[*diverging_color(_scaled(row[j], vm)), f"{row[j]:.5g}"]
                           for j in range(upto)])
            order = [int(j) for j in np.argsort(-np.abs(row[:upto]), kind="stable")[:top_k]
                     if row[j] != 0]
            top_lists.append([(j, toks[j], float(row[j]), vm) for j in order])

        def num(values, k, fmt):
            try:
                return format(float(np.asarray(values).ravel()[k]), fmt)
            except (IndexError, TypeError, ValueError):
                return "n/a"

        spans = []
        for j, t in enumerate(toks):
            if j < p_len:
                spans.append(f'<span class="kt-w kt-tok kt-prompt" data-pos="{j}" data-bg="" '
                             f'data-fg="">{escape(t)}</span>')
                continue
            k = j - p_len
            p = prob[k] if k < len(prob) else float("nan")
            bg, fg = sequential_color(p)
            srcs = ", ".join(f"{tok} ({_signed(x)})" for _, tok, x, _ in
                             (top_lists[k] if k < len(top_lists) else []))
            tip = (f"p={num(prob, k, '.3f')}, rank {num(rank, k, '.0f')}, entropy "
                   f"{num(entropy, k, '.2f')} nats; strongest sources: {srcs or 'none'}")
            spans.append(_chip(t, bg, fg, cls="kt-w kt-tok kt-gen", title=tip, attrs={
                "data-pos": str(j), "data-step": str(k), "data-bg": bg, "data-fg": fg,
                "data-probability": num(prob, k, ".6g"), "tabindex": "0", "role": "button"}))
        rows = []
        for k in range(len(toks) - p_len):
            t = toks[p_len + k]
            bg, fg = sequential_color(prob[k] if k < len(prob) else float("nan"))
            chips = " ".join(
                _chip(tok, *diverging_color(_scaled(x, vm)), title=f"position {j}: {_signed(x)}",
                      attrs={"data-pos": str(j), "data-score": f"{x:.6g}"})
                for j, tok, x, vm in (top_lists[k] if k < len(top_lists) else []))
            rows.append(f'<tr data-step="{k}"><td>{k}</td><td>{_chip(t, bg, fg)}</td>'
                        f"<td>{num(prob, k, '.3f')}</td><td>{num(rank, k, '.0f')}</td>"
                        f"<td>{chips or 'none'}</td></tr>")
        heading = ex["prompt"] if ex.get("prompt") else f"example {i}"
        meta = (f"<strong>Method:</strong> {escape(data['method'])} · <strong>Attributed:"
                f"</strong> {escape(data['score'])} · {escape(data['sampling'])}")
        sections.append(
            f'<section class="kt-view kt-generation {_IGNORE}" data-example="{i}" '
            f'data-colors="{_json_attr(colors)}">'
            f'<header class="kt-head"><h3 class="kt-title">{escape(heading)}</h3>'
            f'<p class="kt-meta">{meta}</p></header>'
            f'<div class="kt-text kerastrace-tokens">{" ".join(spans)}</div>'
            + legend_html(caption="generated tokens: probability of the token (dark: low, "
                          "bright: high)", palette="sequential")
            + legend_html(caption="sources: red supported the generated token, blue spoke "
                          "against it (full colour at the largest |score| of the step)",
                          low_label="−max", high_label="+max")
            + '<p class="kt-note kt-focus">Hover or click a generated token to colour the '
            "tokens it came from (in the saved page; the table lists the strongest sources)."
            "</p>"
            '<table class="kt-table kt-sources"><thead><tr><th>step</th><th>token</th>'
            f"<th>p</th><th>rank</th><th>strongest sources</th></tr></thead><tbody>"
            f"{''.join(rows)}</tbody></table></section>"
        )
    return HTMLView(_style() + "".join(sections))


def generation_page(trace, example: int | None = None, *,
                    title: str = "kerastrace: where each generated token came from"
                    ) -> HTMLView:
    """`generation_html` as one page, with the inline script that colours the sources.

    Returns:
        The page, an `HTMLView` (what `GenerationTrace.to_html()` returns).
    """
    return html_page([generation_html(trace, example)], title=title, script=_GENERATION_SCRIPT)
