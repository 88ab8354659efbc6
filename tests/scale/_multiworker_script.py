"""One worker of a two-worker `MultiWorkerMirroredStrategy` run on loopback addresses.

Usage: python _multiworker_script.py TASK PORT0,PORT1 WORKDIR [--pause-after K] [--skip-memory]

WORKDIR holds `model.keras` and `data.npz` (written by the test). The worker
runs `attribute_dataset` without `output_dir` (every worker gets all results
in memory), then with `output_dir` (`WORKDIR/out-<TASK>`: as on separate
machines, each worker gets its own path; only the chief may write), and
writes `WORKDIR/result-<TASK>.json`. With `--pause-after K` the chief sleeps
after writing shard K (and writes `WORKDIR/paused`) so that the test can
kill a worker by its process id.

Everything happens under `if __name__ == "__main__"` (pytest imports test
files with --doctest-modules).
"""

import json
import os
import sys
import time


def main():
    task, ports, workdir = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
    pause_after = int(sys.argv[sys.argv.index("--pause-after") + 1]) if (
        "--pause-after" in sys.argv) else None  # fmt: skip
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
        "task": {"type": "worker", "index": task},
    })  # fmt: skip
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()

    import keras
    import numpy as np

    from kerastrace.attribution import IntegratedGradients
    from kerastrace.scale import attribute_dataset

    data = np.load(os.path.join(workdir, "data.npz"))
    ds = tf.data.Dataset.from_tensor_slices((data["x"], data["y"])).batch(5)
    with strategy.scope():
        model = keras.saving.load_model(os.path.join(workdir, "model.keras"))
    ig = IntegratedGradients(model)
    kw = dict(n_steps=8, shard_size=7, progress=False)
    result = {"task": task, "replicas": strategy.num_replicas_in_sync}
    if "--skip-memory" not in sys.argv:
        mem = attribute_dataset(ig, ds, strategy=strategy, **kw)
        result["memory"] = {k: v.tolist() for k, v in mem.load().items()}
    written = []

    def on_shard(k, store):
        written.append(k)
        if pause_after is not None and k == pause_after and task == 0:
            with open(os.path.join(workdir, "paused"), "w") as f:
                f.write(str(os.getpid()))
            time.sleep(600)

    out = os.path.join(workdir, f"out-{task}")
    store = attribute_dataset(ig, ds, strategy=strategy, output_dir=out, on_shard=on_shard, **kw)
    result["manifest"] = store.manifest
    result["on_shard"] = written
    result["out_exists"] = os.path.exists(out)
    with open(os.path.join(workdir, f"result-{task}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
