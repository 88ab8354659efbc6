"""The `kerastrace` command line: a thin layer over the public API.

`kerastrace --help` is instant: TensorFlow is imported only when a
subcommand runs. Errors print one line on stderr and exit with status 2
(bad input) or 1 (failure); `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

EXIT_USAGE = 2
EXIT_FAILURE = 1


def _demo(args) -> int:
    from kerastrace.demo import run_demo

    result = run_demo(
        output_dir=args.output_dir,
        n_train=args.n_train,
        n_test=args.n_test,
        epochs=args.epochs,
        seed=args.seed,
        verbose=0 if args.quiet else 1,
    )
    print(result.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kerastrace",
        description="See inside Keras models: attention, attribution, profiling.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="train a small text transformer on generated data and show where it attends",
        description="Train the built-in demo classifier (generated data, no download) and "
        "write a run directory.",
    )
    demo.add_argument("--output-dir", default="runs/demo", help="run directory (runs/demo)")
    demo.add_argument("--n-train", type=int, default=3000, help="training sentences (3000)")
    demo.add_argument("--n-test", type=int, default=500, help="test sentences (500)")
    demo.add_argument("--epochs", type=int, default=4, help="training epochs (4)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (0)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(func=_demo)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        if args.debug:
            raise
        print(f"kerastrace {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - one clear line, traceback with --debug
        if args.debug:
            raise
        print(f"kerastrace {args.command}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
