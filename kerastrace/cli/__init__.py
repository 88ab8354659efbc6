"""The `kerastrace` command line: a thin layer over the public API.

`kerastrace --help` is instant: TensorFlow is imported only when a
subcommand runs. Every subcommand checks all its arguments (numbers, input
files, output paths) before it writes anything, and writes each output file
atomically (a temporary file renamed into place: a file is whole or absent).
Errors print one line on stderr, `kerastrace <command>: error: ...`, naming
the flag and echoing the value, and exit with status 2 (bad input, unusable
files or directories, a missing optional dependency); an unexpected internal
failure prints one line too and exits with status 1. `--debug`, accepted
anywhere on the command line (`kerastrace explain ... --debug`), shows the
full traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

EXIT_USAGE = 2
EXIT_FAILURE = 1


def _demo(args) -> int:
    both = args.task == "all"
    result = None
    if args.task in ("classifier", "all"):
        from kerastrace.demo import run_demo

        result = run_demo(
            output_dir=args.output_dir,
            n_train=args.n_train,
            n_test=args.n_test,
            epochs=args.epochs,
            seed=args.seed,
            verbose=0 if args.quiet else 1,
        )
        print(result.summary(dashboard=not both))
    if args.task in ("lm", "all"):
        from kerastrace.demo_lm import run_lm_demo

        lm = run_lm_demo(
            output_dir=args.output_dir,
            n_train=args.lm_n_train,
            n_test=args.lm_n_test,
            seed=args.seed,
            verbose=0 if args.quiet else 2,
        )
        print(lm.summary(dashboard=not both))
    if both and result is not None and result.tensorboard_logdir:
        # One dashboard for both demos: the offline file again, now with the
        # language model's generation view, and one command to open it.
        from kerastrace.apps.demo import dashboard_lines
        from kerastrace.tensorboard import dashboard_html

        dashboard_html(result.tensorboard_logdir, os.path.join(args.output_dir, "dashboard.html"),
                       title="kerastrace demo dashboard")
        print("\n".join(dashboard_lines(
            result.tensorboard_logdir,
            "attention, attributions, generation, profile and gradient flow, interactively")))
    return 0


SORT_KEYS = ("path", "flops", "self_flops", "macs", "self_macs", "elementwise_flops", "params",
             "self_params", "output_bytes", "time", "time_ms")  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`kerastrace: error: ...`) and exit status 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _SubParser(_Parser):
    """A subcommand's parser: lists `--debug` in its help (`main` takes it from anywhere)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help="show tracebacks on errors")


def _cmd(name):
    def run(args):
        from kerastrace.cli import _commands

        return getattr(_commands, name)(args)

    return run


def _loading_options(p):
    """Options of every subcommand that loads a saved model."""
    p.add_argument("--custom-objects", "--import", dest="custom_objects", action="append",
                   default=[], metavar="FILE.py",
                   help="a Python file imported before the model is loaded (its "
                   "@keras.saving.register_keras_serializable classes register themselves; a "
                   "CUSTOM_OBJECTS dict in it is passed to keras.saving.load_model); repeatable")
    p.add_argument("--unsafe", action="store_true",
                   help="allow unsafe deserialization (Lambda layers); only for trusted files")
    # the same flag under the other spelling it once had (scripts/explain_demo_model.py)
    p.add_argument("--unsafe-deserialization", dest="unsafe", action="store_true",
                   help=argparse.SUPPRESS)


def _sequence_length_option(p):
    p.add_argument("--sequence-length", type=int, default=None, metavar="N",
                   help="tokens per text for --text/--text-file (default: the model's fixed "
                   "input length; for models that take any length, such as keras-hub ones, "
                   "128, capped at the backbone's max_sequence_length)")


def _model_inputs(p):
    p.add_argument("model", metavar="MODEL", help="a saved .keras model")
    p.add_argument("--vocab", help="vocab.txt for --text/--text-file (one token per line; at "
                   "most as many tokens as the model's token embedding has rows)")
    p.add_argument("--text", action="append", help="a sentence (repeatable)")
    p.add_argument("--text-file", help="a file with one sentence per line")
    p.add_argument("--npy", help="an .npy array of token ids instead of text (0 is padding)")
    _sequence_length_option(p)
    p.add_argument("--output-dir", default="kerastrace_out",
                   help="where to write files (default: %(default)s)")
    p.add_argument("--logdir", help="also write TensorBoard summaries here (default: none)")
    _loading_options(p)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kerastrace",
        description="See inside Keras models: attention, attribution, profiling.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks on errors (accepted anywhere on the line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_SubParser)

    demo = sub.add_parser(
        "demo",
        help="train a small text transformer on generated data and show where it attends",
        description="Train the built-in demo classifier (generated data, no download) and "
        "write a run directory.",
    )
    demo.add_argument("--output-dir", default="runs/demo",
                      help="run directory (default: %(default)s; the language-model demo "
                      "writes OUTPUT_DIR/lm)")
    demo.add_argument("--n-train", type=int, default=3000, help="training sentences (3000)")
    demo.add_argument("--n-test", type=int, default=500, help="test sentences (500)")
    demo.add_argument("--epochs", type=int, default=4, help="training epochs (4)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (0)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.add_argument("--task", choices=("all", "classifier", "lm"), default="all",
                      help="classifier: the text classifier; lm: the causal language model "
                      "on key-value recall (written to OUTPUT_DIR/lm); all (default): both")
    demo.add_argument("--lm-n-train", type=int, default=8000,
                      help="training prompts of the language-model demo (8000)")
    demo.add_argument("--lm-n-test", type=int, default=100,
                      help="test prompts the language-model demo traces (100)")
    demo.set_defaults(func=_demo)

    prof = sub.add_parser(
        "profile",
        help="per-layer parameters, FLOPs, memory and measured time of a model",
        description="Profile a saved .keras model (or one built by a Python function).",
    )
    prof.add_argument("model", nargs="?", metavar="MODEL", help="a saved .keras model")
    prof.add_argument("--builder", metavar="PATH.py:FUNCTION",
                      help="build the model with a function instead (the file may import "
                      "modules next to it)")
    prof.add_argument("--input-shape", action="append", default=[], metavar="SHAPE",
                      help="input shape, e.g. 1,128 or 224,224,3 (with or without the batch "
                      "dimension); repeat it once per model input, in order")
    prof.add_argument("--input", action="append", default=[], dest="inputs",
                      metavar="NAME:SHAPE[:DTYPE]",
                      help="shape (and dtype) of the named input, e.g. token_ids:1,128:int32 "
                      "for keras-hub models; repeatable; inputs left out keep the model's own")
    prof.add_argument("--batch-size", type=int, default=1, help="batch size (1)")
    prof.add_argument("--depth", type=int, default=None, help="fold layers below this depth")
    prof.add_argument("--logdir", help="keep the tf.profiler trace and TensorBoard summaries "
                      "here (default: the trace goes to a new temporary directory, "
                      "kerastrace_profile_*, named under the table; no summaries)")
    prof.add_argument("--format", choices=("table", "json", "csv"), default="table")
    prof.add_argument("--sort-by", default=None, choices=SORT_KEYS, metavar="COLUMN",
                      help="table column to sort by: " + ", ".join(SORT_KEYS))
    prof.add_argument("--top-k", type=int, default=None, help="only the top K rows")
    prof.add_argument("--no-trace", action="store_true", help="FLOPs and parameters only")
    _loading_options(prof)
    prof.set_defaults(func=_cmd("profile"))

    from kerastrace.explain import METHODS

    exp = sub.add_parser(
        "explain",
        help="attribute a saved text model's prediction to the words of a sentence",
        description="Explain predictions of a saved token-id model for sentences or an .npy.",
    )
    _model_inputs(exp)
    exp.add_argument("--method", choices=METHODS, default="integrated_gradients")
    exp.add_argument("--target", type=int, default=None, help="class (default: predicted)")
    exp.add_argument("--steps", type=int, default=32, help="Integrated Gradients steps (32)")
    exp.set_defaults(func=_cmd("explain"))

    att = sub.add_parser(
        "attention",
        help="collect and draw the attention of a saved model",
        description="Collect every attention layer's weights and draw them.",
    )
    _model_inputs(att)
    att.add_argument("--layer", help="attention map (layer path, `path:1` for a second call) "
                     "for the single-head picture (default: the last one)")
    att.add_argument("--head", type=int, default=0,
                     help="head for the single-head picture (0 <= HEAD < heads of --layer)")
    att.add_argument("--stack", help="draw the rollout of this stack only (encoder-decoder "
                     "models: encoder or decoder; default: one rollout per stack)")
    att.set_defaults(func=_cmd("attention"))

    nb = sub.add_parser(
        "neighbors",
        help="nearest training sentences of a query in a layer's representation",
        description="Index training sentences in a layer's representation (default: the "
        "[CLS] output of the last TransformerBlock) and print each query's nearest ones.",
    )
    nb.add_argument("model", metavar="MODEL", help="a saved .keras model")
    nb.add_argument("--vocab", help="vocab.txt (one token per line)")
    nb.add_argument("--train-file", required=True,
                    help="training sentences, one per line, optionally `label<TAB>text`")
    nb.add_argument("--text", action="append", help="a query sentence (repeatable)")
    nb.add_argument("--text-file", help="a file with one query per line")
    nb.add_argument("-k", type=int, default=5, help="neighbours per query (5)")
    nb.add_argument("--layer", help="layer name whose output is the representation")
    nb.add_argument("--metric", choices=("cosine", "l2"), default="cosine")
    nb.add_argument("--format", choices=("table", "json"), default="table")
    _sequence_length_option(nb)
    _loading_options(nb)
    nb.set_defaults(func=_cmd("neighbors"))
    _generation_parsers(sub)

    inf = sub.add_parser(
        "influence",
        help="training sentences that most supported / opposed a prediction (TracIn)",
        description="TracIn over training checkpoints: rank the training sentences by their "
        "influence on the model's prediction for each query (proponents: training on them "
        "lowered its loss; opponents: raised it).",
    )
    inf.add_argument("model", metavar="MODEL", help="a saved .keras model (the final one)")
    inf.add_argument("--checkpoints", required=True, metavar="DIR",
                     help="checkpoints saved during training: a CheckpointRecorder directory "
                     "(records the learning rates) or *.weights.h5 / *.keras files of "
                     "keras.callbacks.ModelCheckpoint (give --learning-rate)")
    inf.add_argument("--learning-rate", action="append", type=float, default=None,
                     metavar="LR", help="learning rate of each checkpoint, in training order "
                     "(repeat once per checkpoint, or give one for all); needed when the "
                     "checkpoints do not record it")
    inf.add_argument("--train-file", required=True,
                     help="the training sentences in training order, `label<TAB>text` per line")
    inf.add_argument("--vocab", help="vocab.txt (one token per line)")
    inf.add_argument("--text", action="append", help="a query sentence (repeatable)")
    inf.add_argument("--text-file", help="a file with one query per line")
    inf.add_argument("-k", type=int, default=5, help="proponents and opponents per query (5)")
    inf.add_argument("--layer", action="append", default=None,
                     help="layer path whose weights' gradients are compared (repeatable; "
                     "default: the last layer with weights)")
    inf.add_argument("--projection-dim", type=int, default=None, metavar="N",
                     help="project the gradients to N dimensions (large layers)")
    inf.add_argument("--index-dir", metavar="DIR",
                     help="keep the training-gradient index here and reuse it next time "
                     "(default: none, the index lives in memory for this run only)")
    inf.add_argument("--format", choices=("table", "json"), default="table")
    _sequence_length_option(inf)
    _loading_options(inf)
    inf.set_defaults(func=_cmd("influence"))
    return parser


def _generation_parsers(sub):
    """`kerastrace generate` and `kerastrace lens` (causal language models)."""
    from kerastrace.generation import METHODS as GEN_METHODS

    gen = sub.add_parser(
        "generate",
        help="generate from a causal LM and trace every new token to its sources",
        description="Generate a continuation of a prompt with a saved causal language model "
        "(logits (B, T, V)) and score, for every generated token, each earlier token's "
        "contribution. Writes trace.json, trace.html and sources.png.",
    )
    gen.add_argument("model", metavar="MODEL", help="a saved .keras causal language model")
    _prompt_options(gen)
    gen.add_argument("--max-new-tokens", type=int, default=8, help="tokens to generate (8)")
    gen.add_argument("--continuation", help="trace this forced continuation instead of "
                     "generating (text, or ids with --prompt-ids)")
    gen.add_argument("--method", choices=GEN_METHODS, default="integrated_gradients")
    gen.add_argument("--contrast-with", metavar="TOKEN",
                     help="explain each token rather than this alternative token (a token of "
                     "the vocabulary, or an id)")
    gen.add_argument("--score", choices=("logit", "probability", "log_probability"),
                     default="logit", help="what is attributed (logit)")
    gen.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed (0)")
    gen.add_argument("--output-dir", default="kerastrace_generate",
                     help="where files are written (default: %(default)s)")
    gen.add_argument("--logdir", help="also write TensorBoard summaries here (default: none)")
    _loading_options(gen)
    gen.set_defaults(func=_cmd("generate"))

    lens = sub.add_parser(
        "lens",
        help="the logit lens: a causal LM's next-token prediction after every block",
        description="Apply the model's final normalization and output head to the hidden "
        "state after every transformer block. Writes logit_lens.json and logit_lens.png.",
    )
    lens.add_argument("model", metavar="MODEL", help="a saved .keras causal language model")
    _prompt_options(lens)
    lens.add_argument("--top-k", type=int, default=5, help="tokens shown per layer (5)")
    lens.add_argument("--output-dir", default="kerastrace_lens",
                      help="where files are written (default: %(default)s)")
    _loading_options(lens)
    lens.set_defaults(func=_cmd("lens"))


def _prompt_options(p):
    p.add_argument("--prompt", help="the prompt text (needs --vocab)")
    p.add_argument("--prompt-ids", help="the prompt as comma-separated token ids")
    p.add_argument("--vocab", help="vocab.txt (one token per line): prompts whose words are "
                   "all vocabulary tokens are looked up as they are, others go through "
                   "kerastrace's WordPiece tokenizer")


def import_tensorflow_quietly() -> None:
    """Import TensorFlow (and tensorflow-text) with file descriptor 2 silenced.

    TensorFlow 2.21 writes its start-up lines ("oneDNN custom operations are
    on", CUDA probing) from C++ before `TF_CPP_MIN_LOG_LEVEL` is read, and
    twice (two of its libraries log them), so the only way to keep them off
    a command's stderr is to point fd 2 at /dev/null while the libraries
    load. Python-level errors are unaffected (stderr is restored before
    anything else runs). `TF_CPP_MIN_LOG_LEVEL` is set to 3 unless the user
    set it, for what TensorFlow's C++ code logs later. The command line and
    the scripts in `scripts/` call this before anything imports TensorFlow.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (e.g. captured)
        fd = None
    saved = os.dup(fd) if fd is not None else None
    devnull = os.open(os.devnull, os.O_WRONLY) if fd is not None else None
    try:
        if fd is not None:
            sys.stderr.flush()
            os.dup2(devnull, fd)
        import tensorflow

        tensorflow.config.list_physical_devices()  # device probing (cuInit) logs here too
        try:
            import tensorflow_text  # noqa: F401
        except ImportError:  # pragma: no cover - a dependency of kerastrace
            pass
    finally:
        if fd is not None:
            os.dup2(saved, fd)
            os.close(saved)
            os.close(devnull)


def _one_line(exc) -> str:
    """The message of `exc` on one line (a message may span several)."""
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _take_debug(argv: list[str]) -> tuple[list[str], bool]:
    """Remove every `--debug` before a `--` separator; whether there was one."""
    out, debug, literal = [], False, False
    for token in argv:
        if token == "--debug" and not literal:
            debug = True
            continue
        literal = literal or token == "--"
        out.append(token)
    return out, debug


#: Errors that come from what the user gave (flags, files, directories): status 2.
_USER_ERRORS = (ValueError, TypeError, KeyError, OSError, ImportError)


def main(argv=None) -> int:
    argv, debug = _take_debug(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed on one line
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    args.debug = debug or bool(getattr(args, "debug", False))
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    tf_logger = logging.getLogger("tensorflow")
    tf_level = tf_logger.level  # restored on return: `main()` may run inside a notebook
    try:
        from kerastrace.cli._checks import CHECKS

        CHECKS[args.command](args)  # every argument, before anything is imported or written
        if not args.debug:
            # The command line is an application, not the library: it may quiet
            # TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) and Python
            # deprecation notices so that stderr carries only our own messages.
            # A value the user set is kept; `--debug` keeps everything.
            import_tensorflow_quietly()  # sets TF_CPP_MIN_LOG_LEVEL=3 unless set
            tf_logger.setLevel(logging.ERROR)
        return int(args.func(args) or 0)
    except _USER_ERRORS as exc:
        if args.debug:
            raise
        print(f"kerastrace {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"kerastrace {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one clear line, traceback with --debug
        if args.debug:
            raise
        print(f"kerastrace {args.command}: failed: {type(exc).__name__}: {_one_line(exc)}",
              file=sys.stderr)
        return EXIT_FAILURE
    finally:
        tf_logger.setLevel(tf_level)
