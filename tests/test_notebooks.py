"""The tutorial notebooks: stored without outputs, and executed so they never rot.

Each notebook runs in a fresh kernel of the interpreter running the tests (a
kernelspec written to a temporary folder and found through `JUPYTER_PATH`),
with a temporary working directory, and its outputs are checked for real
content: printed numbers, pictures, HTML.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "kerastrace-tests"
EXPECTED = [
    "01_attention_layers_and_pictures.ipynb",
    "02_attribution_and_metrics.ipynb",
    "03_profiling.ipynb",
]


def _all_notebooks():
    return sorted(NOTEBOOKS.glob("*.ipynb"))


# ---------------------------------------------------------------- stored form
def test_expected_notebooks_exist():
    names = [p.name for p in _all_notebooks()]
    assert set(EXPECTED) <= set(names), names


@pytest.mark.parametrize("path", _all_notebooks(), ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path):
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert raw["nbformat"] == 4
    nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "a tutorial without code"
    for i, cell in enumerate(code):
        assert cell.outputs == [], f"code cell {i} of {path.name} has outputs"
        assert cell.execution_count is None, f"code cell {i} of {path.name} has a count"
        assert "plt.show()" not in cell.source
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


# ---------------------------------------------------------------- execution
@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    """A kernelspec for this interpreter, visible through JUPYTER_PATH."""
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "kerastrace tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(root)] + ([old] if old else []))
    try:
        yield KERNEL
    finally:
        if old is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = old


@pytest.fixture(scope="module")
def execute(kernel_name, tmp_path_factory):
    cache = {}

    def run(name):
        if name not in cache:
            nb = nbformat.read(NOTEBOOKS / name, as_version=4)
            cwd = tmp_path_factory.mktemp(name.split("_")[0])
            client = nbclient.NotebookClient(
                nb,
                timeout=300,
                kernel_name=kernel_name,
                resources={"metadata": {"path": str(cwd)}},
            )
            client.execute()
            # The notebooks write nothing into their working directory.
            assert list(cwd.iterdir()) == []
            cache[name] = nb
        return cache[name]

    return run


def _outputs(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def _stdout(nb) -> str:
    parts = []
    for o in _outputs(nb):
        if o.output_type == "stream" and o.name == "stdout":
            parts.append(o.text)
        elif o.output_type in ("execute_result", "display_data"):
            parts.append(o.get("data", {}).get("text/plain", "") + "\n")
    return "".join(parts)


def _count(nb, mime: str) -> int:
    return sum(
        1
        for o in _outputs(nb)
        if o.output_type in ("execute_result", "display_data") and mime in o.get("data", {})
    )


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not found in:\n{text}"
    return float(match.group(1))


def test_01_attention_layers_and_pictures(execute):
    nb = execute("01_attention_layers_and_pictures.ipynb")
    out = _stdout(nb)
    assert "outputs: (1, 5, 16) attention weights: (1, 2, 5, 5)" in out
    assert "attention rows sum to 1: True" in out
    assert _number(r"test accuracy: ([\d.]+)", out) >= 0.9
    assert re.search(r"block_0/attention\s+\(200, 2, 24, 24\)", out)
    assert re.search(r"block_1/attention\s+\(200, 2, 24, 24\)", out)
    assert "model view grid (layers, heads): (2, 2)" in out
    assert "rows sum to 1: True" in out
    # The planted word decides the label; rollout from [CLS] finds it most of the time.
    assert _number(r"rollout ranks the planted word first in (\d+)%", out) >= 50
    entropies = [float(x) for x in re.findall(r"entropy: \[([\d.]+)", out)]
    assert len(entropies) == 2 and all(0.0 < e < 3.18 for e in entropies)  # log(24) = 3.18
    # head heatmap, model view, rollout, head statistics
    assert _count(nb, "image/png") >= 4


def test_02_attribution_and_metrics(execute):
    nb = execute("02_attribution_and_metrics.ipynb")
    out = _stdout(nb)
    assert _number(r"test accuracy: ([\d.]+)", out) >= 0.9
    assert "attributions: (64, 24, 32) -> token scores: (64, 24)" in out
    delta = _number(r"LIG completeness: mean \|delta\| = ([\d.]+)", out)
    gap = _number(r"mean \|F\(x\) - F\(baseline\)\| = ([\d.]+)", out)
    assert delta < 0.05 * gap
    assert _number(r"LIG ranks the planted word first in (\d+)%", out) >= 80
    # the full model and the from-embeddings model agree
    assert _number(r"max logit difference to the full model: ([\d.e+-]+)", out) < 1e-3
    for method in ("IG", "SmoothGrad", r"LIG \(section 2\)"):
        assert re.search(rf"^{method}\s+top word: 'poor'", out, re.M), method
    assert abs(_number(r"IG completeness delta: ([+\-\d.e]+)", out)) < 0.1
    aopc = {m: _number(rf"deletion AOPC {m}\s+([\-\d.]+)", out) for m in ("LIG", "random")}
    assert aopc["LIG"] > aopc["random"]
    infid = {
        m: _number(rf"infidelity {m}\s+([\d.e+-]+)", out) for m in ("gradient", "IG", "random")
    }
    assert infid["gradient"] < infid["IG"] < infid["random"]
    html = [
        o.data["text/html"]
        for o in _outputs(nb)
        if o.output_type == "display_data" and "text/html" in o.get("data", {})
    ]
    assert any("kerastrace-tokens" in h and "poor" in h for h in html)
    assert _count(nb, "image/png") >= 2  # coloured text and deletion curves


def test_03_profiling(execute):
    nb = execute("03_profiling.ipynb")
    out = _stdout(nb)
    flops = re.search(r"classifier FLOPs: (\d+) \(by hand: (\d+)\)", out)
    assert flops and flops.group(1) == flops.group(2) == str(2 * 8 * 32 * 2 + 8 * 2)
    params = re.search(r"parameters: (\d+) \(keras count_params: (\d+)\)", out)
    assert params and params.group(1) == params.group(2)
    mobile = re.search(r"([\d,]+) parameters \(keras count_params: ([\d,]+)\)", out)
    assert mobile and mobile.group(1) == mobile.group(2)
    assert "Model profile: text_classifier (batch size 8" in out
    assert re.search(r"(?m)^block_0/attention\s+SelfAttention\s+flops=", out)
    assert "CSV header: path,class_name" in out
    assert "event files: ['events.out.tfevents" in out
    workdir = re.search(r"files go to (\S+)", out).group(1)
    assert not os.path.exists(workdir)  # the notebook cleans up after itself
    assert _count(nb, "image/png") >= 2
