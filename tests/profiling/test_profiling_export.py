"""Exports: text table, JSON, CSV, matplotlib chart, TensorBoard summary."""

import csv
import glob
import io
import json
import re

import keras
import pytest

from kerastrace.profiling import profile_model


@pytest.fixture(scope="module")
def profile():
    x = keras.Input((10,))
    h = keras.layers.Dense(32, name="big")(x)
    h = keras.layers.Dense(4, name="small")(h)
    return profile_model(keras.Model(x, h, name="two"), trace=False)


def test_table_sort_and_top_k(profile):
    text = profile.to_table(sort_by="flops", top_k=2)
    body = text.splitlines()[3:5]  # title, header, rule, then the rows
    # sorted: the model's row (labelled by its name, its path is "") then "big"
    assert [ln.split()[0] for ln in body] == ["two", "big"]
    assert [ln.split()[1] for ln in body] == ["Functional", "Dense"]
    tree = profile.to_table().splitlines()[3:6]
    assert [ln.split()[0] for ln in tree] == ["two", "big", "small"]
    assert tree[1].startswith("  big")  # indented below the model
    header = re.split(r"\s{2,}", text.splitlines()[1])
    assert header[5:9] == ["FLOPs", "Self FLOPs", "MACs", "Elem FLOPs"]
    cells = [re.split(r"\s{2,}", ln.strip()) for ln in body]
    assert [c[5] for c in cells] == ["932", "672"]  # FLOPs: model, big
    assert [c[7] for c in cells] == ["448", "320"]  # MACs
    assert [c[8] for c in cells] == ["36", "32"]  # Elem FLOPs
    # the convention of each column is stated
    assert "one multiply-accumulate = 2 FLOPs" in text
    assert "MACs = multiply-accumulates of MatMul" in text
    assert "Elem FLOPs = all other FLOPs" in text
    assert "FLOPs = 2 x 448 MACs + 36 element-wise FLOPs" in text
    assert str(profile) == profile.to_table()
    with pytest.raises(ValueError, match="sort_by"):
        profile.to_table(sort_by="nope")


def test_json_and_csv(profile, tmp_path):
    data = json.loads(profile.to_json(str(tmp_path / "p.json")))
    assert data["total_flops"] == profile.total_flops == 2 * 10 * 32 + 32 + 2 * 32 * 4 + 4
    assert [r["path"] for r in data["layers"]] == ["", "big", "small"]
    assert [r["name"] for r in data["layers"]] == ["two", "big", "small"]
    # MACs of the matmul only; the bias add is an element-wise FLOP
    assert data["layers"][1]["macs"] == 10 * 32
    assert data["layers"][1]["elementwise_flops"] == 32
    assert data["total_macs"] == 10 * 32 + 32 * 4
    assert data["total_elementwise_flops"] == 32 + 4
    assert data["uncounted_details"] == [] and data["uncounted_ops"] == {}
    rows = list(csv.DictReader(io.StringIO(profile.to_csv(str(tmp_path / "p.csv")))))
    assert rows[-1]["path"] == "(unassigned)"
    assert sum(int(r["self_flops"]) for r in rows) == profile.total_flops
    assert sum(int(r["self_macs"]) for r in rows) == profile.total_macs
    assert [int(r["macs"]) for r in rows[1:3]] == [10 * 32, 32 * 4]
    assert [int(r["elementwise_flops"]) for r in rows[1:3]] == [32, 4]
    assert [(r["path"], r["name"]) for r in rows[:3]] == [("", "two"), ("big", "big"),
                                                          ("small", "small")]
    assert (tmp_path / "p.csv").read_text().startswith("path,class_name,name,depth")


def test_plot_and_tensorboard(profile, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    fig2, ax2 = profile.plot(ax=ax)
    assert fig2 is fig and ax2 is ax
    assert [t.get_text() for t in ax.get_yticklabels()] == ["small", "big"]
    widths = sorted(round(b.get_width(), 3) for b in ax.patches)
    big = 100 * (2 * 10 * 32 + 32) / profile.total_flops
    assert widths[-1] == pytest.approx(big, abs=1e-3)
    plt.close(fig)
    profile.to_tensorboard(str(tmp_path))
    assert glob.glob(str(tmp_path / "events.out.tfevents.*"))


def test_plot_draws_layer_names_literally(profile):
    # TensorFlow refuses "$" in name scopes, but a profile read back or built by
    # hand may hold any label; the chart draws it as is (no mathtext).
    import dataclasses
    import html
    import re

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {"big": "$x^2$", "small": r"$\frac$"}
    rows = [dataclasses.replace(r, path=names.get(r.path, r.path), name=names.get(r.path, r.name))
            for r in profile.layers]  # fmt: skip
    p = dataclasses.replace(profile, model_name="cost_$5", layers=rows)
    fig, _ = p.plot()
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg")  # mathtext would fail on "$\frac$"
    plt.close(fig)
    drawn = [html.unescape(t) for t in re.findall(r"<text[^>]*>(.*?)</text>", buf.getvalue())]
    assert {"$x^2$", r"$\frac$"} <= set(drawn)
    assert any(t.startswith("cost_$5: FLOPs") for t in drawn)
