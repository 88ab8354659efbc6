"""Speed of SelfAttention against keras.layers.MultiHeadAttention on JAX / torch.

The measurement of issue #16, as one script: for each Keras backend
installed besides TensorFlow (JAX, torch), each dtype policy (`float32`,
`mixed_bfloat16`) and each shape `(B, T, D, H)`, forward and
forward+backward time of

- `SelfAttention` returning its weights (float32) vs `MultiHeadAttention`
  with `return_attention_scores=True`: column `SA(w)/MHA(s)`;
- the same with `attention_weights_dtype="compute"` (weights in the compute
  dtype): column `SA(w,cd)/MHA(s)`;
- `SelfAttention(return_attention_scores=False)` (the fused path,
  `keras.ops.dot_product_attention`) vs `MultiHeadAttention` without scores
  (which calls the same op): column `SA(no w)/MHA(no s)`.

Each backend runs in its own subprocess (Keras picks its backend once per
process). JAX candidates are `jax.jit`-compiled `stateless_call`s (the
backward is `jax.grad` of `sum(outputs**2)` with respect to the trainable
weights); torch candidates run eagerly (`torch.no_grad()` for the forward,
`torch.autograd.grad` for the backward). Candidates are timed round-robin,
one call of each in turn over many rounds, and ratios are medians of the
per-round ratios, so drift hits every candidate alike. TensorFlow is never
imported (checked at the end): a lent GPU machine has none.

Targets (issue #16), mixed_bfloat16 and T >= 2048: `SA(no w)/MHA(no s)` <= 1.05
(forward and forward+backward), forward `SA(w)/MHA(s)` <= 1.10; float32:
`SA(w)/MHA(s)` <= 1.00 and `SA(no w)/MHA(no s)` <= 1.10. Rows that miss a
target are marked `*`.

Usage:
    python benchmarks/bench_layers_gpu.py                  # every backend installed
    python benchmarks/bench_layers_gpu.py --backend jax    # one backend, in this process
    python benchmarks/bench_layers_gpu.py --quick          # tiny shapes (a CPU check)

On a lent GPU machine (JAX and torch installed, no TensorFlow, no Keras, no
network), carry Keras and its two missing dependencies as wheels. Here, in
the repository root:

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux_2_28_x86_64 \\
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
        -d .whl keras==3.15.1 namex optree

then run with `carry: [".whl"]`:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \\
        --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. \\
        && python3 benchmarks/bench_layers_gpu.py

The default shapes take about 3-5 minutes on an H100/H200 (compilation
included).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the kerastrace checkout, also when not installed

BACKENDS = ("jax", "torch")
POLICIES = ("float32", "mixed_bfloat16")
DEFAULT_SHAPES = ((8, 512, 768, 12), (4, 2048, 1024, 16), (2, 8192, 1024, 16))
QUICK_SHAPES = ((2, 64, 32, 4), (1, 128, 64, 4))
COLUMNS = ("SA(w)/MHA(s)", "SA(w,cd)/MHA(s)", "SA(no w)/MHA(no s)")
PAIRS = {
    "SA(w)/MHA(s)": ("SA(w)", "MHA(s)"),
    "SA(w,cd)/MHA(s)": ("SA(w,cd)", "MHA(s)"),
    "SA(no w)/MHA(no s)": ("SA(no w)", "MHA(no s)"),
}


# ------------------------------------------------------------ candidates
def _layers(policy, d, h):
    import keras

    from kerastrace.layers import SelfAttention

    kd = d // h
    made = {
        "SA(w)": (SelfAttention(h, kd, dtype=policy), {}),
        "SA(w,cd)": (SelfAttention(h, kd, dtype=policy, attention_weights_dtype="compute"), {}),
        "SA(no w)": (SelfAttention(h, kd, dtype=policy, return_attention_scores=False), {}),
        "MHA(s)": (keras.layers.MultiHeadAttention(h, kd, dtype=policy), {"scores": True}),
        "MHA(no s)": (keras.layers.MultiHeadAttention(h, kd, dtype=policy), {"scores": False}),
    }
    return made


def _call(layer, opts, x, call):
    """Call `layer` on `x` (self-attention), through `call(layer, *args, **kwargs)`."""
    if "scores" in opts:
        return call(layer, x, x, return_attention_scores=opts["scores"])
    return call(layer, x)


def _build(layer, opts, shape):
    if "scores" in opts:  # MultiHeadAttention.build(query_shape, value_shape)
        layer.build(shape, shape)
    else:
        layer.build(shape)


def _first(out):
    return out[0] if isinstance(out, (list, tuple)) else out


class JaxRunner:
    """`jax.jit` of `stateless_call` (forward) and of its `jax.grad` (forward+backward)."""

    def __init__(self):
        import jax

        self.jax = jax
        self.device = f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}"

    def input(self, shape):
        import jax.numpy as jnp
        import numpy as np

        return jnp.asarray(np.random.default_rng(0).normal(size=shape).astype("float32"))

    def functions(self, layer, opts, x, shape):
        jax = self.jax
        _build(layer, opts, shape)
        trainable = [v.value for v in layer.trainable_variables]
        frozen = [v.value for v in layer.non_trainable_variables]

        def forward(tv, ntv, x):
            out, _ = _call(
                layer, opts, x, lambda lyr, *a, **k: lyr.stateless_call(tv, ntv, *a, **k)
            )
            return out

        def loss(tv, ntv, x):
            first = _first(forward(tv, ntv, x)).astype("float32")
            return (first * first).sum()

        fwd = jax.jit(forward)
        bwd = jax.jit(jax.grad(loss))
        return (
            lambda: jax.block_until_ready(fwd(trainable, frozen, x)),
            lambda: jax.block_until_ready(bwd(trainable, frozen, x)),
        )


class TorchRunner:
    """Eager torch: forward under `no_grad`, backward with `torch.autograd.grad`."""

    def __init__(self):
        import torch

        self.torch = torch
        self.cuda = torch.cuda.is_available()
        self.device = f"cuda: {torch.cuda.get_device_name()}" if self.cuda else "cpu"

    def _sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def input(self, shape):
        import keras
        import numpy as np

        return keras.ops.convert_to_tensor(
            np.random.default_rng(0).normal(size=shape).astype("float32")
        )

    def functions(self, layer, opts, x, shape):
        torch = self.torch
        _build(layer, opts, shape)
        params = [v.value for v in layer.trainable_variables]

        def fwd():
            with torch.no_grad():
                out = _call(layer, opts, x, lambda lyr, *a, **k: lyr(*a, **k))
            self._sync()
            return out

        def bwd():
            first = _first(_call(layer, opts, x, lambda lyr, *a, **k: lyr(*a, **k))).float()
            grads = torch.autograd.grad((first * first).sum(), params)
            self._sync()
            return grads

        return fwd, bwd


# ---------------------------------------------------------------- timing
def _time_round_robin(fns: dict, rounds: int, inner: int) -> dict:
    import numpy as np

    for f in fns.values():  # compile + warm up
        f()
        f()
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                f()
            samples[k].append((time.perf_counter() - t0) / inner)
    return {k: np.array(v) for k, v in samples.items()}


def _targets(policy, t, mode, ratios) -> bool:
    if policy == "float32":
        return ratios["SA(w)/MHA(s)"] <= 1.00 and ratios["SA(no w)/MHA(no s)"] <= 1.10
    if t < 2048:
        return True
    ok = ratios["SA(no w)/MHA(no s)"] <= 1.05
    if mode == "fwd":
        ok &= ratios["SA(w)/MHA(s)"] <= 1.10
    return ok


def run_backend(backend, shapes, rounds, inner):
    """Measure every candidate on `backend` (this process's Keras backend)."""
    import keras
    import numpy as np

    if keras.backend.backend() != backend:
        raise SystemExit(
            f"KERAS_BACKEND={keras.backend.backend()!r} but --backend={backend!r}: "
            "set KERAS_BACKEND before Keras is imported"
        )
    runner = JaxRunner() if backend == "jax" else TorchRunner()
    print(
        f"backend {backend} ({runner.device}), Keras {keras.__version__}; ratio = "
        f"kerastrace / Keras MHA, median of {rounds} round-robin rounds",
        flush=True,
    )
    head = f"{'policy':<15} {'shape (B,T,D,H)':<20} {'mode':<8}" + "".join(
        f"{c:>20}" for c in COLUMNS
    )
    if max(t for _, t, _, _ in shapes) < 2048:
        print("(short sequences: a smoke test of the script, not the issue's measurement)")
    print(head, flush=True)
    all_ok = True
    for policy in POLICIES:
        for b, t, d, h in shapes:
            shape = (b, t, d)
            x = runner.input(shape)
            fwd, bwd = {}, {}
            for name, (layer, opts) in _layers(policy, d, h).items():
                fwd[name], bwd[name] = runner.functions(layer, opts, x, shape)
            medians = {}
            for mode, fns in (("fwd", fwd), ("fwd+bwd", bwd)):
                s = _time_round_robin(fns, rounds, inner)
                ratios = {c: float(np.median(s[a] / s[bb])) for c, (a, bb) in PAIRS.items()}
                ok = _targets(policy, t, mode, ratios)
                all_ok &= ok
                cells = "".join(f"{ratios[c]:>20.3f}" for c in COLUMNS)
                mark = "" if ok else "  *"
                print(f"{policy:<15} {str((b, t, d, h)):<20} {mode:<8}{cells}{mark}", flush=True)
                medians[mode] = {k: 1e3 * float(np.median(v)) for k, v in s.items()}
            times = ", ".join(f"{k}={v:.3f}" for k, v in medians["fwd"].items())
            print(f"    fwd medians (ms): {times}", flush=True)
            del fwd, bwd, x
    print("targets met" if all_ok else "targets NOT met (rows marked *)", flush=True)
    leaked = "tensorflow" in sys.modules
    print(f"tensorflow imported: {leaked}", flush=True)
    if leaked:
        raise SystemExit("TensorFlow was imported during a JAX/torch benchmark")
    return all_ok


# ------------------------------------------------------------------ main
def _spawn(backend, argv):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--backend", backend, *argv]
    return subprocess.run(cmd, env=env, check=False).returncode


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=BACKENDS, help="one backend, in this process")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few rounds")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds")
    parser.add_argument(
        "--shapes", default=None, help='e.g. "4,2048,1024,16;2,8192,1024,16" (B,T,D,H)'
    )
    args = parser.parse_args(argv)
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";")]
    else:
        shapes = QUICK_SHAPES if args.quick else DEFAULT_SHAPES
    rounds = args.rounds or (3 if args.quick else 10)
    inner = 1 if args.quick else 3
    if args.backend:
        os.environ.setdefault("KERAS_BACKEND", args.backend)
        run_backend(args.backend, shapes, rounds, inner)  # ratios are reported, not enforced
        return 0
    installed = [b for b in BACKENDS if importlib.util.find_spec(b) is not None]
    if not installed:
        raise SystemExit("neither jax nor torch is installed")
    codes = [_spawn(b, argv) for b in installed]
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
