"""Profile a `keras.applications` model (built with `weights=None`) and print the table.

Example:
    python scripts/profile_keras_application.py --model MobileNetV2 --top-k 15 --sort-by flops
"""

import argparse
import os

# Keep TensorFlow's C++ start-up lines off stderr, as the `kerastrace` command does
# (a value the user set is kept).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="MobileNetV2", help="keras.applications class name")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--depth", type=int, default=None, help="fold layers below this depth")
    parser.add_argument("--sort-by", default=None, help="flops, time, params, self_time, ...")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--logdir", default=None,
                        help="where the tf.profiler trace goes (default: a new temporary "
                        "directory, kerastrace_profile_*, printed with the table)")
    parser.add_argument("--no-trace", action="store_true", help="FLOPs/params only")
    parser.add_argument("--format", choices=["table", "json", "csv"], default="table")
    args = parser.parse_args(argv)

    from kerastrace.cli import import_tensorflow_quietly

    import_tensorflow_quietly()  # before anything imports TensorFlow

    import keras

    from kerastrace.profiling import profile_model

    builder = getattr(keras.applications, args.model, None)
    if builder is None:
        parser.error(f"keras.applications has no model {args.model!r}")
    model = builder(weights=None)
    profile = profile_model(
        model,
        batch_size=args.batch_size,
        depth=args.depth,
        trace=not args.no_trace,
        logdir=args.logdir,
    )
    if args.format == "json":
        print(profile.to_json())
    elif args.format == "csv":
        print(profile.to_csv(), end="")
    else:
        print(profile.to_table(sort_by=args.sort_by, top_k=args.top_k))


if __name__ == "__main__":
    main()
