"""The command line and the scripts are quiet and consistent: no TensorFlow start-up lines
on stderr, no TF1 deprecation notices from profiling, one visible spelling of the
unsafe-loading flag (`--unsafe`), and every output directory's default named in `--help`.
"""

import argparse
import os
import pathlib
import subprocess
import sys

import pytest

from kerastrace.cli import build_parser

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
LOADING = ("profile", "explain", "attention", "neighbors", "influence", "generate", "lens")
# what each writing subcommand's output flags must say when left out
DEFAULTS = {
    ("demo", "--output-dir"): "default: runs/demo",
    ("explain", "--output-dir"): "default: kerastrace_out",
    ("explain", "--logdir"): "default: none",
    ("attention", "--output-dir"): "default: kerastrace_out",
    ("attention", "--logdir"): "default: none",
    ("generate", "--output-dir"): "default: kerastrace_generate",
    ("generate", "--logdir"): "default: none",
    ("lens", "--output-dir"): "default: kerastrace_lens",
    ("profile", "--logdir"): "default: the trace goes to a new temporary directory",
    ("influence", "--index-dir"): "default: none",
}


def _quiet_env():
    """The environment a user has: no TF_CPP_MIN_LOG_LEVEL of the test run."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["MPLBACKEND"] = "Agg"
    return env


def _subcommands():
    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


def _help(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


@pytest.mark.parametrize("command,flag", sorted(DEFAULTS))
def test_help_names_the_default_output_directory(command, flag, capsys):
    text = _help(command, capsys)
    options = text[text.index("options:"):]  # past the usage line
    start = options.index(flag + " ")
    entry = options[start:options.find(" --", start + len(flag))]
    assert DEFAULTS[command, flag] in entry, entry


def test_every_output_flag_says_its_default():
    for name, sub in _subcommands().items():
        for action in sub._actions:
            if action.dest in ("output_dir", "logdir", "index_dir"):
                assert "default" in action.help, (name, action.option_strings)
                if action.default is not None:  # the value argparse falls back to
                    assert action.default in action.help % {"default": action.default}


@pytest.mark.parametrize("command", LOADING)
def test_unsafe_has_one_visible_spelling(command, capsys):
    text = _help(command, capsys)
    assert "--unsafe " in text + " " and "--unsafe-" not in text
    parser = build_parser()
    base = {"influence": ["m", "--checkpoints", "c", "--train-file", "t"],
            "neighbors": ["m", "--train-file", "t"]}.get(command, ["m"])
    assert parser.parse_args([command, *base, "--unsafe"]).unsafe is True
    assert parser.parse_args([command, *base, "--unsafe-deserialization"]).unsafe is True
    assert parser.parse_args([command, *base]).unsafe is False


def test_scripts_spell_the_unsafe_flag_like_the_cli():
    for script in sorted(SCRIPTS.glob("*.py")):
        res = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                             text=True, cwd=ROOT, timeout=120, env=_quiet_env())
        assert res.returncode == 0, (script.name, res.stderr)
        words = [w.strip("[],") for w in res.stdout.split()]
        shown = {w for w in words if w.startswith("--unsafe")}
        assert shown <= {"--unsafe"}, (script.name, shown)


def test_import_tensorflow_quietly_keeps_startup_lines_off_stderr():
    code = (
        "from kerastrace.cli import import_tensorflow_quietly\n"
        "import_tensorflow_quietly()\n"
        "import os, keras, tensorflow, tensorflow_text\n"
        "print(os.environ['TF_CPP_MIN_LOG_LEVEL'])\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=300, env=_quiet_env())
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "3"
    assert res.stderr == ""
    # without it TensorFlow 2.21 prints its start-up block (twice: two of its libraries)
    plain = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True,
                           text=True, cwd=ROOT, timeout=300, env=_quiet_env())
    assert plain.stderr.count("oneDNN custom operations") in (0, 2)  # 0 on other builds


def test_profile_script_and_profile_model_are_quiet(tmp_path):
    # the script as a user runs it: nothing at all on stderr
    res = subprocess.run(
        [sys.executable, str(SCRIPTS / "profile_keras_application.py"), "--no-trace",
         "--top-k", "2"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600, env=_quiet_env(),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "MobileNetV2" in res.stdout or "mobilenetv2" in res.stdout.lower()
    assert res.stderr == ""
    # the library with every TensorFlow log and Python warning visible: no TF1 notices
    code = (
        "import warnings; warnings.simplefilter('always')\n"
        "import logging; logging.basicConfig(level=logging.INFO)\n"
        "import keras\n"
        "from kerastrace.profiling import profile_model\n"
        "m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(2)])\n"
        "profile_model(m)\n"
        "profile_model(m, trace=False)\n"
        "print('done')\n"
    )
    env = dict(_quiet_env(), TF_CPP_MIN_LOG_LEVEL="0")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=600, env=env)
    assert res.returncode == 0 and res.stdout.strip().endswith("done"), res.stderr[-3000:]
    assert "is deprecated" not in res.stderr, res.stderr[-3000:]
    assert "tf.compat.v1" not in res.stderr, res.stderr[-3000:]


@pytest.mark.slow
def test_train_script_is_quiet(tmp_path):
    res = subprocess.run(
        [sys.executable, str(SCRIPTS / "train_with_tensorboard.py"), "--logdir",
         str(tmp_path / "logs"), "--epochs", "1", "--samples", "64", "--no-profile"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600, env=_quiet_env(),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr == ""
