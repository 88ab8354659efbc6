"""The layers on the other Keras 3 backends (JAX, torch), each in a subprocess.

A process chooses its Keras backend once, so `backend_checks.py` runs in a
fresh interpreter with `KERAS_BACKEND` set. JAX is in the `test` extra and
runs in CI (on CPU); torch runs where it is installed (it is too heavy for
the CI install) and is skipped, with the reason shown, elsewhere.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("backend_checks.py")
ROOT = Path(__file__).resolve().parents[2]


def _installed(module):
    return importlib.util.find_spec(module) is not None


def _run(backend, tmp_path, *checks, timeout=240):
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    }
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), *checks],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(tmp_path),
    )
    report = f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    assert proc.returncode == 0, f"{backend} checks failed\n{report}"
    assert f"backend {backend}," in proc.stdout, report
    for name in checks:
        assert f"ok {name}" in proc.stdout, report
    return proc.stdout


JAX_CHECKS = [
    "harness",
    "masks",
    "matches_multi_head_attention",
    "fused_equals_explicit",
    "float16_large_inputs",
    "keras_round_trip",
    "training_step",
]


@pytest.mark.skipif(not _installed("jax"), reason="jax is not installed (pip install -e '.[test]')")
def test_layers_under_jax(tmp_path):
    _run("jax", tmp_path, *JAX_CHECKS)


@pytest.mark.skipif(
    not _installed("torch"), reason="torch is not installed (too heavy for the CI install)"
)
def test_layers_under_torch(tmp_path):
    _run("torch", tmp_path, *JAX_CHECKS)
