"""Benchmark exact attention flow: the batched Dinic solver vs one Edmonds-Karp run per pair.

`attention_flow` (default `method="maxflow"`) solves the `T^2` max-flow
problems of an example in batches with one vectorized Dinic solver; the old
implementation (kept as `method="reference"`) runs Edmonds-Karp once per
(output, input) pair on the full layered graph. Both are measured in this
run, on the same attention maps: 6 layers, T=64, 8 heads, one example (the
case that took 257 s for a user), for a bidirectional and a causal model.

The old solver needs minutes for all 4,096 pairs, so by default it is timed
on `--pairs` pairs drawn at random and its per-pair time is scaled to
the 4,096 pairs (the values of those pairs are compared with the new solver's
too); `--full` times it on every pair. The new solver always runs the whole
example through the public `attention_flow`.

The maps are softmax(z) of Gaussian logits z ~ N(0, scale^2) per head, so
each head's weights are peaked the way trained attention is (scale 2: the
largest weight of a row is ~0.2 of 64), not the near-uniform maps of an
untrained model.

Run: `python benchmarks/bench_attention_flow.py [--pairs 256] [--full] [--quick]`.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from kerastrace.attention import _analysis, _flow, attention_flow  # noqa: E402


def attention_maps(layers, heads, t, scale, causal, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(layers):
        z = rng.normal(size=(1, heads, t, t)) * scale
        if causal:
            z = np.where(np.tril(np.ones((t, t), bool)), z, -np.inf)
        e = np.exp(z - z.max(-1, keepdims=True))
        out.append(e / e.sum(-1, keepdims=True))
    return out


def new_flows(weights):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the "this takes a while" warning
        return attention_flow(weights, verbose=0)


def bench(name, weights, args):
    t = weights[0].shape[-1]
    # the graph attention_flow builds (head fusion, residual, normalization), unnormalized
    _, mats, _ = _analysis._residual_matrices(weights, "mean", True, None)
    mats = [a[0] for a in mats]

    start = time.perf_counter()
    new = new_flows(weights)[0]
    new_s = time.perf_counter() - start

    n_pairs = t * t
    if args.full:
        pick = np.arange(n_pairs)
    else:
        # a random sample: strided pairs would sit on a few diagonals of the matrix
        rng = np.random.default_rng(1)
        pick = np.sort(rng.choice(n_pairs, min(args.pairs, n_pairs), replace=False))
    sources, sinks = np.divmod(pick, t)
    start = time.perf_counter()
    old_raw = _analysis._reference_flows(mats, sources, sinks)
    old_sampled = time.perf_counter() - start
    old_s = old_sampled / pick.size * n_pairs

    # same values: the raw (float64) flows of the sampled pairs must agree to rounding;
    # with --full also the normalized float32 matrix attention_flow returns
    new_raw = _flow.max_flows(mats, sources, sinks)
    err = float(np.abs(new_raw - old_raw).max())
    ok = err < 1e-9
    how = "all pairs" if args.full else f"{pick.size} sampled pairs, scaled to {n_pairs}"
    print(f"\n[{name}] 6 layers, T={t}, 8 heads, 1 example ({n_pairs} max-flow problems)")
    print(f"  old  Edmonds-Karp per pair ({how}): {old_s:8.1f} s")
    print(f"  new  attention_flow(method='maxflow'):        {new_s:8.2f} s")
    print(f"  ratio old / new: {old_s / new_s:.1f}x   max |difference| of the flows {err:.1e}")
    if args.full:
        old = old_raw.reshape(t, t)
        old = (old / old.sum(-1, keepdims=True)).astype(np.float32)
        out_err = float(np.abs(old - new).max())
        ok = ok and out_err < 1e-6
        print(f"  max |difference| of attention_flow's float32 output: {out_err:.1e}")
    return old_s / new_s, err, ok


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=256, help="pairs the old solver runs")
    parser.add_argument("--full", action="store_true", help="old solver on all pairs (minutes)")
    parser.add_argument("--quick", action="store_true", help="T=32 instead of 64")
    parser.add_argument("--scale", type=float, default=2.0, help="std of the attention logits")
    args = parser.parse_args(argv)
    t = 32 if args.quick else 64
    results = {}
    for name, causal in (("bidirectional", False), ("causal", True)):
        weights = attention_maps(6, 8, t, args.scale, causal)
        results[name] = bench(name, weights, args)
    worst = max(err for _, err, _ in results.values())
    passed = all(ok for _, _, ok in results.values())
    print(
        "\nratio old / new: "
        + ", ".join(f"{name} {ratio:.1f}x" for name, (ratio, _, _) in results.items())
        + f"; flows agree to {worst:.1e}: {'PASS' if passed else 'FAIL'}"
    )
    return results


if __name__ == "__main__":
    main()
