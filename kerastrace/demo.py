"""The built-in demo: a text classifier on generated data, and what it attends to.

`run_demo()` generates review-like sentences whose label is decided by one
planted sentiment word (see `kerastrace.testing.data`), learns a WordPiece
vocabulary with `kerastrace.text`, trains a small `TransformerBlock`
classifier for a few epochs on the CPU, and reports where the attention of
the [CLS] position went, per layer, compared with the planted word.
It writes one run directory with the `.keras` model, the vocabulary and a
`summary.json`. Nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import numpy as np

from kerastrace._utils import validation as v

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class DemoResult:
    """What `run_demo` produced.

    Attributes:
        run_dir: The run directory.
        accuracy: Test accuracy of the trained classifier.
        attention_on_planted: Per attention layer, the mean share of the
            [CLS] query's attention (averaged over heads) that falls on the
            planted sentiment word's tokens, over test sentences.
        attention_uniform_share: The share a uniform attention would give
            the planted word (for comparison).
        examples: A few test sentences with the word the last layer's [CLS]
            attends to most.
        files: Files written, relative to `run_dir`.
    """

    run_dir: str
    accuracy: float
    attention_on_planted: dict
    attention_uniform_share: float
    examples: list
    files: list

    def summary(self) -> str:
        """A few lines for a terminal."""
        lines = [f"test accuracy: {self.accuracy:.3f}"]
        lines.append(
            "share of [CLS] attention on the planted sentiment word "
            f"(uniform would be {self.attention_uniform_share:.3f}):"
        )
        for path, share in self.attention_on_planted.items():
            lines.append(f"  {path:<28} {share:.3f}")
        lines.append("where the last layer's [CLS] attention went:")
        for ex in self.examples:
            lines.append(
                f"  {ex['sentence']!r} (label {ex['label']}, planted {ex['planted_word']!r}) "
                f"-> most attended: {ex['top_word']!r} ({ex['top_share']:.2f})"
            )
        lines.append(f"run directory: {self.run_dir}")
        return "\n".join(lines)


def run_demo(
    output_dir: str = "runs/demo",
    n_train: int = 3000,
    n_test: int = 500,
    epochs: int = 4,
    sequence_length: int = 24,
    seed: int = 0,
    verbose: int = 1,
) -> DemoResult:
    """Train the demo text classifier and report where its attention went.

    Args:
        output_dir: Run directory to write (created if missing).
        n_train: Number of generated training sentences.
        n_test: Number of generated test sentences.
        epochs: Training epochs.
        sequence_length: Token sequence length, [CLS]/[SEP] included.
        seed: Seed of the data, the weights and the shuffling.
        verbose: 1 shows Keras' progress bar during training, 0 is silent.

    Returns:
        A `DemoResult`.

    Raises:
        ValueError: for invalid arguments.

    Example:

    >>> import tempfile
    >>> result = run_demo(tempfile.mkdtemp(), n_train=64, n_test=16, epochs=1, verbose=0)
    >>> sorted(result.files)
    ['model.keras', 'summary.json', 'vocab.txt']
    """
    n_train = v.check_positive_int("n_train", n_train)
    n_test = v.check_positive_int("n_test", n_test)
    epochs = v.check_positive_int("epochs", epochs)
    sequence_length = v.check_positive_int("sequence_length", sequence_length)
    if sequence_length < 16:
        raise v.invalid("sequence_length", "an integer >= 16 (the demo sentences)", sequence_length)
    v.check_one_of("verbose", verbose, (0, 1, 2))

    import keras

    from kerastrace import attention, text
    from kerastrace.testing.data import make_sentiment_corpus
    from kerastrace.testing.reference_models import build_text_classifier

    os.makedirs(output_dir, exist_ok=True)
    keras.utils.set_random_seed(seed)
    train = make_sentiment_corpus(n_train, seed=seed, negation_rate=0.2)
    test = make_sentiment_corpus(n_test, seed=seed + 1, negation_rate=0.2)
    vocab = text.build_vocabulary(train.sentences, vocab_size=400, min_count=1)
    tokenizer = text.Tokenizer(vocab, sequence_length=sequence_length)
    tr = tokenizer.tokenize(train.sentences)
    te = tokenizer.tokenize(test.sentences)
    logger.info("vocabulary of %d tokens; training on %d sentences", len(vocab), n_train)

    model = build_text_classifier(
        vocab_size=len(vocab), sequence_length=sequence_length, dim=32, num_heads=2,
        ff_dim=64, num_layers=2, seed=seed,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(tr.ids, train.labels, epochs=epochs, batch_size=32, verbose=verbose,
              validation_data=(te.ids, test.labels))
    logits = model.predict(te.ids, verbose=0, batch_size=256)
    accuracy = float(np.mean(np.argmax(logits, -1) == test.labels))

    weights = attention.collect(model, te.ids)
    planted_mask = te.word_ids == test.planted[:, None]  # tokens of the planted word
    n_real = te.mask.sum(-1)
    shares = {}
    for path, w in weights.items():
        cls_row = w[:, :, 0, :].mean(axis=1)  # (B, T) over heads
        shares[path] = float(np.mean((cls_row * planted_mask).sum(-1)))
    uniform = float(np.mean(planted_mask.sum(-1) / n_real))

    last = weights[list(weights)[-1]][:, :, 0, :].mean(axis=1)
    examples = []
    for i in range(min(3, n_test)):
        words = text.aggregate_to_words(last[i], te, index=i)
        top = max(words, key=lambda w: w.score)
        examples.append(
            {
                "sentence": test.sentences[i],
                "label": int(test.labels[i]),
                "planted_word": test.sentences[i].split()[test.planted[i]],
                "top_word": top.word,
                "top_share": top.score,
            }
        )

    model.save(os.path.join(output_dir, "model.keras"))
    text.save_vocabulary(vocab, os.path.join(output_dir, "vocab.txt"))
    result = DemoResult(
        run_dir=os.path.abspath(output_dir),
        accuracy=accuracy,
        attention_on_planted=shares,
        attention_uniform_share=uniform,
        examples=examples,
        files=["model.keras", "vocab.txt", "summary.json"],
    )
    with open(os.path.join(output_dir, "summary.json"), "w") as f:
        json.dump(dataclasses.asdict(result), f, indent=2)
    return result
