import json
import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(__file__), "_distributed_script.py")


def test_mirrored_two_logical_devices_equals_single_device(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, SCRIPT, str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    res = json.loads(lines[-1][len("RESULT ") :])
    assert res["replicas"] == 2
    assert res["index"] == list(range(11))  # gathered in dataset order
    assert res["max_attr_diff"] < 1e-5 and res["max_delta_diff"] < 1e-5
    assert res["labels_equal"] and res["inputs_equal"] and res["num_shards"] == 3
    assert res["dict_index"] == list(range(11)) and res["dict_inputs_equal"]
    assert res["dict_max_attr_diff"] < 1e-5 and res["dict_attr_nonzero"]
    assert "not created under this strategy's scope" in res["late_error"]
    assert "strategy.scope()" in res["late_error"]


def test_importing_the_child_script_has_no_side_effects(tmp_path):
    # pytest imports every module under tests/ (--doctest-modules) with its own
    # argv ("-m", "not slow ..."); the script once ran its job at import and wrote
    # shards into "./-m/".
    code = (
        "import importlib.util, sys; sys.argv = ['pytest', '-m', 'not slow'];"
        f"spec = importlib.util.spec_from_file_location('child', {SCRIPT!r});"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod);"
        "print('TF', 'tensorflow' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("TF False")
    assert list(tmp_path.iterdir()) == []
