"""The static pictures are readable: nothing clipped, colour bars with labels, sizes that scale.

Every check renders the figure with Agg (`fig.canvas.draw()`), as
`fig.savefig(path)` does without `bbox_inches`, and looks at what was drawn:
text extents against the figure's box, pixels along the picture's border and
inside colour bars.
"""

import io
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import keras  # noqa: E402
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kerastrace import visualization as viz  # noqa: E402
from kerastrace.attention import head_statistics  # noqa: E402
from kerastrace.visualization._attribution import fold_profile  # noqa: E402

WORDS = (
    "[CLS] the movie was not good at all , but the actors did great work with a thin "
    "script and the music carried whole scenes [SEP]"
).split()


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _draw(fig) -> np.ndarray:
    """Render with Agg; the RGB pixels, rows top down, in [0, 1]."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3] / 255.0


def _saved(fig, dpi=90) -> np.ndarray:
    """The figure saved as a PNG the way the demo and the CLI save it (no bbox_inches)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    buf.seek(0)
    return mpimg.imread(buf)[..., :3]


def _texts(fig):
    """Titles, axis labels and free texts of every axes (colour bars included)."""
    found = [t for t in (fig._suptitle,) if t is not None] + list(fig.texts)
    for ax in fig.axes:
        found += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label]
        found += list(ax.texts)
    return [t for t in found if t.get_visible() and t.get_text().strip()]


def _inside(fig, artist, tol=1.0):
    box, page = artist.get_window_extent(), fig.bbox
    return (
        box.x0 >= page.x0 - tol
        and box.y0 >= page.y0 - tol
        and box.x1 <= page.x1 + tol
        and box.y1 <= page.y1 + tol
    )


def _assert_nothing_clipped(fig):
    """Every drawn string lies inside the figure, and no ink touches its border."""
    img = _draw(fig)
    outside = [t.get_text() for t in _texts(fig) if not _inside(fig, t)]
    assert not outside, outside
    # what `bbox_inches="tight"` would keep (tick labels included) is the figure itself
    tight = fig.get_tightbbox(fig.canvas.get_renderer())
    w, h = fig.get_size_inches()
    eps = 1.0 / fig.dpi
    assert tight.x0 >= -eps and tight.y0 >= -eps, tight
    assert tight.x1 <= w + eps and tight.y1 <= h + eps, (tight, w, h)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    assert border.min() > 0.9, "something is drawn on the picture's edge (cut off)"
    return img


def _assert_title_drawn_inside(fig, title):
    """The title's box is inside the figure and holds dark pixels: drawn, not cut."""
    img = _draw(fig)
    assert title.get_text()
    assert _inside(fig, title, tol=0.5), (title.get_window_extent(), fig.bbox)
    box = title.get_window_extent()
    h = img.shape[0]
    band = img[int(h - box.y1) : int(np.ceil(h - box.y0)), int(box.x0) : int(np.ceil(box.x1))]
    assert band.size and band.min() < 0.3  # the title's glyphs are in its band
    return img


def _colorbar_of(ax):
    bars = [im.colorbar for im in ax.images if im.colorbar is not None]
    assert len(bars) == 1, "expected one colour bar for the heat map"
    return bars[0]


def _mean_rgb(img, fig, ax, fx, fy):
    """Mean colour of a 3x3 patch at axes fraction (fx, fy)."""
    x, y = ax.transAxes.transform((fx, fy))
    r, c = int(img.shape[0] - y), int(x)
    return img[r - 1 : r + 2, c - 1 : c + 2].reshape(-1, 3).mean(0)


# ----------------------------------------------------------------- token text


def test_token_plot_title_and_colour_bar_are_inside_and_say_red_and_blue():
    scores = np.linspace(-1.0, 1.0, len(WORDS))
    fig, ax = viz.plot_token_attributions(scores, WORDS, title="integrated_gradients")
    img = _assert_title_drawn_inside(fig, ax.title)
    _assert_nothing_clipped(fig)
    # the PNG as the demo writes it (integrated_gradients.png): the top rows are blank
    # and the title's ink starts below them
    png = _saved(fig)
    assert png[:2].min() > 0.9
    # one colour bar below the tokens, labelled with what red and blue mean
    (cax,) = [a for a in fig.axes if a is not ax]
    label = cax.get_xlabel()
    assert "red: raises the target score" in label and "blue: lowers it" in label
    assert cax.get_window_extent().y1 <= min(
        t.get_bbox_patch().get_window_extent().y0 for t in ax.texts
    )
    # its low end is drawn blue, its high end red
    low, high = _mean_rgb(img, fig, cax, 0.02, 0.5), _mean_rgb(img, fig, cax, 0.98, 0.5)
    assert low[2] > 0.9 and low[0] < 0.2
    assert high[0] > 0.9 and high[2] < 0.2


def test_token_plot_grows_with_lines_and_boxes_do_not_overlap():
    few, _ = viz.plot_token_attributions(np.ones(3), ["a", "b", "c"], title="t")
    many_toks = [f"word{i}" for i in range(150)]
    fig, ax = viz.plot_token_attributions(np.linspace(-1, 1, 150), many_toks, title="t")
    assert fig.get_size_inches()[1] > few.get_size_inches()[1] + 1.0
    assert fig.get_size_inches()[0] <= 10.0  # wraps instead of growing sideways
    _assert_nothing_clipped(fig)
    _assert_title_drawn_inside(fig, ax.title)
    boxes = [t.get_bbox_patch().get_window_extent() for t in ax.texts]
    area = ax.get_window_extent()
    assert all(area.y0 - 1 <= b.y0 and b.y1 <= area.y1 + 1 for b in boxes)
    for a, b in zip(boxes, boxes[1:]):
        same_line = abs(a.y0 - b.y0) < 1
        assert not same_line or a.x1 <= b.x0  # left to right, no overlap
        assert same_line or b.y1 <= a.y0 + 1  # a new line starts below


def test_token_plot_text_contrasts_with_its_box():
    fig, ax = viz.plot_token_attributions([-1.0, -0.05, 0.9], ["neg", "faint", "pos"])
    colours = [matplotlib.colors.to_rgb(t.get_color()) for t in ax.texts]
    assert colours == [(1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)]  # white on dark blue


def test_token_plot_multiline_title_and_given_axes():
    title = "a long sentence that the user typed\nintegrated_gradients: class 1, p=0.93\nnote"
    fig, ax = viz.plot_token_attributions(np.ones(4), list("abcd"), title=title)
    _assert_title_drawn_inside(fig, ax.title)
    _assert_nothing_clipped(fig)
    fig2, ax2 = plt.subplots(2, 1, figsize=(6, 4), layout="constrained")
    ax2[1].plot([0, 1], [0, 1])
    ax2[1].set_yticks([0, 1])  # fixed labels: constrained layout is one pass
    out, out_ax = viz.plot_token_attributions(np.ones(4), list("abcd"), ax=ax2[0], title="t")
    assert out is fig2 and out_ax is ax2[0]
    assert len(fig2.axes) == 3  # the two axes and the colour bar
    _assert_nothing_clipped(fig2)


def test_text_explanation_plot_title_is_not_cut():
    from kerastrace.explain import UNKNOWN_NOTE, TextExplanation

    e = TextExplanation(
        text="good zorp film",
        method="integrated_gradients",
        target=1,
        probabilities=np.array([0.2, 0.8]),
        tokens=["[CLS]", "good", "[UNK]", "film", "[SEP]", "[PAD]"],
        token_scores=np.array([0.0, 0.7, -0.2, 0.4, 0.0, 0.0]),
        mask=np.array([1, 1, 1, 1, 1, 0], bool),
        words=[("good", (0, 4), 0.7), ("zorp", (5, 9), -0.2), ("film", (10, 14), 0.4)],
        unknown=np.array([0, 0, 1, 0, 0, 0], bool),
        unknown_words=[False, True, False],
        offsets=np.array([[-1, -1], [0, 4], [5, 9], [10, 14], [-1, -1], [-1, -1]]),
    )
    fig, ax = e.plot()
    title = ax.get_title()
    assert title.splitlines()[0] == "good zorp film"
    assert "integrated_gradients: class 1, p=0.80" in title
    assert "not in the tokenizer's vocabulary" in title
    assert " ".join(title.replace("\n", " ").split()).endswith(" ".join(UNKNOWN_NOTE.split()))
    _assert_title_drawn_inside(fig, ax.title)
    _assert_nothing_clipped(fig)
    assert _saved(fig, dpi=100)[:2].min() > 0.9  # explanation_0.png's top rows are blank


# ------------------------------------------------------------------ attention


def test_attention_head_colour_bar_size_and_labels_scale_with_tokens():
    rng = np.random.default_rng(0)
    small, ax_s = viz.plot_attention_head(rng.dirichlet(np.ones(4), 4), list("abcd"))
    t = len(WORDS)
    fig, ax = viz.plot_attention_head(rng.dirichlet(np.ones(t), t), WORDS, title="layer 0, head 0")
    assert fig.get_size_inches()[0] > small.get_size_inches()[0] + 2
    cb = _colorbar_of(ax)
    assert cb.ax.get_ylabel() == "attention weight"
    _assert_title_drawn_inside(fig, ax.title)
    _assert_nothing_clipped(fig)
    # every token is written, and neighbouring labels do not overlap
    labels = ax.get_xticklabels()
    assert [x.get_text() for x in labels] == WORDS
    boxes = [x.get_window_extent() for x in labels]
    assert all(a.x1 <= b.x0 + 0.5 for a, b in zip(boxes, boxes[1:]))
    assert labels[0].get_fontsize() >= 5


def test_model_view_labels_one_colour_bar_and_size():
    rng = np.random.default_rng(1)
    t = 12
    toks = WORDS[:t]
    names = ["block_0/attention", "block_1/attention"]
    w = {n: rng.dirichlet(np.ones(t), (1, 3, t)) for n in names}
    fig, axes = viz.plot_model_view(w, toks)
    assert axes.shape == (2, 3)
    # rows labelled with layers, columns with heads
    assert [axes[i, 0].get_ylabel() for i in range(2)] == names
    assert [axes[0, h].get_title() for h in range(3)] == ["head 0", "head 1", "head 2"]
    # the tokens: queries on the first column, keys on the last row
    assert [x.get_text() for x in axes[0, 0].get_yticklabels()] == toks
    assert [x.get_text() for x in axes[-1, 1].get_xticklabels()] == toks
    # one colour bar for the whole grid, on one shared scale
    assert len(fig.axes) == axes.size + 1
    (cax,) = [a for a in fig.axes if a not in set(axes.ravel())]
    assert cax.get_ylabel() == "attention weight"
    clims = {im.get_clim() for a in axes.ravel() for im in a.images}
    assert len(clims) == 1
    assert clims.pop()[1] == pytest.approx(max(a.max() for a in w.values()))
    # far bigger than the old 336 x 336 px (at the demo's dpi of 80)
    width, height = fig.get_size_inches() * 80
    assert width > 600 and height > 450
    img = _assert_nothing_clipped(fig)
    suptitle = fig._suptitle
    assert "rows = layers, columns = heads" in suptitle.get_text()
    _assert_title_drawn_inside(fig, suptitle)
    assert img.std() > 0.05
    # more layers, heads and tokens: a bigger picture
    big = {f"l{i}": rng.dirichlet(np.ones(20), (1, 6, 20)) for i in range(4)}
    fig2, _ = viz.plot_model_view(big, WORDS[:20])
    assert (fig2.get_size_inches() > fig.get_size_inches()).all()
    _assert_nothing_clipped(fig2)


def test_model_view_long_layer_names_wrap_and_many_tokens_hide_labels():
    rng = np.random.default_rng(2)
    name = "gpt2_backbone/transformer_layer_0/self_attention"
    fig, axes = viz.plot_model_view({name: rng.dirichlet(np.ones(64), (1, 2, 64))})
    label = axes[0, 0].get_ylabel()
    assert "\n" in label and label.replace("\n", "") == name
    assert axes[0, 0].get_xticklabels() == []  # 64 tokens would not be legible in a cell
    assert "64 tokens, too many to label" in fig.get_suptitle()
    _assert_nothing_clipped(fig)


def test_rollout_and_head_statistics_colour_bars():
    rng = np.random.default_rng(3)
    t = len(WORDS)
    fig, ax = viz.plot_rollout(rng.dirichlet(np.ones(t), (1, t)), WORDS)
    assert _colorbar_of(ax).ax.get_ylabel() == "share of attention"
    _assert_title_drawn_inside(fig, ax.title)
    _assert_nothing_clipped(fig)
    fig, ax = viz.plot_rollout(rng.dirichlet(np.ones(t)), WORDS)
    few, _ = viz.plot_rollout(np.ones(3) / 3, list("abc"))
    assert fig.get_size_inches()[0] > few.get_size_inches()[0]
    _assert_nothing_clipped(fig)

    weights = {
        "gpt2_backbone/transformer_layer_0/self_attention": rng.dirichlet(np.ones(5), (1, 4, 5)),
        "gpt2_backbone/transformer_layer_1/self_attention": rng.dirichlet(np.ones(5), (1, 4, 5)),
    }
    stats = head_statistics(weights)
    for stat, label in [
        ("entropy", "mean attention entropy (nats)"),
        ("distance", "mean attention distance (tokens)"),
    ]:
        fig, ax = viz.plot_head_statistics(stats, stat=stat)
        assert _colorbar_of(ax).ax.get_ylabel() == label
        _assert_title_drawn_inside(fig, ax.title)
        _assert_nothing_clipped(fig)


# ------------------------------------------------------------- attributions


def test_image_attribution_colour_bar_says_what_colours_mean():
    attr = np.zeros((8, 8))
    attr[:4] = 1.0
    attr[4:] = -1.0
    fig, ax = viz.plot_image_attribution(attr)
    cb = _colorbar_of(ax)
    assert "red: raises the target score, blue: lowers it" in cb.ax.get_ylabel()
    img = _assert_nothing_clipped(fig)
    top, bottom = _mean_rgb(img, fig, cb.ax, 0.5, 0.97), _mean_rgb(img, fig, cb.ax, 0.5, 0.03)
    assert top[0] > 0.8 and top[2] < 0.3  # positive end red
    assert bottom[2] > 0.8 and bottom[0] < 0.3  # negative end blue
    # the picture agrees: the upper half (positive) red, the lower half blue
    upper, lower = _mean_rgb(img, fig, ax, 0.5, 0.75), _mean_rgb(img, fig, ax, 0.5, 0.25)
    assert upper[0] > 0.8 and lower[2] > 0.8
    fig, ax = viz.plot_image_attribution(np.abs(attr))
    assert _colorbar_of(ax).ax.get_ylabel().startswith("attribution\n")
    _assert_nothing_clipped(fig)
    fig, ax = viz.plot_image_attribution(np.stack([attr, -attr], -1), reduce="abs")
    assert _colorbar_of(ax).ax.get_ylabel().startswith("|attribution| summed over channels")
    assert np.asarray(ax.images[0].get_array()).max() == 2.0


def test_feature_attributions_axis_says_red_and_blue_and_long_names_fit():
    names = [f"a_rather_long_feature_name_number_{i}" for i in range(30)]
    fig, ax = viz.plot_feature_attributions(np.linspace(-1, 1, 30), names, title="features")
    assert "red: raises the target score" in ax.get_xlabel()
    few, _ = viz.plot_feature_attributions([1.0, -1.0], ["a", "b"])
    assert fig.get_size_inches()[1] > few.get_size_inches()[1] + 3
    _assert_title_drawn_inside(fig, ax.title)
    _assert_nothing_clipped(fig)


# ---------------------------------------------------------------- profile


def _attention_model():
    from kerastrace.layers import SelfAttention

    x = keras.Input((6, 8))
    h, _ = SelfAttention(num_heads=2, key_dim=4, dropout=0.1, name="attention")(x)
    h = keras.layers.Dropout(0.1, name="drop")(h)
    h = keras.layers.GlobalAveragePooling1D(name="pool")(h)
    y = keras.layers.Dense(3, name="head")(h)
    return keras.Model(x, y, name="tiny")


@pytest.fixture(scope="module")
def attention_profile(tmp_path_factory):
    from kerastrace.profiling import profile_model

    return profile_model(_attention_model(), batch_size=2, logdir=str(tmp_path_factory.mktemp("p")))


def _bars(ax):
    """{tick label: [bar widths at that row]} (FLOPs and time bars)."""
    labels = {round(y): t.get_text() for y, t in zip(ax.get_yticks(), ax.get_yticklabels())}
    out = {}
    for p in ax.patches:
        row = round(p.get_y() + p.get_height() / 2)
        out.setdefault(labels[row], []).append(p.get_width())
    return out


def test_profile_chart_keeps_the_attention_layer_and_drops_zero_rows(attention_profile):
    p = attention_profile
    assert p["attention/attention_dropout"].depth == 2  # the attention layer has a child
    fig, ax = p.plot()
    bars = _bars(ax)
    # oracle: ModelProfile.fold(1) folds every sublayer into its top-level layer
    folded = {r.path: r for r in p.fold(1).layers if r.depth == 1}
    time = p.time_available and bool(p.total_time_ms)
    expected = {
        path
        for path, r in folded.items()
        if r.self_flops > 0 or (time and (r.self_time_ms or 0) > 0)
    }
    assert set(bars) == expected
    assert "attention" in bars and "drop" not in bars
    assert not any(k.startswith("attention/") for k in bars)
    # the bars are the folded rows' shares of the model's totals
    for path, widths in bars.items():
        assert max(widths) > 0  # no zero rows
        assert widths[0] == pytest.approx(100 * folded[path].self_flops / p.total_flops)
        if time:
            assert widths[1] == pytest.approx(100 * folded[path].self_time_ms / p.total_time_ms)
    assert p["attention"].flops == folded["attention"].self_flops > 0
    _assert_title_drawn_inside(fig, ax.title)
    _assert_nothing_clipped(fig)
    # depth=2 opens the attention layer: its own ops stay a row, its zero dropout does not
    fig, ax = p.plot(depth=2)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert "attention (own ops)" in labels and "attention/attention_dropout" not in labels
    # the largest row is on top (tick labels bottom to top)
    fig, ax = p.plot(sort_by="flops")
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[-1] == "attention"


def test_profile_chart_long_paths_fit(attention_profile):
    import dataclasses

    long = "a_backbone_with_a_long_name/transformer_layer_11/self_attention_output_dense"
    rows = [
        dataclasses.replace(r, path=long if r.path == "head" else r.path)
        for r in attention_profile.layers
    ]
    p = dataclasses.replace(attention_profile, layers=rows)
    fig, ax = p.plot()
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert "…/transformer_layer_11/self_attention_output_dense" in labels
    _assert_nothing_clipped(fig)


def test_fold_profile_by_hand():
    def row(path, depth, flops, time=0.0):
        return {"path": path, "depth": depth, "flops": flops, "time_ms": time}

    # a keras-hub-like nesting: the model, a backbone wrapper holding almost all,
    # two blocks, each an attention layer with a zero dropout and a dense
    rows = [
        row("", 0, 0),
        row("backbone", 1, 2),
        row("backbone/emb", 2, 10),
        row("backbone/block_0", 2, 0),
        row("backbone/block_0/att", 3, 40),
        row("backbone/block_0/att/dropout", 4, 0),
        row("backbone/block_0/dense", 3, 20),
        row("backbone/block_1", 2, 0),
        row("backbone/block_1/att", 3, 40),
        row("backbone/block_1/att/dropout", 4, 0),
        row("backbone/block_1/dense", 3, 20),
        row("logits", 1, 8),
    ]
    total = sum(r["flops"] for r in rows)

    def shown(out):
        return {r["label"]: r["flops"] for r in out if r["flops"] > 0}

    one = fold_profile(rows, 1, key="flops")
    assert shown(one) == {"backbone": 132, "logits": 8}
    two = fold_profile(rows, 2, key="flops")
    assert shown(two) == {
        "backbone (own ops)": 2, "backbone/emb": 10, "backbone/block_0": 60,
        "backbone/block_1": 60, "logits": 8,
    }  # fmt: skip
    # automatic: as deep as fits in max_rows; the attention layers stay whole
    # (their only sublayer, the dropout, holds nothing)
    auto = fold_profile(rows, None, key="flops", max_rows=10)
    assert shown(auto) == {
        "backbone (own ops)": 2, "backbone/emb": 10, "backbone/block_0/att": 40,
        "backbone/block_0/dense": 20, "backbone/block_1/att": 40,
        "backbone/block_1/dense": 20, "logits": 8,
    }  # fmt: skip
    assert fold_profile(rows, None, key="flops", max_rows=5) == two
    for out in (one, two, auto, fold_profile(rows, 9)):
        assert sum(r["flops"] for r in out) == total  # nothing dropped or counted twice
        assert len({r["path"] for r in out}) == len(out)


def test_profile_rows_from_a_list_of_layer_rows_are_folded(attention_profile):
    # the notebook passes `profile.layers`: folded the same way, no double counting
    fig, ax = viz.plot_profile(attention_profile.layers, sort_by="flops")
    bars = _bars(ax)
    assert "attention" in bars and "" not in bars
    assert sum(w[0] for w in bars.values()) == pytest.approx(100.0)
    duck = SimpleNamespace(rows=[{"path": "x", "flops": 0, "time_ms": 0}])
    fig, ax = viz.plot_profile(duck)
    assert ax.get_yticklabels() == [] and "no layer" in ax.texts[0].get_text()
    with pytest.raises(ValueError, match="depth"):
        viz.plot_profile(attention_profile, depth=0)
