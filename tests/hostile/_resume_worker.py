"""A process that runs `attribute_dataset` and waits after shard 1 until it is killed.

Usage: python _resume_worker.py WORKDIR

WORKDIR holds `model.keras` and `data.npz`; results go to `WORKDIR/run`.
After shard 1 is written it writes `WORKDIR/ready` and sleeps, so the test
can kill it by its process id at a known point (and once more, mid-write,
with `--no-wait`). Everything runs under `if __name__ == "__main__"`.
"""

import os
import sys
import time


def main():
    workdir = sys.argv[1]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    import tensorflow as tf

    from kerastrace.attribution import IntegratedGradients
    from kerastrace.scale import attribute_dataset

    data = np.load(os.path.join(workdir, "data.npz"))
    ds = tf.data.Dataset.from_tensor_slices((data["x"], data["y"])).batch(3)
    model = keras.saving.load_model(os.path.join(workdir, "model.keras"))

    def on_shard(k, store):
        if k == 1:
            with open(os.path.join(workdir, "ready"), "w") as f:
                f.write(str(os.getpid()))
            time.sleep(600)

    attribute_dataset(IntegratedGradients(model), ds, output_dir=os.path.join(workdir, "run"),
                      shard_size=4, n_steps=8, progress=False, on_shard=on_shard)  # fmt: skip


if __name__ == "__main__":
    main()
