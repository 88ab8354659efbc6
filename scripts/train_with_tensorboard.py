"""Train a tiny TransformerBlock classifier with kerastrace's TensorBoard callbacks.

Generates a toy task (is token 7 in the sequence?), trains for a few epochs with
`AttentionMonitor`, `AttributionMonitor`, `GradientFlow` and `ProfileCallback`,
writes a head-statistics chart, and prints the command that opens the results.

Example:
    python scripts/train_with_tensorboard.py --logdir /tmp/kerastrace_logs --epochs 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

# Keep TensorFlow's C++ start-up lines off stderr, as the `kerastrace` command does
# (a value the user set is kept).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build_model(seq_len: int, vocab: int, dim: int, seed: int):
    import keras

    from kerastrace.layers import TransformerBlock

    keras.utils.set_random_seed(seed)
    inp = keras.Input((seq_len,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(vocab, dim, mask_zero=True, name="embedding")(inp)
    x, _ = TransformerBlock(num_heads=2, ff_dim=2 * dim, name="block_0")(x)
    x, _ = TransformerBlock(num_heads=2, ff_dim=2 * dim, name="block_1")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    out = keras.layers.Dense(2, name="classifier")(x)
    model = keras.Model(inp, out, name="tiny_transformer")
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def make_data(n: int, seq_len: int, vocab: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(2, vocab, size=(n, seq_len)).astype("int32")
    lengths = rng.integers(seq_len // 2, seq_len + 1, size=n)
    for i, length in enumerate(lengths):
        ids[i, length:] = 0  # padding
    ids[:, 0] = 1  # a [CLS]-like token
    y = (ids == 7).any(axis=1).astype("int32")
    return ids, y


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default=None,
                        help="log directory (default: a new temporary directory, "
                        "kerastrace_tb_*, printed at the end)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--seq-len", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-profile", action="store_true", help="skip the profiler trace")
    args = parser.parse_args(argv)

    from kerastrace.cli import import_tensorflow_quietly

    import_tensorflow_quietly()  # before anything imports TensorFlow

    from kerastrace.attention import collect, head_statistics
    from kerastrace.tensorboard import (
        AttentionMonitor,
        AttributionMonitor,
        GradientFlow,
        ProfileCallback,
        write_head_statistics,
    )

    vocab, dim = 32, 16
    logdir = args.logdir or tempfile.mkdtemp(prefix="kerastrace_tb_")
    ids, y = make_data(args.samples, args.seq_len, vocab, args.seed)
    probe, probe_y = ids[:4], y[:4]
    tokens = [
        ["[CLS]" if t == 1 else ("[PAD]" if t == 0 else f"w{t}") for t in row] for row in probe
    ]
    model = build_model(args.seq_len, vocab, dim, args.seed)
    callbacks = [
        AttentionMonitor(logdir, probe, tokens=tokens, pad_id=0, special=[0]),
        AttributionMonitor(logdir, probe, top_k=3, tokens=tokens, pad_id=0),
        GradientFlow(logdir, (probe, probe_y)),
    ]
    if not args.no_profile:
        callbacks.append(ProfileCallback(logdir, batches=(2, 4)))
    model.fit(ids, y, batch_size=32, epochs=args.epochs, verbose=2, callbacks=callbacks)
    stats = head_statistics(collect(model, probe), mask=probe != 0, special=[0])
    write_head_statistics(logdir, stats, step=args.epochs, prefix="final_heads", image=True)
    failures = sum(getattr(cb, "failures", 0) for cb in callbacks)
    print(f"callback failures: {failures}")
    print(f"Open the results with:\n  tensorboard --logdir {logdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
