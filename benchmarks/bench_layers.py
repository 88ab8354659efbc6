"""Speed of kerastrace's attention layers against keras.layers.MultiHeadAttention.

Measures forward and forward+backward time of

- `SelfAttention` (attention weights returned) vs Keras `MultiHeadAttention`
  with `return_attention_scores=True` (target ratio <= 1.0) and without it
  (target ratio <= 1.10);
- `SelfAttention(return_attention_scores=False)` (its fused path,
  `keras.ops.dot_product_attention`) vs `MultiHeadAttention` without scores
  (target ratio <= 1.10);
- `TransformerBlock` (weights returned, and without weights) vs the same
  block built from Keras `MultiHeadAttention` + `Dense` +
  `LayerNormalization` (keras-hub's encoder recipe), with and without scores.

`benchmarks/bench_layers_gpu.py` measures the same layers under the JAX and
torch backends (on a GPU: flash attention).

All candidates run in one process, each wrapped in a `tf.function`, and are
timed round-robin (one call of each in turn, many rounds), so drift on a
noisy machine hits every candidate alike. Ratios are medians over rounds.

Usage:
    python benchmarks/bench_layers.py            # both shapes of the issue
    python benchmarks/bench_layers.py --quick    # small shapes, few rounds
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kerastrace.layers import SelfAttention, TransformerBlock  # noqa: E402


class KerasBlock(keras.layers.Layer):
    """Post-norm encoder block from stock Keras layers (the baseline)."""

    def __init__(self, num_heads, ff_dim, return_scores, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.ff_dim, self.return_scores = num_heads, ff_dim, return_scores

    def build(self, shape):
        d = shape[-1]
        self.mha = keras.layers.MultiHeadAttention(self.num_heads, d // self.num_heads)
        self.mha.build(shape, shape)
        self.n1 = keras.layers.LayerNormalization(epsilon=1e-5)
        self.n2 = keras.layers.LayerNormalization(epsilon=1e-5)
        self.f1 = keras.layers.Dense(self.ff_dim, activation="relu")
        self.f2 = keras.layers.Dense(d)
        for layer in (self.n1, self.n2, self.f1):
            layer.build(shape)
        self.f2.build((*shape[:-1], self.ff_dim))

    def call(self, x):
        if self.return_scores:
            a, w = self.mha(x, x, return_attention_scores=True)
        else:
            a, w = self.mha(x, x), None
        x = self.n1(x + a)
        x = self.n2(x + self.f2(self.f1(x)))
        return (x, w) if self.return_scores else x


def _fns(layer, x, call):
    """tf.functions for forward and forward+backward of `layer` on `x`."""

    @tf.function
    def fwd():
        return call(layer, x)

    @tf.function
    def fwd_bwd():
        with tf.GradientTape() as tape:
            out = call(layer, x)
            first = out[0] if isinstance(out, (list, tuple)) else out
            loss = tf.reduce_sum(first * first)
        return tape.gradient(loss, layer.trainable_variables)

    return fwd, fwd_bwd


def _time_round_robin(fns: dict, rounds: int, inner: int) -> dict:
    for f in fns.values():  # trace + warm up
        for _ in range(2):
            tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, f())
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                out = f()
            tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, out)
            samples[k].append((time.perf_counter() - t0) / inner)
    return {k: np.array(v) for k, v in samples.items()}


def bench_shape(b, t, d, h, rounds, inner, ff_mult=4):
    x = tf.constant(np.random.default_rng(0).normal(size=(b, t, d)).astype("float32"))
    mha = keras.layers.MultiHeadAttention(h, d // h)
    mha.build(x.shape, x.shape)
    ours = SelfAttention.from_keras(mha)
    ours_nw = SelfAttention.from_keras(mha, return_attention_scores=False)
    blk = TransformerBlock(h, ff_mult * d)
    blk.build(x.shape)
    blk_nw = TransformerBlock(h, ff_mult * d, return_attention_scores=False)
    blk_nw.build(x.shape)
    kblk_s = KerasBlock(h, ff_mult * d, return_scores=True)
    kblk_s.build(x.shape)
    kblk_n = KerasBlock(h, ff_mult * d, return_scores=False)
    kblk_n.build(x.shape)
    candidates = {
        "SelfAttention(weights)": (ours, lambda lyr, x: lyr(x)),
        "MHA(scores)": (mha, lambda lyr, x: lyr(x, x, return_attention_scores=True)),
        "MHA(no scores)": (mha, lambda lyr, x: lyr(x, x)),
        "SelfAttention(no weights)": (ours_nw, lambda lyr, x: lyr(x)),
        "TransformerBlock(weights)": (blk, lambda lyr, x: lyr(x)),
        "TransformerBlock(no weights)": (blk_nw, lambda lyr, x: lyr(x)),
        "KerasBlock(scores)": (kblk_s, lambda lyr, x: lyr(x)),
        "KerasBlock(no scores)": (kblk_n, lambda lyr, x: lyr(x)),
    }
    fwd, bwd = {}, {}
    for name, (layer, call) in candidates.items():
        fwd[name], bwd[name] = _fns(layer, x, call)
    results = {}
    for mode, fns in (("fwd", fwd), ("fwd+bwd", bwd)):
        s = _time_round_robin(fns, rounds, inner)
        med = {k: float(np.median(v)) for k, v in s.items()}

        def ratio(a, b, s=s):
            return float(np.median(s[a] / s[b]))

        results[mode] = {
            "times_ms": {k: 1e3 * v for k, v in med.items()},
            "SA/MHA(scores)": ratio("SelfAttention(weights)", "MHA(scores)"),
            "SA/MHA(no scores)": ratio("SelfAttention(weights)", "MHA(no scores)"),
            "SA(no w)/MHA(no scores)": ratio("SelfAttention(no weights)", "MHA(no scores)"),
            "Block/KerasBlock(scores)": ratio("TransformerBlock(weights)", "KerasBlock(scores)"),
            "Block/KerasBlock(no scores)": ratio(
                "TransformerBlock(weights)", "KerasBlock(no scores)"
            ),
            "Block(no w)/KerasBlock(no scores)": ratio(
                "TransformerBlock(no weights)", "KerasBlock(no scores)"
            ),
        }
    return results


def main(argv=None):
    # Each candidate gets its own tf.function on purpose; TF's retracing notice is noise here.
    tf.get_logger().setLevel("ERROR")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, few rounds")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds")
    args = parser.parse_args(argv)
    if args.quick:
        shapes = [(4, 64, 128, 4)]
        rounds, inner = args.rounds or 5, 3
    else:
        shapes = [(8, 128, 256, 4), (2, 512, 768, 12)]
        rounds, inner = args.rounds or 15, 3
    print(
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPU cores; "
        f"ratio = kerastrace / baseline (median of {rounds} round-robin rounds); targets: "
        "SA/MHA(scores) <= 1.00, SA/MHA(no scores) <= 1.10, SA(no w)/MHA(no scores) <= 1.10"
    )
    columns = [
        ("SA/MHA(scores)", "SA/MHA(scores)"),
        ("SA/MHA(no scores)", "SA/MHA(no s)"),
        ("SA(no w)/MHA(no scores)", "SA(no w)/MHA(no s)"),
        ("Block/KerasBlock(scores)", "Block/KBlock(s)"),
        ("Block/KerasBlock(no scores)", "Block/KBlock(no s)"),
        ("Block(no w)/KerasBlock(no scores)", "Block(no w)/KBlock(no s)"),
    ]
    print(
        f"{'shape (B,T,D,H)':<20} {'mode':<8}" + "".join(f"{c:>{len(c) + 2}}" for _, c in columns)
    )
    all_ok = True
    for b, t, d, h in shapes:
        res = bench_shape(b, t, d, h, rounds, inner)
        for mode, r in res.items():
            cells = "".join(f"{r[k]:>{len(c) + 2}.3f}" for k, c in columns)
            print(f"{str((b, t, d, h)):<20} {mode:<8}{cells}")
            all_ok &= (
                r["SA/MHA(scores)"] <= 1.0
                and r["SA/MHA(no scores)"] <= 1.10
                and r["SA(no w)/MHA(no scores)"] <= 1.10
            )
        times = ", ".join(f"{k}={v:.2f}ms" for k, v in res["fwd"]["times_ms"].items())
        print(f"  fwd medians: {times}")
    print("targets met" if all_ok else "targets NOT met")


if __name__ == "__main__":
    main()
