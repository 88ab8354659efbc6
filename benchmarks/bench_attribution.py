"""Benchmark kerastrace.attribution against its floor and against peer libraries.

Every number printed is a ratio measured side by side in this run:

1. Floor: one compiled forward + input-gradient pass on a batch of 50 inputs
   (the same work IG with 50 steps or SmoothGrad with 50 samples must do on
   one example). Reported: time(method) / time(floor), with the whole path in
   one chunk and with chunks of 10.
2. Memory: peak RSS growth of IG at n_steps 50 and 500 with a fixed
   `internal_batch_size`, each in a fresh subprocess, next to the same IG
   with all steps in one chunk.
3. Peers (alibi, tf-explain, tf-keras-vis), run in their own virtualenv
   (`--peer-python`, default .venv-peers/bin/python, made by `make peers`) with kerastrace on
   its path: time(peer) / time(kerastrace) at equal work and the largest
   difference of the attributions.

Usage:
    python benchmarks/bench_attribution.py [--quick] [--no-peers]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHAPE = (32, 32, 3)
CLASSES = 10


def build_model(seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input(SHAPE),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.Conv2D(32, 3, strides=2, activation="relu"),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(CLASSES),
        ]
    )


def example(n=1, seed=0):
    import numpy as np

    return np.random.default_rng(seed).uniform(0, 1, size=(n, *SHAPE)).astype("float32")


def floor_fn(model, noise=False):
    """One compiled forward + input-gradient pass (the same tf.function style).

    With `noise=True`, the pass also draws Gaussian noise of the input's size
    in the same function and adds it first: SmoothGrad cannot cost less than
    that, because the plain floor does not draw the 50 x 3072 normal numbers
    that SmoothGrad needs.
    """
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((None, *SHAPE)), tf.TensorSpec((None,), tf.int32)])
    def grad(x, target):
        if noise:
            x = x + tf.random.stateless_normal(tf.shape(x), seed=(0, 0), stddev=0.1)
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = model(x, training=False)
            score = tf.gather(out, target, axis=1, batch_dims=1)
        return tape.gradient(score, x)

    return grad


def measure(cases, repeats, seed=0):
    """Median seconds per case; cases run interleaved, after two warm-up calls each.

    Every round runs each case once, in a shuffled order, so slow phases of a
    shared machine hit all cases alike.
    """
    import random

    order = list(cases)
    for fn in cases.values():
        fn()
        fn()
    times = {k: [] for k in cases}
    rnd = random.Random(seed)
    for _ in range(repeats):
        rnd.shuffle(order)
        for k in order:
            t0 = time.perf_counter()
            cases[k]()
            times[k].append(time.perf_counter() - t0)
    return times


def median_ratios(times, base):
    """Median over rounds of time(case) / time(base) in the same round."""
    return {
        k: statistics.median(t / b for t, b in zip(v, times[base])) for k, v in times.items()
    }


# --------------------------------------------------------------- section 1
def bench_floor(repeats):
    import numpy as np

    from kerastrace.attribution import IntegratedGradients, NoiseTunnel, Saliency

    model = build_model()
    x1 = example(1)
    x50 = np.repeat(x1, 50, axis=0)
    t50 = np.full(50, 3, np.int32)
    grad = floor_fn(model)
    noisy_grad = floor_fn(model, noise=True)
    ig = IntegratedGradients(model)
    sg = NoiseTunnel(Saliency(model))
    cases = {
        "floor: grad pass on batch 50": lambda: grad(x50, t50).numpy(),
        "floor + drawing SmoothGrad's noise": lambda: noisy_grad(x50, t50).numpy(),
        "IG 50 steps, 1 chunk": lambda: ig.attribute(x1, target=3, n_steps=50),
        "IG 50 steps, chunks of 10": lambda: ig.attribute(
            x1, target=3, n_steps=50, internal_batch_size=10
        ),
        "SmoothGrad 50 samples, 1 chunk": lambda: sg.attribute(
            x1, target=3, nt_samples=50, stdevs=0.1, seed=0
        ),
        "SmoothGrad 50 samples, chunks of 10": lambda: sg.attribute(
            x1, target=3, nt_samples=50, stdevs=0.1, seed=0, internal_batch_size=10
        ),
    }
    times = measure(cases, repeats)
    ratios = median_ratios(times, "floor: grad pass on batch 50")
    targets = {"1 chunk": 1.0, "chunks of 10": 1.3}
    print(f"\n== 1. cost vs the floor (median over {repeats} shuffled rounds of the ratio "
          "to the floor's time in the same round) ==")
    print(f"{'case':40s} {'ms':>7s} {'x floor':>8s}  target")
    for k, r in ratios.items():
        tgt = next((f"<= {v}x" for s, v in targets.items() if k.endswith(s)), "")
        print(f"{k:40s} {statistics.median(times[k]) * 1e3:7.2f} {r:8.3f}  {tgt}")
    print(f"(engine traces: IG {ig.engine.trace_count}, SmoothGrad "
          f"{sg.attribution_method.engine.trace_count})")


# --------------------------------------------------------------- section 2
def mem_child(n_steps, chunk):
    import resource

    import tensorflow as tf

    from kerastrace.attribution import IntegratedGradients

    model = build_model()
    x = example(1)
    ig = IntegratedGradients(model)
    ig.attribute(x, target=3, n_steps=2, internal_batch_size=2)  # trace + warm up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
    except Exception:  # noqa: BLE001
        pass
    ig.attribute(x, target=3, n_steps=n_steps, internal_batch_size=chunk)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        peak = tf.config.experimental.get_memory_info("CPU:0")["peak"] / 2**20
    except Exception:  # noqa: BLE001
        peak = float("nan")
    print(json.dumps({"delta_mib": (after - before) / 1024.0, "peak_mib": peak}))


def bench_memory(settings):
    print("\n== 2. IG peak memory, one fresh process per setting ==")
    print("(TF CPU allocator peak from tf.config.experimental.get_memory_info('CPU:0') after "
          "reset_memory_stats, and max-RSS growth)")
    print(f"{'n_steps':>8s} {'internal_batch_size':>20s} {'TF peak MiB':>12s} "
          f"{'RSS growth MiB':>15s}")
    for n_steps, chunk in settings:
        out = subprocess.run(
            [sys.executable, __file__, "--_mem-child", str(n_steps), str(chunk)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": ROOT},
        )
        try:
            res = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{n_steps:8d} {chunk:>20d} {res['peak_mib']:12.1f} {res['delta_mib']:15.1f}")
        except Exception:  # noqa: BLE001
            print(f"{n_steps:8d} {chunk:>20d}   failed: {out.stderr.strip()[-300:]}")


# --------------------------------------------------------------- section 3
def peers_child(repeats):
    """Runs inside the peers' virtualenv: kerastrace vs each peer, same process."""
    import numpy as np

    from kerastrace.attribution import IntegratedGradients, NoiseTunnel, Saliency

    model = build_model()
    x = example(1)
    target = 3
    rows = []

    def rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))

    # alibi IntegratedGradients (gausslegendre, 50 steps, one batch of 50)
    try:
        from alibi.explainers import IntegratedGradients as AlibiIG

        alibi = AlibiIG(model, method="gausslegendre", n_steps=50, internal_batch_size=50)
        ours = IntegratedGradients(model)
        med = median_ratios(measure(
            {
                "ours": lambda: ours.attribute(x, target=target, n_steps=50),
                "peer": lambda: alibi.explain(x, target=np.array([target])),
            },
            repeats,
        ), "ours")
        a_ours = ours.attribute(x, target=target, n_steps=50)
        a_peer = alibi.explain(x, target=np.array([target])).attributions[0]
        rows.append(("alibi IntegratedGradients (GL, 50 steps)", med, rel(a_ours, a_peer), ""))
    except Exception as exc:  # noqa: BLE001
        rows.append(("alibi IntegratedGradients", None, None, f"{type(exc).__name__}: {exc}"))

    # tf-explain IntegratedGradients core (50 linspace points, zero baseline)
    try:
        import tensorflow as tf
        from tf_explain.core.integrated_gradients import IntegratedGradients as TfeIG

        def tfe():
            inter = TfeIG.generate_interpolations(x, 50)
            grads = TfeIG.get_integrated_gradients(inter, model, target, 50)
            return (tf.convert_to_tensor(x) * grads).numpy()

        ours = IntegratedGradients(model)
        med = median_ratios(measure(
            {
                "ours": lambda: ours.attribute(
                    x, target=target, n_steps=50, method="riemann_trapezoid"
                ),
                "peer": tfe,
            },
            repeats,
        ), "ours")
        # tf-explain averages 50 equally weighted linspace points; the trapezoid rule
        # uses the same points with half weight at the ends, so expect ~1/50 difference.
        diff = rel(ours.attribute(x, target=target, n_steps=50, method="riemann_trapezoid"), tfe())
        rows.append(("tf-explain IntegratedGradients (50 pts)", med, diff, ""))
    except Exception as exc:  # noqa: BLE001
        rows.append(("tf-explain IntegratedGradients", None, None, f"{type(exc).__name__}: {exc}"))

    # tf-keras-vis Saliency and SmoothGrad
    try:
        from tf_keras_vis.saliency import Saliency as VisSaliency
        from tf_keras_vis.utils.scores import CategoricalScore

        vis = VisSaliency(model, clone=False)
        score = CategoricalScore([target])
        ours = Saliency(model)
        med = median_ratios(measure(
            {
                "ours": lambda: ours.attribute(x, target=target),
                "peer": lambda: vis(score, x, keepdims=True, normalize_map=False),
            },
            repeats,
        ), "ours")
        diff = rel(ours.attribute(x, target=target), vis(score, x, keepdims=True,
                                                         normalize_map=False))
        rows.append(("tf-keras-vis Saliency", med, diff, ""))
        sigma = 0.2 * float(x.max() - x.min())  # tf-keras-vis' smooth_noise convention
        nt = NoiseTunnel(Saliency(model))
        med = median_ratios(measure(
            {
                "ours": lambda: nt.attribute(x, target=target, nt_samples=50, stdevs=sigma,
                                             seed=0),
                "peer": lambda: vis(score, x, smooth_samples=50, smooth_noise=0.2,
                                    keepdims=True, normalize_map=False),
            },
            max(3, repeats // 2),
        ), "ours")
        a_ours = nt.attribute(x, target=target, nt_samples=400, stdevs=sigma, seed=0)
        a_peer = vis(score, x, smooth_samples=400, smooth_noise=0.2, keepdims=True,
                     normalize_map=False)
        corr = float(np.corrcoef(np.ravel(a_ours), np.ravel(a_peer))[0, 1])
        rows.append(("tf-keras-vis SmoothGrad (50 samples)", med, None,
                     f"random noise: Pearson r of 400-sample maps = {corr:.3f}"))
    except Exception as exc:  # noqa: BLE001
        rows.append(("tf-keras-vis Saliency/SmoothGrad", None, None,
                     f"{type(exc).__name__}: {exc}"))

    for name, med, diff, note in rows:
        if med is None:
            print(f"peer {name}: not available ({note[:300]})")
            continue
        speed = med["peer"]  # median of per-round peer/kerastrace ratios
        d = f"max rel diff {diff:.2e}" if diff is not None else ""
        print(f"{name:42s} peer/kerastrace time {speed:6.2f}x  {d} {note}".rstrip())


def bench_peers(python, repeats):
    print("\n== 3. peers at equal work (time ratio > 1: kerastrace faster) ==")
    if not os.path.exists(python):
        for peer in ("alibi", "tf-explain", "tf-keras-vis"):
            print(f"peer {peer}: not available (no peer virtualenv at {python}; create it "
                  "with `make peers`)")
        return
    out = subprocess.run(
        [python, __file__, "--_peers-child", "--repeats", str(repeats)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    print("\n".join(lines) if lines else f"peer child failed: {out.stderr.strip()[-500:]}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats and settings")
    p.add_argument("--no-peers", action="store_true", help="skip the peer comparison")
    p.add_argument("--peer-python", default=os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".venv-peers", "bin", "python"),
                   help="python of a virtualenv with alibi, tf-explain, tf-keras-vis")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--_mem-child", nargs=2, type=int, help=argparse.SUPPRESS)
    p.add_argument("--_peers-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    repeats = args.repeats or (5 if args.quick else 40)
    if args._mem_child:
        mem_child(*args._mem_child)
        return
    if args._peers_child:
        peers_child(repeats)
        return
    import tensorflow as tf

    print(f"tensorflow {tf.__version__}, model: small CNN {SHAPE} -> {CLASSES} classes, CPU")
    bench_floor(repeats)
    settings = [(50, 10), (500, 10), (500, 500)] if args.quick else [
        (50, 10), (500, 10), (50, 50), (500, 50), (500, 500)
    ]
    bench_memory(settings)
    if not args.no_peers:
        bench_peers(args.peer_python, max(3, repeats // 2))


if __name__ == "__main__":
    main()
