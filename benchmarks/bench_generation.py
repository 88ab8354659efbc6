"""Tracing generated tokens: all positions in one batched call vs one call per token.

1. Speed. A causal LM (two `TransformerBlock`s, width 64) generates 32
   tokens after a 16-token prompt; every generated token is traced to every
   earlier token with input x gradient and with Integrated Gradients (20
   steps). Compared, in the same process:
   - batched: `GenerationTracer.trace` (all 32 rows along the batch axis of
     one compiled call, chunked by `internal_batch_size`);
   - per token, compiled: the same attribution object called once per
     generated token with that token's target (the loop of Captum's
     `LLMGradientAttribution` and inseq, on kerastrace's own compiled engine);
   - per token, callable target: one call per token with a new `target=`
     callable, as users wrote it before (each one retraces).
   Timed round-robin over rounds; medians; ratio = per-token time / batched.
2. Memory. TF CPU allocator peak of the batched trace for 8, 32 and 64
   generated tokens at `internal_batch_size=8`, one fresh process each: it
   follows the chunk size, not the number of generated tokens.

Usage:
    python benchmarks/bench_generation.py            # full
    python benchmarks/bench_generation.py --quick    # fewer tokens and rounds
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
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402


def build(vocab=96, length=64):
    from kerastrace.testing.reference_models import build_causal_lm

    return build_causal_lm(vocab, length, dim=64, num_heads=4, ff_dim=128, num_layers=2, seed=0)


def per_token(method, lm, prompt, generated, kind, callable_target, n_steps):
    """One attribution call per generated token (what Captum/inseq loops do)."""
    import tensorflow as tf

    from kerastrace.attribution import token_scores

    full = np.concatenate([prompt, generated]).astype(np.int32)
    v = lm.vocab_size
    length = lm.padded_length(len(full) - 1)
    rows = []
    for k, tok in enumerate(generated):
        pos = len(prompt) + k - 1
        ids, mask = lm.batch([full[: pos + 1]], length)
        idx = pos * v + int(tok)
        if callable_target:
            def target(out, i=idx):
                return tf.reshape(out, [tf.shape(out)[0], -1])[:, i]
        else:
            target = idx
        if kind == "ig":
            attr = method.attribute(ids, baselines=np.where(mask, 0, ids), target=target,
                                    n_steps=n_steps)
        else:
            attr = method.attribute(ids, target=target)
        rows.append(token_scores(attr)[0])
    return np.stack(rows)


def bench_speed(quick):
    from kerastrace.attribution import LayerGradientXActivation, LayerIntegratedGradients
    from kerastrace.generation import CausalLM, GenerationTracer, Prompts, generate

    n_new = 8 if quick else 32
    rounds = 3 if quick else 7
    n_steps = 20
    lm = CausalLM(build())
    prompt = np.random.default_rng(0).integers(1, 96, 16).astype(np.int32)
    generated = generate(lm, Prompts([prompt]), n_new)[0]
    print(f"== 1. tracing {n_new} generated tokens after a 16-token prompt "
          f"(IG with {n_steps} steps); medians over {rounds} rounds ==")
    tracers = {
        "ixg": GenerationTracer(lm, "input_x_gradient"),
        "ig": GenerationTracer(lm, "integrated_gradients"),
    }
    loops = {
        "ixg": LayerGradientXActivation(lm.model, lm.token_embedding),
        "ig": LayerIntegratedGradients(lm.model, lm.token_embedding),
    }
    cases = {}
    for kind in ("ixg", "ig"):
        cases[(kind, "batched")] = lambda kind=kind: tracers[kind].trace(
            [prompt], continuation=[generated], n_steps=n_steps, internal_batch_size=64)
        cases[(kind, "per token")] = lambda kind=kind: per_token(
            loops[kind], lm, prompt, generated, kind, False, n_steps)
        cases[(kind, "per token, callable")] = lambda kind=kind: per_token(
            loops[kind], lm, prompt, generated, kind, True, n_steps)
    # the same numbers, batched and per token
    for kind in ("ixg", "ig"):
        batched = cases[(kind, "batched")]().sources[0]
        loop = cases[(kind, "per token")]()
        width = loop.shape[1]
        err = np.abs(batched[:, :width][:, : len(prompt) + n_new - 1] - loop[:, : len(prompt)
                                                                              + n_new - 1]).max()
        print(f"  {kind}: max |batched - per token| = {err:.2e}")
    times = {k: [] for k in cases}
    for r in range(rounds):
        for key, fn in cases.items():
            if key[1] == "per token, callable" and r > 0:
                continue  # it retraces every token: seconds per call; one round is enough
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    print(f"{'method':<22}{'mode':<24}{'median s':>10}{'ratio':>10}")
    for kind, name in (("ixg", "input x gradient"), ("ig", "integrated gradients")):
        base = statistics.median(times[(kind, "batched")])
        for mode in ("batched", "per token", "per token, callable"):
            t = statistics.median(times[(kind, mode)])
            ratio = "" if mode == "batched" else f"{t / base:9.1f}x"
            print(f"{name:<22}{mode:<24}{t:10.3f}{ratio:>10}")
    print("(ratio: per-token time / batched time, same process, round-robin; the callable "
          "variant once, as it retraces for every token; target >= 5x)")


def mem_child(n_new, chunk):
    import tensorflow as tf

    from kerastrace.generation import CausalLM, GenerationTracer

    lm = CausalLM(build())
    rng = np.random.default_rng(0)
    prompt = rng.integers(1, 96, 16).astype(np.int32)
    cont = rng.integers(1, 96, n_new).astype(np.int32)
    tracer = GenerationTracer(lm, "integrated_gradients")
    tracer.trace([prompt], continuation=[cont[:2]], n_steps=20, internal_batch_size=chunk)
    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
    except Exception:  # noqa: BLE001
        pass
    tracer.trace([prompt], continuation=[cont], n_steps=20, internal_batch_size=chunk)
    try:
        peak = tf.config.experimental.get_memory_info("CPU:0")["peak"] / 2**20
    except Exception:  # noqa: BLE001
        peak = float("nan")
    print(json.dumps({"peak_mib": peak}))


def bench_memory(quick):
    print("\n== 2. peak memory of the batched IG trace, internal_batch_size=8, one process each ==")
    print(f"{'generated tokens':>17} {'TF CPU peak MiB':>16}")
    for n_new in (8, 32) if quick else (8, 32, 48):
        out = subprocess.run([sys.executable, __file__, "--_mem-child", str(n_new), "8"],
                             capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": ROOT})
        try:
            res = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{n_new:17d} {res['peak_mib']:16.1f}")
        except Exception:  # noqa: BLE001
            print(f"{n_new:17d}   failed: {out.stderr.strip()[-300:]}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--_mem-child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._mem_child:
        mem_child(*args._mem_child)
        return
    bench_speed(args.quick)
    bench_memory(args.quick)


if __name__ == "__main__":
    main()
