"""Explain the demo text classifier's prediction for a sentence, word by word.

Loads the `model.keras` and `vocab.txt` of a run directory written by
`kerastrace demo` (or, without `--run-dir`, trains a tiny classifier on a
generated corpus first, in a few seconds), computes Layer Integrated Gradients
on the token embedding for the predicted class (or `--target`), prints one
score per word of each sentence and writes `explanation.html` (the
sentence's own words coloured by score, with the prediction, the method and
a legend: one offline file), one PNG per sentence and `explanation.json` to
`--output-dir`. `--unsafe` loads a model with Keras' safe mode off (only for
files you trust).

Example:
    python scripts/explain_demo_model.py --run-dir runs/demo "the plot was long but the acting was superb"
    python scripts/explain_demo_model.py "not a bad film" "the music was awful" --output-dir /tmp/explain
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# Keep TensorFlow's C++ start-up lines off stderr (as the `kerastrace` command does).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DEFAULT_SENTENCE = "the acting was superb and the plot was long"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "sentences",
        nargs="*",
        metavar="SENTENCE",
        help=f"text to explain (default: {DEFAULT_SENTENCE!r})",
    )
    parser.add_argument(
        "--run-dir", default=None, help="run directory of `kerastrace demo` (model.keras, vocab.txt); "
        "when omitted a tiny model is trained first",
    )  # fmt: skip
    parser.add_argument(
        "--output-dir", default="kerastrace_explain", help="where files are written"
    )
    parser.add_argument(
        "--target", type=int, default=None, help="class to explain (default: predicted)"
    )
    parser.add_argument(
        "--steps", type=int, default=64, help="integration steps of LIG (default: 64)"
    )
    parser.add_argument("--unsafe", action="store_true",
                        help="load the model with Keras safe mode off (only for files you trust)")  # fmt: skip
    # the old spelling, kept working but no longer listed
    parser.add_argument("--unsafe-deserialization", dest="unsafe", action="store_true",
                        help=argparse.SUPPRESS)  # fmt: skip
    tiny = parser.add_argument_group("training without --run-dir")
    tiny.add_argument(
        "--train-size", type=int, default=1200, help="generated sentences (default: 1200)"
    )
    tiny.add_argument("--epochs", type=int, default=3, help="training epochs (default: 3)")
    tiny.add_argument(
        "--sequence-length", type=int, default=24, help="token sequence length (default: 24)"
    )
    tiny.add_argument(
        "--negation-rate", type=float, default=0.0,
        help="share of training sentences with a negated sentiment word (default: 0)",
    )  # fmt: skip
    tiny.add_argument("--seed", type=int, default=0, help="seed of data, weights and shuffling")
    args = parser.parse_args(argv)
    for name in ("steps", "train_size", "epochs"):
        if getattr(args, name) < 1:
            parser.error(
                f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}"
            )
    if not 0.0 <= args.negation_rate <= 1.0:
        parser.error(f"--negation-rate must be in [0, 1], got {args.negation_rate}")
    if args.sequence_length < 3:
        parser.error(f"--sequence-length must be at least 3, got {args.sequence_length}")
    if args.run_dir is not None:
        for name in ("model.keras", "vocab.txt"):
            if not os.path.isfile(os.path.join(args.run_dir, name)):
                parser.error(
                    f"{os.path.join(args.run_dir, name)} does not exist (is --run-dir a demo run?)"
                )
    return args


def load_run(run_dir: str, unsafe: bool):
    """The demo's model and tokenizer."""
    from kerastrace.io import load_model
    from kerastrace.text import Tokenizer

    try:
        model = load_model(os.path.join(run_dir, "model.keras"), safe_mode=not unsafe)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    length = model.inputs[0].shape[1]
    tokenizer = Tokenizer(os.path.join(run_dir, "vocab.txt"), sequence_length=length)
    return model, tokenizer


def train_tiny(train_size: int, epochs: int, sequence_length: int, negation_rate: float, seed: int):
    """A small TransformerBlock classifier on a generated sentiment corpus."""
    import keras

    from kerastrace.testing.data import make_sentiment_corpus
    from kerastrace.testing.reference_models import build_text_classifier
    from kerastrace.text import Tokenizer, build_vocabulary

    keras.utils.set_random_seed(seed)
    corpus = make_sentiment_corpus(train_size, seed=seed, negation_rate=negation_rate)
    vocab = build_vocabulary(corpus.sentences, vocab_size=400, min_count=1)
    tokenizer = Tokenizer(vocab, sequence_length=sequence_length)
    ids = tokenizer.tokenize(corpus.sentences).ids
    model = build_text_classifier(len(vocab), sequence_length, num_layers=2, seed=seed)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(ids, corpus.labels, epochs=epochs, batch_size=32, verbose=2)
    print(
        f"trained on {train_size} generated sentences: accuracy {history.history['accuracy'][-1]:.3f}"
    )
    return model, tokenizer


def main(argv=None) -> int:
    args = parse_args(argv)
    sentences = args.sentences or [DEFAULT_SENTENCE]
    from kerastrace.cli import import_tensorflow_quietly

    import_tensorflow_quietly()  # TensorFlow's C++ start-up lines kept off stderr

    import matplotlib

    if "MPLBACKEND" not in os.environ:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from kerastrace import text
    from kerastrace import visualization as viz
    from kerastrace.apps.explain import find_token_embedding, token_attributions
    from kerastrace.io import atomic_write

    if args.run_dir:
        model, tokenizer = load_run(args.run_dir, args.unsafe)
    else:
        model, tokenizer = train_tiny(
            args.train_size, args.epochs, args.sequence_length, args.negation_rate, args.seed
        )

    tok = tokenizer.tokenize(sentences)
    logits = np.asarray(model.predict(tok.ids, verbose=0), dtype=np.float64)
    num_classes = logits.shape[-1]
    if args.target is not None and not 0 <= args.target < num_classes:
        print(f"error: --target must be in [0, {num_classes}), got {args.target}", file=sys.stderr)
        return 2
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    predicted = logits.argmax(-1)
    targets = predicted if args.target is None else np.full(len(sentences), args.target)

    try:
        layer = find_token_embedding(model)
    except ValueError:
        raise SystemExit(
            "error: the model has no `embedding` layer (TokenAndPositionEmbedding or Embedding) "
            "to explain"
        ) from None
    # Baseline: keep [CLS]/[SEP], replace every word piece by padding (id 0).
    baseline = np.where(tok.special_tokens_mask & tok.mask, tok.ids, tokenizer.pad_id)
    scores, _, delta = token_attributions(
        model, tok.ids, method="integrated_gradients", target=targets, n_steps=args.steps,
        pad_id=tokenizer.pad_id, mask=tok.mask, embedding_layer=layer, baselines=baseline,
    )  # fmt: skip
    words = text.aggregate_to_words(scores, tok)

    os.makedirs(args.output_dir, exist_ok=True)
    items = []
    for i, sentence in enumerate(sentences):
        ws = words[i]
        w_scores = np.array([w.score for w in ws])
        w_text = [w.word for w in ws]
        print(f"\nsentence: {sentence!r}")
        print(
            f"predicted class {predicted[i]} (p={probs[i, predicted[i]]:.3f}); explaining class "
            f"{targets[i]} with LayerIntegratedGradients on {layer.name!r} "
            f"({args.steps} steps, completeness delta {delta[i]:+.2e})"
        )
        for w in ws:
            print(f"  {w.word:<16} {w.score:+.4f}")
        if ws:
            top = ws[int(np.argmax(w_scores))]
            print(f"top word: {top.word!r} ({top.score:+.4f})")
        png = os.path.join(args.output_dir, f"sentence_{i}.png")
        fig, _ = viz.plot_token_attributions(
            w_scores, w_text, title=f"class {targets[i]}: {sentence[:60]}"
        )
        atomic_write(png, lambda f, fig=fig: fig.savefig(f, format="png", dpi=120,
                                                          bbox_inches="tight"))
        plt.close(fig)
        items.append(
            {
                "sentence": sentence,
                "predicted": int(predicted[i]),
                "probability": float(probs[i, predicted[i]]),
                "target": int(targets[i]),
                "delta": float(delta[i]),
                "truncated": bool(tok.truncated[i]),
                "words": [{"word": w.word, "span": list(w.span), "score": w.score} for w in ws],
                "png": os.path.basename(png),
            }
        )
    viz.attributions_page(
        {"integrated_gradients": words}, texts=sentences, probabilities=probs,
        targets=targets, deltas={"integrated_gradients": delta},
        title="kerastrace: Layer Integrated Gradients on the token embedding",
        intro=f"{args.steps} integration steps; each word's score is the sum over its "
        "word pieces. Baseline: every word piece replaced by padding, [CLS]/[SEP] kept.",
    ).save(os.path.join(args.output_dir, "explanation.html"))
    atomic_write(os.path.join(args.output_dir, "explanation.json"), json.dumps(items, indent=2))
    print(
        f"\nwrote explanation.html, explanation.json and {len(items)} PNG file(s) to {args.output_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
