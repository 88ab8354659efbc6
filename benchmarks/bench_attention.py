"""Benchmark kerastrace.attention.collect and the TensorBoard monitors.

1. `collect` on a model with 12 attention layers (8 kerastrace TransformerBlocks
   + 4 stock keras MultiHeadAttention layers) vs one plain forward pass of the
   same model, measured side by side in this process (target: <= 1.2x the
   compiled forward pass).
2. `AttentionMonitor` + `GradientFlow` logging every epoch on a fixed probe
   batch vs the same training without callbacks (target: <= 5% per epoch).

Run: `python benchmarks/bench_attention.py [--quick]`.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kerastrace.attention import collect  # noqa: E402
from kerastrace.layers import TransformerBlock  # noqa: E402
from kerastrace.tensorboard import AttentionMonitor, GradientFlow  # noqa: E402


def build_12_layer_model(t, d, heads):
    inp = keras.Input((t, d))
    x = inp
    for i in range(12):
        if i % 3 == 2:
            x = keras.layers.LayerNormalization()(
                x + keras.layers.MultiHeadAttention(heads, d // heads, name=f"mha_{i}")(x, x)
            )
        else:
            x, _ = TransformerBlock(heads, 2 * d, name=f"block_{i}")(x)
    return keras.Model(inp, x)


def best_of(fn, repeats, inner):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return min(times), statistics.median(times)


def bench_collect(args):
    keras.utils.set_random_seed(0)
    model = build_12_layer_model(args.seq_len, args.dim, 4)
    x = tf.constant(
        np.random.default_rng(0).normal(size=(args.batch, args.seq_len, args.dim)), tf.float32
    )
    forward = tf.function(lambda z: model(z, training=False))
    forward(x)
    w = collect(model, x)
    assert len(w) == 12, list(w)
    collect(model, x, compiled=False)
    rows = [
        ("plain forward, tf.function (baseline)", lambda: forward(x).numpy()),
        ("collect(model, x)  [cached tf.function]", lambda: collect(model, x)),
        ("plain forward, eager model(x)", lambda: model(x).numpy()),
        ("collect(model, x, compiled=False) [eager]", lambda: collect(model, x, compiled=False)),
    ]
    res = {}
    # interleave repetitions to share machine noise
    for _ in range(args.rounds):
        for name, fn in rows:
            b, _ = best_of(fn, 1, args.inner)
            res.setdefault(name, []).append(b)
    base = min(res[rows[0][0]])
    eager = min(res[rows[2][0]])
    print(
        f"\n[collect] 12 attention layers (8 TransformerBlock + 4 MultiHeadAttention), "
        f"B={args.batch}, T={args.seq_len}, D={args.dim}; best of {args.rounds}x{args.inner}"
    )
    print(f"{'case':45s} {'ms':>9s} {'x compiled fwd':>15s} {'x eager fwd':>12s}")
    for name, _ in rows:
        t = min(res[name])
        print(f"{name:45s} {1e3 * t:9.2f} {t / base:15.2f} {t / eager:12.2f}")
    ratio = min(res[rows[1][0]]) / base
    print(
        f"collect / compiled forward = {ratio:.2f}x (target <= 1.2x): "
        f"{'PASS' if ratio <= 1.2 else 'FAIL'}"
    )
    return ratio


def tiny_classifier(t, vocab):
    inp = keras.Input((t,), dtype="int32")
    x = keras.layers.Embedding(vocab, 32, mask_zero=True)(inp)
    for i in range(2):
        x, _ = TransformerBlock(4, 64, name=f"block_{i}")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(inp, keras.layers.Dense(2)(x))
    model.compile(
        keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model


def bench_callbacks(args):
    t, vocab = 32, 200
    rng = np.random.default_rng(0)
    ids = rng.integers(1, vocab, size=(args.samples, t)).astype("int32")
    y = (ids[:, 0] > vocab // 2).astype("int32")
    probe = ids[:8]
    epoch_times = {"no callbacks (baseline)": [], "AttentionMonitor + GradientFlow": []}
    logdir = tempfile.mkdtemp(prefix="kt_bench_")
    cb_work = []  # seconds spent inside the monitors' on_epoch_end, epochs > 0

    def timed(cb):
        orig = cb.on_epoch_end

        def on_epoch_end(epoch, logs=None):
            t0 = time.perf_counter()
            orig(epoch, logs)
            if epoch > 1:
                cb_work.append((epoch, time.perf_counter() - t0))

        cb.on_epoch_end = on_epoch_end
        return cb

    class Timer(keras.callbacks.Callback):
        def __init__(self, bucket):
            super().__init__()
            self.bucket = bucket

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            # placed LAST in the callback list, so it includes the monitors' work
            if epoch > 1:  # epochs 0-1: tracing and one-time warm-up
                self.bucket.append(time.perf_counter() - self.t0)

    for rnd in range(args.fit_rounds):
        for name in epoch_times:
            keras.utils.set_random_seed(rnd)
            model = tiny_classifier(t, vocab)
            cbs = []
            if name != "no callbacks (baseline)":
                cbs = [
                    timed(
                        AttentionMonitor(logdir, probe, tokens=[str(i) for i in probe[0]], pad_id=0)
                    ),
                    timed(GradientFlow(logdir, (probe, y[:8]))),
                ]
            model.fit(
                ids,
                y,
                batch_size=32,
                epochs=args.epochs,
                verbose=0,
                callbacks=[*cbs, Timer(epoch_times[name])],
            )
            del model
            gc.collect()
    base = statistics.median(epoch_times["no callbacks (baseline)"])
    print(
        f"\n[callbacks] 2-block TransformerBlock classifier, {args.samples} samples/epoch "
        f"(batch 32, T={t}), logging every epoch on a probe batch of 8; median over "
        f"{len(epoch_times['no callbacks (baseline)'])} epochs each, interleaved"
    )
    print(f"{'case':40s} {'epoch s':>9s} {'x baseline':>11s}")
    for name, vals in epoch_times.items():
        m = statistics.median(vals)
        print(f"{name:40s} {m:9.3f} {m / base:11.3f}")
    over = statistics.median(epoch_times["AttentionMonitor + GradientFlow"]) / base - 1
    print(
        f"wall-clock overhead = {100 * over:+.1f}% per epoch (target <= 5%): "
        f"{'PASS' if over <= 0.05 else 'FAIL'} (noisy on a shared machine)"
    )
    n_epochs = len(epoch_times["AttentionMonitor + GradientFlow"])
    work = sum(t for _, t in cb_work) / max(n_epochs, 1)
    print(
        f"time inside the two callbacks = {1e3 * work:.1f} ms per epoch = "
        f"{100 * work / base:.1f}% of a baseline epoch (target <= 5%): "
        f"{'PASS' if work / base <= 0.05 else 'FAIL'}"
    )
    return over


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    p.add_argument("--skip-callbacks", action="store_true", help="only benchmark collect")
    args = p.parse_args(argv)
    args.batch, args.seq_len, args.dim = (4, 32, 64) if args.quick else (8, 64, 128)
    args.rounds, args.inner = (3, 5) if args.quick else (5, 10)
    args.samples, args.epochs, args.fit_rounds = (2048, 5, 1) if args.quick else (6144, 5, 3)
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, CPU threads: {os.cpu_count()}")
    bench_collect(args)
    if not args.skip_callbacks:
        bench_callbacks(args)


if __name__ == "__main__":
    main()
