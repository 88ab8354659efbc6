"""Start a real `tensorboard` server over a log directory the toolkit wrote."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from kerastrace.attention import head_statistics
from kerastrace.tensorboard import write_attention, write_head_statistics, write_token_attributions


def _tensorboard_exe():
    exe = Path(sys.executable).parent / "tensorboard"
    return str(exe) if exe.exists() else shutil.which("tensorboard")


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return json.loads(resp.read().decode())


@pytest.mark.skipif(_tensorboard_exe() is None, reason="tensorboard executable not found")
def test_tensorboard_server_lists_runs_and_tags(tmp_path):
    run = tmp_path / "run1"
    w = {"block/attention": np.full((1, 2, 3, 3), 1 / 3)}
    write_attention(run, w, ["a", "b", "c"], step=0)
    write_head_statistics(run, head_statistics(w), step=0)
    write_token_attributions(run, [0.5, -0.2, 0.1], ["a", "b", "c"], step=0)
    port = _free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(
        [
            _tensorboard_exe(),
            "--logdir",
            str(tmp_path),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--load_fast",
            "false",
            "--reload_interval",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        scalars = images = text = runs = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"tensorboard exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                runs = _get(port, "/data/runs")
                scalars = _get(port, "/data/plugin/scalars/tags")
                images = _get(port, "/data/plugin/images/tags")
                text = _get(port, "/data/plugin/text/tags")
                if (
                    "run1" in runs
                    and scalars.get("run1")
                    and images.get("run1")
                    and text.get("run1")
                ):
                    break
            except OSError:
                pass
            time.sleep(1.0)
        assert "run1" in runs
        assert "heads/entropy/block/attention/head_0" in scalars["run1"]
        assert {
            "attention/model_view",
            "attention/block/attention",
            "attributions/example_0",
        } <= set(images["run1"])
        assert "attributions/example_0/text" in text["run1"]
    finally:
        proc.kill()
        proc.wait(timeout=30)
