"""Checks of every subcommand's arguments, run before TensorFlow is imported and before
anything is written: numbers in range, input files that exist, output paths that can
be directories. Each failure is one `ValueError` naming the flag and echoing the value.
"""

from __future__ import annotations

import os


def invalid(flag: str, expected: str, value) -> ValueError:
    return ValueError(
        f"Received an invalid value for argument `{flag}`, expected {expected}. "
        f"Received: {flag}={value!r}"
    )


def positive(args, attr: str, flag: str) -> None:
    value = getattr(args, attr, None)
    if value is not None and value < 1:
        raise invalid(flag, "a positive integer", value)


def non_negative(args, attr: str, flag: str) -> None:
    value = getattr(args, attr, None)
    if value is not None and value < 0:
        raise invalid(flag, "a non-negative integer", value)


def input_file(path, flag: str) -> None:
    """An input that must be an existing file (a directory is refused too)."""
    if path is None:
        return
    if os.path.isdir(path):
        raise invalid(flag, "a file, not a directory", path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{flag}: no such file: {path}")


def output_dir(path, flag: str) -> None:
    """An output directory: absent (created later) or a directory; never a file."""
    if path is None:
        return
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise invalid(flag, "a directory (it is a file)", path)
        if not os.access(path, os.W_OK | os.X_OK):
            raise invalid(flag, "a writable directory (permission denied)", path)
        return
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise invalid(flag, f"a directory path ({parent!r} is a file)", path)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise invalid(flag, f"a path that can be created ({parent!r} is not writable)", path)


def _model_files(args) -> None:
    input_file(getattr(args, "model", None), "MODEL")
    for path in getattr(args, "custom_objects", None) or []:
        input_file(path, "--custom-objects")


def _text_inputs(args) -> None:
    for attr, flag in (("vocab", "--vocab"), ("text_file", "--text-file"), ("npy", "--npy"),
                       ("train_file", "--train-file")):  # fmt: skip
        input_file(getattr(args, attr, None), flag)
    if getattr(args, "sequence_length", None) is not None and args.sequence_length < 2:
        raise invalid("--sequence-length", "an integer >= 2 (room for [CLS] and [SEP])",
                      args.sequence_length)  # fmt: skip


def check_demo(args) -> None:
    for attr, flag in (("n_train", "--n-train"), ("n_test", "--n-test"), ("epochs", "--epochs"),
                       ("lm_n_train", "--lm-n-train"), ("lm_n_test", "--lm-n-test")):  # fmt: skip
        positive(args, attr, flag)
    non_negative(args, "seed", "--seed")
    output_dir(args.output_dir, "--output-dir")


def check_profile(args) -> None:
    positive(args, "batch_size", "--batch-size")
    non_negative(args, "depth", "--depth")
    positive(args, "top_k", "--top-k")
    _model_files(args)
    output_dir(args.logdir, "--logdir")


def check_explain(args) -> None:
    positive(args, "steps", "--steps")
    non_negative(args, "target", "--target")
    _model_files(args)
    _text_inputs(args)
    output_dir(args.output_dir, "--output-dir")
    output_dir(args.logdir, "--logdir")


def check_attention(args) -> None:
    non_negative(args, "head", "--head")
    _model_files(args)
    _text_inputs(args)
    output_dir(args.output_dir, "--output-dir")
    output_dir(args.logdir, "--logdir")


def check_neighbors(args) -> None:
    positive(args, "k", "-k")
    _model_files(args)
    _text_inputs(args)


def check_influence(args) -> None:
    positive(args, "k", "-k")
    positive(args, "projection_dim", "--projection-dim")
    for rate in args.learning_rate or []:
        if not rate > 0:
            raise invalid("--learning-rate", "a positive number", rate)
    if not os.path.exists(args.checkpoints):
        raise FileNotFoundError(f"--checkpoints: no such file or directory: {args.checkpoints}")
    _model_files(args)
    _text_inputs(args)
    output_dir(args.index_dir, "--index-dir")


def check_generate(args) -> None:
    positive(args, "max_new_tokens", "--max-new-tokens")
    non_negative(args, "seed", "--seed")
    _model_files(args)
    input_file(args.vocab, "--vocab")
    output_dir(args.output_dir, "--output-dir")
    output_dir(args.logdir, "--logdir")


def check_lens(args) -> None:
    positive(args, "top_k", "--top-k")
    _model_files(args)
    input_file(args.vocab, "--vocab")
    output_dir(args.output_dir, "--output-dir")


CHECKS = {
    "demo": check_demo,
    "profile": check_profile,
    "explain": check_explain,
    "attention": check_attention,
    "neighbors": check_neighbors,
    "influence": check_influence,
    "generate": check_generate,
    "lens": check_lens,
}
