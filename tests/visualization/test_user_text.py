"""Tokens, feature and layer names are drawn literally: no mathtext, no HTML injection."""

import html
import io
import re
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kerastrace import visualization as viz  # noqa: E402

# "$\frac$" is a mathtext error when drawn unescaped, "$x^2$" would be drawn as x squared
TOKENS = ["$5", "<script>", "a_b^c", "$x^2$", r"$\frac$", "&amp;"]
N = len(TOKENS)


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _svg_texts(fig) -> list[str]:
    """Every string the figure draws, as the SVG holds it (text kept as text)."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg")
    found = re.findall(r"<text[^>]*>(.*?)</text>", buf.getvalue(), flags=re.S)
    return [html.unescape(re.sub(r"<[^>]+>", "", t)) for t in found]


def _assert_literal(fig, strings=TOKENS):
    drawn = _svg_texts(fig)
    for s in strings:
        assert s in drawn, (s, drawn)


def test_attention_head_and_rollout_matrix():
    w = np.full((N, N), 1.0 / N)
    fig, _ = viz.plot_attention_head(w, TOKENS)
    _assert_literal(fig)
    fig, _ = viz.plot_rollout(w, TOKENS)
    _assert_literal(fig)


def test_rollout_bars():
    fig, _ = viz.plot_rollout(np.linspace(0, 1, N), TOKENS)
    _assert_literal(fig)


def test_model_view_tokens_and_layer_names():
    weights = {"$layer$": np.full((1, 2, N, N), 1.0 / N), "<b>": np.full((1, 2, N, N), 1.0 / N)}
    fig, _ = viz.plot_model_view(weights, TOKENS)
    _assert_literal(fig, [*TOKENS, "$layer$", "<b>"])


def test_head_statistics_layer_names():
    stats = SimpleNamespace(layers=["$a$", "<b>"], entropy=np.array([[0.1, 0.2], [0.3, 0.4]]))
    fig, _ = viz.plot_head_statistics(stats)
    _assert_literal(fig, ["$a$", "<b>"])


def test_token_attributions_text():
    fig, ax = viz.plot_token_attributions(np.linspace(-1, 1, N), TOKENS)
    _assert_literal(fig)
    assert len(ax.texts) == N


def test_feature_attributions_names():
    fig, _ = viz.plot_feature_attributions(np.arange(1, N + 1.0), TOKENS)
    _assert_literal(fig)


def test_profile_paths():
    rows = [{"path": t, "flops": i + 1.0, "time_ms": 0.1} for i, t in enumerate(TOKENS)]
    fig, _ = viz.plot_profile(rows)
    _assert_literal(fig)


def test_token_html_escapes_every_token():
    out = viz.token_attributions_html(np.linspace(-1, 1, N), TOKENS)
    for t in TOKENS:
        assert html.escape(t, quote=True) in out
    assert "<script>" not in out and "&amp;amp;" in out
    # Jupyter's MathJax leaves the snippet alone, so "$x^2$" is not typeset either
    assert "tex2jax_ignore" in out and "mathjax_ignore" in out
