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
    assert "Received: epochs=0" in res.stderr
    assert not os.listdir(tmp_path)  # nothing half-written


def test_demo_small_setting_writes_its_run_directory(tmp_path):
    out = tmp_path / "run"
    res = kerastrace("demo", "--output-dir", str(out), "--n-train", "400", "--n-test", "60",
                     "--epochs", "2", "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "test accuracy:" in res.stdout
    assert sorted(os.listdir(out)) == ["model.keras", "summary.json", "vocab.txt"]
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["accuracy"] <= 1.0
    assert set(summary["attention_on_planted"]) == {"block_0/attention", "block_1/attention"}
    vocab = (out / "vocab.txt").read_text().splitlines()
    assert vocab[:4] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    import keras

    model = keras.saving.load_model(out / "model.keras")  # no custom_objects
    assert model.output_shape == (None, 2)


@pytest.mark.slow
def test_full_demo_learns_and_attends_to_the_planted_word(tmp_path):
    res = kerastrace("demo", "--output-dir", str(tmp_path), "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["accuracy"] > 0.9
    assert max(summary["attention_on_planted"].values()) > 2 * summary["attention_uniform_share"]
