import os
import subprocess
import sys
from pathlib import Path

import pytest
from _tb_events import read_events

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_with_tensorboard.py"


def test_script_help():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True
    )
    assert "--logdir" in out.stdout and "--epochs" in out.stdout


@pytest.mark.slow
def test_script_trains_and_prints_tensorboard_line(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg"}
    out = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--logdir",
            str(tmp_path),
            "--epochs",
            "2",
            "--samples",
            "96",
            "--no-profile",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=300,
    )
    assert f"tensorboard --logdir {tmp_path}" in out.stdout
    assert "callback failures: 0" in out.stdout
    ev = read_events(tmp_path)
    assert "attributions/top_3_jaccard" in ev and "gradient_norm/block_0/attention" in ev
    assert "heads/special_share/block_1/attention/head_1" in ev
