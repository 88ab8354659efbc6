"""The example scripts in `scripts/`: each answers `--help`, and the explain script runs."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "scripts"
EXPLAIN = SCRIPTS / "explain_demo_model.py"


def _run(args, cwd, timeout=300, quiet_env=True):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", MPLBACKEND="Agg")
    if not quiet_env:  # as a user runs it: the script itself keeps TensorFlow quiet
        env.pop("TF_CPP_MIN_LOG_LEVEL")
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_scripts_readme_lists_every_script():
    readme = (SCRIPTS / "README.md").read_text(encoding="utf-8")
    for script in SCRIPTS.glob("*.py"):
        assert f"`{script.name}`" in readme, script.name


@pytest.mark.parametrize("script", sorted(SCRIPTS.glob("*.py")), ids=lambda p: p.name)
def test_script_help(script, tmp_path):
    result = _run([script, "--help"], cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:"), result.stdout
    assert script.name in result.stdout
    assert "--" in result.stdout  # documents its options
    assert list(tmp_path.iterdir()) == []  # --help writes nothing


def _check_outputs(out_dir: pathlib.Path, sentences: list[str]):
    items = json.loads((out_dir / "explanation.json").read_text(encoding="utf-8"))
    assert [it["sentence"] for it in items] == sentences
    page = (out_dir / "explanation.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "kerastrace-tokens" in page
    assert "red: supports the explained class" in page  # the legend of the shared view
    for i, it in enumerate(items):
        png = out_dir / f"sentence_{i}.png"
        assert it["png"] == png.name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        for w in it["words"]:
            start, end = w["span"]
            assert it["sentence"][start:end] == w["word"]  # words are the user's own text
            assert w["word"] in page
    return items


def test_explain_trains_a_tiny_model_and_finds_the_planted_word(tmp_path):
    sentence = "the music was dreadful"
    out_dir = tmp_path / "out"
    result = _run(
        [EXPLAIN, "--output-dir", out_dir, "--train-size", 600, "--epochs", 3, "--steps", 16,
         sentence],
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trained on 600 generated sentences" in result.stdout
    assert "top word: 'dreadful'" in result.stdout, result.stdout
    (item,) = _check_outputs(out_dir, [sentence])
    assert [w["word"] for w in item["words"]] == sentence.split()
    assert item["predicted"] == item["target"] == 0  # "dreadful" is a negative word
    assert abs(item["delta"]) < 0.25  # completeness of Layer IG with 16 steps
    scores = [w["score"] for w in item["words"]]
    assert max(scores) == scores[3]


def test_explain_a_demo_run_directory(tmp_path):
    import keras

    from kerastrace.testing.reference_models import build_text_classifier
    from kerastrace.text import build_vocabulary, save_vocabulary

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    vocab = build_vocabulary(["the film was good", "the plot was bad"], vocab_size=50)
    save_vocabulary(vocab, run_dir / "vocab.txt")
    model = build_text_classifier(len(vocab), 24, num_layers=1, seed=0)
    model.save(run_dir / "model.keras")
    expected = keras.ops.convert_to_numpy(model(keras.ops.zeros((1, 24), "int32")))
    assert expected.shape == (1, 2)

    sentences = ["the film was good", "a zebra, unseen: the plot"]
    out_dir = tmp_path / "out"
    result = _run(
        [EXPLAIN, "--run-dir", run_dir, "--output-dir", out_dir, "--steps", 32, "--target", 1,
         "--unsafe", *sentences],
        cwd=tmp_path, quiet_env=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # TensorFlow's C++ start-up lines stay off stderr, as with the `kerastrace` command
    tf_lines = [line for line in result.stderr.splitlines()
                if line.startswith(("I0000", "W0000", "E0000", "WARNING: All log"))]
    assert tf_lines == [], result.stderr[-2000:]
    assert "trained on" not in result.stdout  # the run's model is used, nothing is trained
    items = _check_outputs(out_dir, sentences)
    words = ["a", "zebra", ",", "unseen", ":", "the", "plot"]  # unknown words and punctuation
    assert [w["word"] for w in items[1]["words"]] == words
    for it in items:
        assert it["target"] == 1
        assert abs(it["delta"]) < 0.05


def test_explain_spells_the_unsafe_flag_like_the_cli(tmp_path):
    result = _run([EXPLAIN, "--help"], cwd=tmp_path, timeout=60)
    assert "--unsafe " in result.stdout and "--unsafe-deserialization" not in result.stdout
    # the old spelling still works (hidden): it fails here only for the missing run
    result = _run([EXPLAIN, "--unsafe-deserialization", "--run-dir", tmp_path, "x"],
                  cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and "model.keras does not exist" in result.stderr


def test_explain_rejects_a_directory_without_a_model(tmp_path):
    result = _run([EXPLAIN, "--run-dir", tmp_path, "some text"], cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert "model.keras does not exist" in result.stderr
    assert "Traceback" not in result.stderr
