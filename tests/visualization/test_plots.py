import io
import subprocess
import sys
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kerastrace import visualization as viz  # noqa: E402
from kerastrace.attention import head_statistics  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _png(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    buf.seek(0)
    return mpimg.imread(buf)[..., :3]


def _not_blank(img):
    assert img.std() > 0.02, "image is blank"


def _pixel_at_artist(fig, artist):
    """Mean RGB over the central part of an artist's box (image rows top-down)."""
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3] / 255.0
    box = artist.get_window_extent(fig.canvas.get_renderer())
    h = img.shape[0]
    x0, x1 = int(box.x0) + 2, int(box.x1) - 2
    y0, y1 = int(h - box.y1) + 2, int(h - box.y0) - 2
    return np.median(img[y0 : y1 + 1, x0 : x1 + 1].reshape(-1, 3), axis=0)


def test_import_does_not_import_pyplot():
    # Only kerastrace.visualization: keras 3.15 itself imports matplotlib.pyplot
    # (keras/src/visualization) when matplotlib is installed.
    code = "import sys, kerastrace.visualization; print('matplotlib.pyplot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_attention_head_heatmap_size_labels_and_hot_cell():
    w = np.zeros((1, 2, 3, 3))
    w[0, 1] = np.eye(3)[[2, 2, 2]]  # all queries attend to token 2
    fig, ax = viz.plot_attention_head(w, ["a", "b", "c"], head=1, colorbar=False)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    fig.set_size_inches(4, 3)
    img = _png(fig)
    assert img.shape == (int(3 * fig.dpi), int(4 * fig.dpi), 3)
    _not_blank(img)
    data = ax.images[0].get_array()
    np.testing.assert_array_equal(np.asarray(data)[:, 2], 1.0)
    # the hot column is bright (viridis yellow), the others dark purple
    bright = _pixel_at_artist_cell(fig, ax, 0, 2)
    dark = _pixel_at_artist_cell(fig, ax, 0, 0)
    assert bright.sum() > dark.sum() + 0.8


def _pixel_at_artist_cell(fig, ax, row, col):
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3] / 255.0
    x, y = ax.transData.transform((col, row))
    return img[int(img.shape[0] - y), int(x)]


def test_attention_head_mask_drops_positions_and_uses_given_ax():
    fig0, ax0 = plt.subplots()
    fig, ax = viz.plot_attention_head(
        np.full((4, 4), 0.25), list("abcd"), ax0, mask=np.array([1, 1, 0, 1], bool)
    )
    assert fig is fig0 and ax is ax0
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "d"]
    assert np.asarray(ax.images[0].get_array()).shape == (3, 3)
    with pytest.raises(ValueError, match="tokens"):
        viz.plot_attention_head(np.eye(3), ["a"])


def test_model_view_grid():
    rng = np.random.default_rng(0)
    w = {f"l{i}": rng.random((1, 3, 5, 5)) for i in range(2)}
    fig, axes = viz.plot_model_view(w, list("abcde"))
    assert axes.shape == (2, 3)
    assert axes[1, 0].get_ylabel() == "l1"
    _not_blank(_png(fig))
    fig2, axes2 = viz.plot_model_view(w, list("abcde"), fig=fig, mask=[1, 1, 1, 0, 0])
    assert fig2 is fig and np.asarray(axes2[0, 0].images[0].get_array()).shape == (3, 3)


def test_rollout_bars_and_matrix():
    fig, ax = viz.plot_rollout(
        np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]), ["x", "y", "z"], query=0
    )
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, [0.7, 0.2, 0.1])
    fig, ax = viz.plot_rollout(np.ones((1, 3, 3)) / 3, ["x", "y", "z"])
    assert len(ax.images) == 1
    fig, ax = viz.plot_rollout([0.5, 0.3, 0.2], ["a", "b", "[PAD]"], mask=[1, 1, 0])
    assert len(ax.patches) == 2
    _not_blank(_png(fig))


def test_head_statistics_chart():
    stats = head_statistics(
        np.random.default_rng(1).dirichlet(np.ones(4), (1, 3, 4))[:, :, :, :], special=[0]
    )
    fig, ax = viz.plot_head_statistics(stats, stat="distance")
    assert len(ax.texts) == 3 and ax.get_title() == "distance"
    np.testing.assert_allclose(
        [float(t.get_text()) for t in ax.texts], np.round(stats.distance[0], 2), atol=1e-9
    )
    _not_blank(_png(fig))
    with pytest.raises(ValueError, match="stat"):
        viz.plot_head_statistics(head_statistics(np.ones((1, 1, 2, 2)) / 2), stat="special_share")


def test_token_text_colours_high_red_low_blue():
    scores = np.array([1.0, 0.0, -1.0, 0.3])
    fig, ax = viz.plot_token_attributions(scores, ["POS", "zero", "NEG", "weak"])
    img = _png(fig)
    _not_blank(img)
    pos, zero, neg, weak = (_pixel_at_artist(fig, t.get_bbox_patch()) for t in ax.texts)
    assert pos[0] > 0.9 and pos[2] < 0.3  # red
    assert neg[2] > 0.9 and neg[0] < 0.3  # blue
    assert zero.min() > 0.4  # white box (black text inside)
    assert weak[0] - weak[2] > 0.1 and weak[2] > pos[2] + 0.3  # lighter red


def test_token_text_wraps_and_masks():
    toks = [f"token{i}" for i in range(40)]
    fig, ax = viz.plot_token_attributions(np.linspace(-1, 1, 40), toks, mask=np.arange(40) < 30)
    assert len(ax.texts) == 30
    fig.canvas.draw()
    boxes = [t.get_bbox_patch().get_window_extent() for t in ax.texts]
    rows = sorted({round(b.y0) for b in boxes}, reverse=True)
    assert len(rows) > 1  # wrapped onto several lines
    area = ax.get_window_extent()
    for b in boxes:  # every token box inside the axes
        assert area.x0 - 1 <= b.x0 and b.x1 <= area.x1 + 1
        assert area.y0 - 1 <= b.y0 and b.y1 <= area.y1 + 1
    # reading order: left to right within a line, lines top down
    order = sorted(range(30), key=lambda i: (-round(boxes[i].y0), boxes[i].x0))
    assert order == list(range(30))


def test_token_html_snippet():
    html = viz.token_attributions_html([2.0, -1.0, 0.0], ["<b>", "x", "PADTOK"], mask=[1, 1, 0])
    assert isinstance(html, str) and html._repr_html_() == html
    assert "<script" not in html and "&lt;b&gt;" in html and "PADTOK" not in html
    # full red (RdBu's end, #b2182b) with white text for the max; half way to blue
    # (#2166ac) from #f7f7f7 for -1 of 2: (140, 174.5, 209.5), black text on it
    assert "background:#b2182b;color:#ffffff" in html
    assert "background:#8caed2;color:#000000" in html


def test_image_attribution_overlay_and_heatmap():
    attr = np.zeros((8, 8, 3))
    attr[2, 5] = 1.0
    fig, ax = viz.plot_image_attribution(attr, colorbar=False)
    arr = np.asarray(ax.images[0].get_array())
    assert arr.shape == (8, 8) and arr[2, 5] == 3.0
    fig.set_size_inches(3, 3)
    img = _png(fig)
    hot = _pixel_at_artist_cell(fig, ax, 2, 5)
    cold = _pixel_at_artist_cell(fig, ax, 6, 1)
    assert hot.sum() > cold.sum() + 1.5
    img_in = np.random.default_rng(0).random((8, 8, 3))
    fig, ax = viz.plot_image_attribution(-attr, image=img_in)
    assert len(ax.images) == 2 and ax.images[1].get_alpha() == 0.5
    _not_blank(img)
    with pytest.raises(ValueError, match="image"):
        viz.plot_image_attribution(attr, image=np.zeros((4, 4)))


def test_feature_bars_sorted_and_coloured():
    fig, ax = viz.plot_feature_attributions([0.1, -3.0, 2.0, 0.5], ["a", "b", "c", "d"], top_k=3)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["b", "c", "d"]
    widths = [p.get_width() for p in ax.patches]
    assert widths == [-3.0, 2.0, 0.5]
    reds = [p.get_facecolor()[0] > p.get_facecolor()[2] for p in ax.patches]
    assert reds == [False, True, True]
    _not_blank(_png(fig))


def test_profile_chart_duck_typed():
    rows = [
        SimpleNamespace(path="emb", class_name="Embedding", flops=0, params=10, time_ms=0.1),
        SimpleNamespace(
            path="block/attention", class_name="SelfAttention", flops=900, params=5, time_ms=0.6
        ),
        SimpleNamespace(path="dense", class_name="Dense", flops=100, params=5, time_ms=0.3),
    ]
    fig, ax = viz.plot_profile(SimpleNamespace(rows=rows), top_k=2)
    # the largest on top: tick labels are listed bottom to top
    assert [t.get_text() for t in ax.get_yticklabels()] == ["dense", "block/attention"]
    widths = sorted(round(p.get_width(), 6) for p in ax.patches)
    assert widths == [10.0, 30.0, 60.0, 90.0]
    _not_blank(_png(fig))
    fig, ax = viz.plot_profile([{"path": "a", "flops": 3}, {"path": "b", "flops": 1}])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["b", "a"]
    assert len(ax.patches) == 2  # no time bars when nothing was timed
    with pytest.raises(TypeError, match="profile"):
        viz.plot_profile("nope")
    with pytest.raises(ValueError, match="top_k"):
        viz.plot_profile(rows, top_k=0)


def test_no_show_called(monkeypatch):
    monkeypatch.setattr(plt, "show", lambda *a, **k: pytest.fail("plt.show called"))
    viz.plot_attention_head(np.eye(2))
    viz.plot_model_view([np.ones((1, 1, 2, 2)) / 2])
    viz.plot_token_attributions([1.0], ["a"])
    viz.plot_profile([{"path": "a", "flops": 1, "time_ms": 1}])
