"""`attribute_dataset` under `MultiWorkerMirroredStrategy`: two worker processes on loopback.

The workers run `_multiworker_script.py` with `TF_CONFIG` naming two 127.0.0.1 ports.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastrace.attribution import IntegratedGradients
from kerastrace.scale import AttributionStore, attribute_dataset

SCRIPT = os.path.join(os.path.dirname(__file__), "_multiworker_script.py")


def _free_ports(n=2):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ",".join(str(p) for p in ports)


def _start(workdir, *extra):
    ports = _free_ports()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return [
        subprocess.Popen([sys.executable, SCRIPT, str(task), ports, str(workdir), *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for task in (0, 1)
    ]  # fmt: skip


def _wait(procs, timeout=240):
    logs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        logs.append(out)
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    return logs


def _result(workdir, task):
    return json.loads((workdir / f"result-{task}.json").read_text())


@pytest.fixture
def workdir(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(3)]
    )
    model.save(tmp_path / "model.keras")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(23, 4)).astype("float32")
    y = (np.arange(23) % 3).astype("int32")
    np.savez(tmp_path / "data.npz", x=x, y=y)
    # the reference: one process, no strategy
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(5)
    ref = attribute_dataset(IntegratedGradients(model), ds, n_steps=8, shard_size=7,
                            progress=False)  # fmt: skip
    return tmp_path, ref.load()


def test_two_workers_equal_one_process_and_the_chief_writes_once(workdir):
    path, ref = workdir
    _wait(_start(path))
    chief, other = _result(path, 0), _result(path, 1)
    assert chief["replicas"] == other["replicas"] == 2
    # without output_dir, every worker returns every row, in dataset order
    for res in (chief, other):
        assert res["memory"]["index"] == list(range(23))
        np.testing.assert_allclose(res["memory"]["attributions"], ref["attributions"],
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
        np.testing.assert_allclose(res["memory"]["delta"], ref["delta"], atol=1e-5)
    # with output_dir, only the chief writes (each worker was given its own path)
    assert chief["out_exists"] and not other["out_exists"]
    assert chief["on_shard"] == [0, 1, 2, 3]
    assert other["manifest"] == chief["manifest"]  # broadcast by the chief
    store = AttributionStore.open(path / "out-0")
    assert store.complete and [s["count"] for s in store.manifest["shards"]] == [7, 7, 7, 2]
    np.testing.assert_allclose(store.attributions, ref["attributions"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(store.labels, ref["labels"])


def _kill(proc):
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("victim", [0, 1])
def test_killed_worker_then_restart_resumes_without_loss(workdir, victim):
    path, ref = workdir
    procs = _start(path, "--pause-after", "1", "--skip-memory")
    deadline = time.monotonic() + 240
    while not (path / "paused").exists():
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [
            p.communicate()[0][-3000:] for p in procs if p.poll() is not None
        ]
        time.sleep(0.5)
    _kill(procs[victim])  # by its process id
    _kill(procs[1 - victim])  # the survivor waits on the dead one's collectives
    out = path / "out-0"
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["count"] for s in manifest["shards"]] == [7, 7] and not manifest["complete"]
    before = {n: (out / n).read_bytes() for n in ("shard-00000.npz", "shard-00001.npz")}

    _wait(_start(path, "--skip-memory"))
    chief = _result(path, 0)
    assert chief["on_shard"] == [2, 3]  # shards 0 and 1 were kept, not recomputed
    for name, data in before.items():
        assert (out / name).read_bytes() == data
    store = AttributionStore.open(out)
    assert store.complete and len(store) == 23
    np.testing.assert_array_equal(store.load()["index"], np.arange(23))
    np.testing.assert_allclose(store.attributions, ref["attributions"], rtol=1e-5, atol=1e-6)
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]
