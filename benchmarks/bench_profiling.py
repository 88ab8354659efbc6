"""Profiling overhead of `kerastrace.profiling.profile_model`.

Compares, in one process:
  * the full per-layer profile (FLOPs + params + memory + traced time) against the
    classic single-total FLOPs recipe (`tf.compat.v1.profiler` float_operation over a
    frozen concrete function) - target <= 3x;
  * the step time with and without a `tf.profiler` trace running - target <= 10%.

Models: a 12-layer BERT-base-shaped stack of `kerastrace.layers.TransformerBlock`
(D=768, H=12, ff=3072, T=128, batch 1) and `keras.applications.ResNet50(weights=None)`.
`--quick` uses a 2-layer D=256 stack and MobileNetV2.
"""

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def classic_total_flops(model, shape):
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    fn = tf.function(lambda x: model(x, training=False))
    frozen = convert_variables_to_constants_v2(fn.get_concrete_function(tf.TensorSpec(shape)))
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    with contextlib.redirect_stdout(io.StringIO()):
        return tf.compat.v1.profiler.profile(frozen.graph, options=opts).total_float_ops


def bert_like(layers, dim, heads, ff, seq):
    import keras

    from kerastrace.layers import TransformerBlock

    x = inp = keras.Input((seq, dim))
    for i in range(layers):
        x = TransformerBlock(heads, ff, return_attention_scores=False, name=f"layer_{i}")(x)
    return keras.Model(inp, x, name=f"bert_{layers}x{dim}")


def step_overhead(model, shape, steps):
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False))
    x = tf.random.normal(shape)
    for _ in range(3):
        fn(x).numpy()

    def timed():
        t = time.perf_counter()
        fn(x).numpy()
        return time.perf_counter() - t

    plain, traced = [], []
    logdir = tempfile.mkdtemp(prefix="bench_profiling_")
    for _ in range(2):  # alternate blocks of steps to cancel drift on a shared machine
        plain += [timed() for _ in range(steps)]
        tf.profiler.experimental.start(logdir)
        traced += [timed() for _ in range(steps)]
        tf.profiler.experimental.stop()
    return statistics.median(plain), statistics.median(traced)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small models, fewer repeats")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 3)

    import keras
    import tensorflow as tf

    from kerastrace.profiling import profile_model

    if args.quick:
        cases = [
            ("TransformerBlock x2 D=256 T=128", lambda: bert_like(2, 256, 4, 1024, 128),
             (1, 128, 256)),
            ("MobileNetV2 224", lambda: keras.applications.MobileNetV2(weights=None),
             (1, 224, 224, 3)),
        ]  # fmt: skip
    else:
        cases = [
            ("BERT-base 12x TransformerBlock T=128", lambda: bert_like(12, 768, 12, 3072, 128),
             (1, 128, 768)),
            ("ResNet50 224", lambda: keras.applications.ResNet50(weights=None),
             (1, 224, 224, 3)),
        ]  # fmt: skip
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, repeats={repeats}")
    print(f"{'model':40s} {'classic s':>10s} {'profile s':>10s} {'ratio':>6s} "
          f"{'FLOPs equal':>11s} {'assigned':>9s} {'trace overhead':>15s}")  # fmt: skip
    for name, build, shape in cases:
        model = build()
        model(tf.zeros(shape))
        classic_t, prof_t = [], []
        for _ in range(repeats):  # interleaved, medians
            t = time.perf_counter()
            total = classic_total_flops(model, shape)
            classic_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            profile = profile_model(model, logdir=tempfile.mkdtemp(prefix="bench_prof_"))
            prof_t.append(time.perf_counter() - t)
        c, p = statistics.median(classic_t), statistics.median(prof_t)
        # our total adds ops the TF registry does not count (activations, Einsum)
        extra = sum(profile.counted_by_kerastrace.values())
        plain, traced = step_overhead(model, shape, 5 if args.quick else 10)
        print(
            f"{name:40s} {c:10.2f} {p:10.2f} {p / c:5.2f}x "
            f"{'%.4f' % (profile.total_flops / total):>11s} "
            f"{100 * profile.assigned_time_share:8.1f}% "
            f"{100 * (traced / plain - 1):+14.1f}%"
        )
        print(f"{'':40s} total {profile.total_macs / 1e9:.3f} GMACs, {extra} ops counted by "
              f"kerastrace, uncounted {profile.uncounted_ops or 'none'}")  # fmt: skip
    print("ratio = profile_model (per-layer FLOPs + params + memory + traced time) / classic "
          "single-total FLOPs recipe; target <= 3x.")  # fmt: skip
    print("trace overhead = median step time with tf.profiler tracing / without - 1; "
          "target <= 10%.")  # fmt: skip


if __name__ == "__main__":
    main()
