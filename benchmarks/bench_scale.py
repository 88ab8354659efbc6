"""Benchmark kerastrace.scale: dataset-level attribution throughput.

1. `attribute_dataset(LayerIntegratedGradients(model, "embedding"), dataset)`
   (batches of 32, one batched call per batch) vs calling the same method's
   single-example API in a Python loop over the same examples, side by side
   in this process (target: >= 5x examples/s at batch 32).
2. Scaling from one to two logical CPU devices: a subprocess configures two
   logical devices before TensorFlow starts and times the same run without a
   strategy and with `MirroredStrategy` over both devices. On a CPU-only
   machine both logical devices share the same cores, so this measures the
   distribution overhead rather than a speed-up; on several GPUs each replica
   has its own device.

Run: `python benchmarks/bench_scale.py [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

VOCAB, T = 200, 32


def _setup(n, seed=0):
    import numpy as np

    from kerastrace.testing.reference_models import build_text_classifier

    rng = np.random.default_rng(seed)
    ids = rng.integers(2, VOCAB, size=(n, T)).astype("int32")
    ids[:, 0] = 1
    lens = rng.integers(T // 2, T + 1, size=n)
    ids[np.arange(T)[None, :] >= lens[:, None]] = 0
    y = rng.integers(0, 2, size=n).astype("int32")
    return build_text_classifier, ids, y


def _best(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_loop(n, n_steps, batch, repeats):
    import tensorflow as tf

    from kerastrace.attribution import LayerIntegratedGradients
    from kerastrace.scale import attribute_dataset

    build, ids, y = _setup(n)
    model = build(VOCAB, T, dim=32, num_heads=2, ff_dim=64, num_layers=2)
    lig = LayerIntegratedGradients(model, "embedding")
    ds = tf.data.Dataset.from_tensor_slices((ids, y)).batch(batch)
    kw = dict(baselines=0, n_steps=n_steps)

    def dataset_run():
        attribute_dataset(lig, ds, reduce_hidden="sum", progress=False, **kw)

    def loop_run():
        for i in range(n):
            lig.attribute(ids[i : i + 1], target=y[i : i + 1], return_convergence_delta=True,
                          **kw)

    dataset_run()  # warm-up (traces)
    loop_run()
    t_ds = _best(dataset_run, repeats)
    t_loop = _best(loop_run, repeats)
    return n / t_ds, n / t_loop


def _child(n, n_steps, batch, repeats):
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from kerastrace.attribution import LayerIntegratedGradients
    from kerastrace.scale import attribute_dataset

    build, ids, y = _setup(n)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = build(VOCAB, T, dim=32, num_heads=2, ff_dim=64, num_layers=2)
    lig = LayerIntegratedGradients(model, "embedding")
    ds = tf.data.Dataset.from_tensor_slices((ids, y)).batch(batch)
    kw = dict(baselines=0, n_steps=n_steps, reduce_hidden="sum", progress=False)
    out = {}
    for name, strat in (("1 device", None), ("2 devices (MirroredStrategy)", strategy)):
        def run(strat=strat):
            return attribute_dataset(lig, ds, strategy=strat, **kw)

        first = run()
        out[name] = n / _best(run, repeats)
        out.setdefault("results", []).append(first.attributions.tolist())
    a, b = out.pop("results")
    import numpy as np

    out["max |difference|"] = float(np.abs(np.array(a) - np.array(b)).max())
    print("RESULT " + json.dumps(out))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer examples and repeats")
    parser.add_argument("--n-steps", type=int, default=16, help="IG steps")
    parser.add_argument("--batch", type=int, default=32, help="dataset batch size")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    n, repeats = (64, 2) if args.quick else (256, 3)
    if args.child:
        _child(n, args.n_steps, args.batch, repeats)
        return
    print(f"LayerIntegratedGradients on a 2-block TransformerBlock classifier, T={T}, "
          f"n_steps={args.n_steps}, {n} examples, batch {args.batch}, best of {repeats}")
    ds_rate, loop_rate = bench_loop(n, args.n_steps, args.batch, repeats)
    print(f"{'single-example API in a loop (baseline)':<44}{loop_rate:>10.1f} examples/s")
    print(f"{'attribute_dataset':<44}{ds_rate:>10.1f} examples/s")
    print(f"{'speed-up (target >= 5x)':<44}{ds_rate / loop_rate:>10.1f}x")
    with tempfile.TemporaryDirectory():
        cmd = [sys.executable, __file__, "--child", "--n-steps", str(args.n_steps),
               "--batch", str(args.batch)] + (["--quick"] if args.quick else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        print("two-device run failed:\n" + proc.stderr[-2000:])
        return
    res = json.loads(lines[-1][7:])
    diff = res.pop("max |difference|")
    one = res["1 device"]
    print("scaling over logical CPU devices (subprocess, same cores shared):")
    for name, rate in res.items():
        print(f"  {name:<42}{rate:>10.1f} examples/s  {rate / one:>5.2f}x")
    print(f"  max |attribution difference| 1 vs 2 devices: {diff:.2e}")


if __name__ == "__main__":
    main()
