import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def kerastrace(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "kerastrace", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=timeout,
    )


def test_help_is_instant_and_imports_no_tensorflow():
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-c",
         "import sys; from kerastrace.cli import main;\n"
         "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
         "print('TF', 'tensorflow' in sys.modules)"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "demo" in res.stdout and res.stdout.strip().endswith("TF False")
    assert time.perf_counter() - t0 < 10


def test_no_command_prints_usage_and_fails():
    res = kerastrace(timeout=60)
    assert res.returncode == 2
    assert "usage: kerastrace" in res.stdout


def test_bad_argument_is_one_line_error_without_traceback(tmp_path):
    res = kerastrace("demo", "--output-dir", str(tmp_path), "--epochs", "0", "--quiet")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "argument `--epochs`" in res.stderr and "Received: --epochs=0" in res.stderr
    assert not os.listdir(tmp_path)  # nothing half-written


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    res = kerastrace("demo", "--output-dir", str(out), "--n-train", "400", "--n-test", "40",
                     "--epochs", "2", "--quiet", "--task", "classifier")
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


def test_demo_small_setting_writes_its_run_directory(demo_run):
    out, res = demo_run
    assert "test accuracy:" in res.stdout
    assert f"tensorboard --logdir {out}/tensorboard" in res.stdout
    expected = {
        "model.keras", "vocab.txt", "summary.json", "faithfulness.json", "faithfulness.txt",
        "attention/model_view.png", "attention/head.png", "attention/rollout.png",
        "attributions/attributions.html", "attributions/integrated_gradients.png",
        "attributions/smoothgrad.png", "attributions/attention_x_gradient.png",
        "profile/profile.txt", "profile/profile.json", "profile/profile.csv",
        "profile/profile.png", "neighbors.json", "train.tsv", "influence.json",
        "checkpoints/epoch-0001.json", "checkpoints/epoch-0001.weights.h5",
        "checkpoints/epoch-0002.json", "checkpoints/epoch-0002.weights.h5", "dashboard.html",
    }
    for name in expected:
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["files"]) == expected
    assert 0.0 <= summary["accuracy"] <= 1.0
    assert set(summary["attention_on_planted"]) == {"block_0/attention", "block_1/attention"}
    faith = json.loads((out / "faithfulness.json").read_text())
    assert set(faith) == {"integrated_gradients", "smoothgrad", "attention_x_gradient"}
    for row in faith.values():
        assert 0.0 <= row["planted_top1"] <= 1.0
    assert faith["integrated_gradients"]["mean_abs_delta"] is not None
    vocab = (out / "vocab.txt").read_text().splitlines()
    assert vocab[:4] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    # Nothing of ours on stderr (TensorFlow's own C++ log lines aside: whether they
    # show depends on the user's TF_CPP_MIN_LOG_LEVEL).
    ours = [
        line for line in res.stderr.splitlines()
        if line.strip() and not line.startswith(("I0000", "W0000", "E0000", "WARNING: All log"))
    ]
    assert ours == [], res.stderr[-2000:]
    # TensorFlow's start-up block (printed twice by TF 2.21 itself) is silenced at import
    assert "oneDNN" not in res.stderr and "absl::InitializeLog" not in res.stderr
    # the TensorBoard directory holds event files and the profiler trace
    tb = out / "tensorboard"
    events = [p for p in tb.rglob("events.out.tfevents.*")]
    assert events
    assert list((tb / "plugins" / "profile").rglob("*.xplane.pb"))
    html = (out / "attributions" / "attributions.html").read_text()
    assert "<span" in html and "integrated_gradients" in html
    assert "red: supports the explained class" in html and "probability 0." in html
    # the summary ends with the files written and the command that opens the dashboard
    tail = res.stdout.strip().splitlines()
    assert tail[-2].startswith("open it in TensorBoard: ") and "dashboard.html" in res.stdout
    # the dashboard in one offline file: every kind of record the demo logs
    page = (out / "dashboard.html").read_text(encoding="utf-8")
    assert "https://" not in page.replace("http://www.w3.org/2000/svg", "")
    for kind in ("attention", "attribution", "profile", "gradient_flow"):
        assert f'"kind":"{kind}"' in page, kind


def test_explain_subcommand(demo_run, tmp_path):
    out, _ = demo_run
    res = kerastrace("explain", str(out / "model.keras"), "--vocab", str(out / "vocab.txt"),
                     "--text", "the film was wonderful", "--output-dir", str(tmp_path / "ex"),
                     "--steps", "8")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "wonderful=" in res.stdout
    data = json.loads((tmp_path / "ex" / "explanations.json").read_text())
    [e] = data["explanations"]
    assert [w["word"] for w in e["words"]] == ["the", "film", "was", "wonderful"]
    assert (tmp_path / "ex" / "explanation_0.png").stat().st_size > 0


def test_attention_subcommand(demo_run, tmp_path):
    out, _ = demo_run
    res = kerastrace("attention", str(out / "model.keras"), "--vocab", str(out / "vocab.txt"),
                     "--text", "a superb film", "--output-dir", str(tmp_path / "at"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "block_1/attention: (1, 2, 24, 24)" in res.stdout
    import numpy as np

    w = np.load(tmp_path / "at" / "attention.npz")
    assert sorted(w.files) == ["block_0__attention", "block_1__attention"]
    np.testing.assert_allclose(w["block_0__attention"][0, :, :5].sum(-1), 1.0, atol=1e-5)


def test_neighbors_subcommand(demo_run):
    out, _ = demo_run
    res = kerastrace("neighbors", str(out / "model.keras"), "--vocab", str(out / "vocab.txt"),
                     "--train-file", str(out / "train.tsv"), "--text", "a superb film",
                     "-k", "3", "--format", "json")
    assert res.returncode == 0, res.stderr[-3000:]
    [r] = json.loads(res.stdout)
    assert r["query"] == "a superb film" and [n["rank"] for n in r["neighbors"]] == [1, 2, 3]
    sims = [n["similarity"] for n in r["neighbors"]]
    assert sims == sorted(sims, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in sims)
    train = (out / "train.tsv").read_text().splitlines()
    for n in r["neighbors"]:
        label, text = train[n["index"]].split("\t")
        assert n["text"] == text and n["label"] == int(label)


def test_profile_subcommand_json(demo_run):
    out, _ = demo_run
    res = kerastrace("profile", str(out / "model.keras"), "--input-shape", "1,24",
                     "--format", "json", "--no-trace")
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(res.stdout)
    import keras

    from kerastrace import layers as _layers  # noqa: F401  (registers them for load_model)

    model = keras.saving.load_model(out / "model.keras")
    assert sum(r["self_params"] for r in data["layers"]) == model.count_params()


@pytest.mark.parametrize(
    "args, message",
    [
        (["explain", "missing.keras", "--text", "hi"], "no such file"),
        (["profile", "README.md", "--input-shape", "1,4"], "not a Keras model file"),
        (["explain", "m.keras", "--method", "nope", "--text", "hi"], "invalid choice: 'nope'"),
        (["profile", "--builder", "nope.py:f"], "nope.py"),
    ],
)
def test_failures_are_one_clear_line(args, message):
    res = kerastrace(*args, timeout=120)
    assert res.returncode == 2
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert len([line for line in res.stderr.splitlines() if "error" in line]) == 1


def test_wrong_npy_shape_and_unsafe_model(demo_run, tmp_path):
    import numpy as np

    out, _ = demo_run
    np.save(tmp_path / "x.npy", np.ones((2, 7), "int32"))
    res = kerastrace("explain", str(out / "model.keras"), "--npy", str(tmp_path / "x.npy"))
    assert res.returncode == 2 and "does not fit the model's input shape" in res.stderr
    import keras

    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.Lambda(lambda t: t * 2)(inp))
    model.save(tmp_path / "lambda.keras")
    res = kerastrace("profile", str(tmp_path / "lambda.keras"), "--input-shape", "1,3")
    assert res.returncode == 2 and "unsafe" in res.stderr and "--unsafe" in res.stderr


@pytest.mark.slow
def test_full_demo_learns_and_attends_to_the_planted_word(tmp_path):
    res = kerastrace("demo", "--output-dir", str(tmp_path), "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["accuracy"] > 0.9
    assert max(summary["attention_on_planted"].values()) > 2 * summary["attention_uniform_share"]
