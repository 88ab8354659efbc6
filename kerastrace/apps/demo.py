"""The built-in demo: a text classifier on generated data, and what it attends to.

`run_demo()` generates review-like sentences whose label is decided by one
planted sentiment word (see `kerastrace.testing.data`), learns a WordPiece
vocabulary with `kerastrace.text`, trains a small `TransformerBlock`
classifier for a few epochs on the CPU, and then explains it. It writes one
run directory:

    model.keras, vocab.txt        the trained model and its vocabulary
    train.tsv                     the generated training sentences (label, text)
    neighbors.json                nearest training sentences of test sentences
    checkpoints/                  weights and learning rate after each epoch (TracIn)
    influence.json                training sentences that most supported / opposed a
                                  test prediction (TracIn over the checkpoints)
    profile/                      per-layer profile: table, JSON, CSV, chart
    attention/                    model view, one head, rollout (PNG)
    attributions/                 IG, SmoothGrad, attention x gradient on sample
                                  sentences (PNG, and attributions.html: the user's
                                  words coloured, with prediction, method and legend)
    dashboard.html                the kerastrace dashboard's interactive views of
                                  tensorboard/ in one offline file (no server needed)
    faithfulness.json / .txt      deletion AOPC, completeness, planted-word recovery
    summary.json                  everything the final summary prints
    tensorboard/                  training curves, the model's graph, attention,
                                  attributions, head statistics, gradient flow, profile
                                  and its trace; the kerastrace tab of TensorBoard
                                  shows them interactively

Nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings

import numpy as np

from kerastrace._utils import validation as v
from kerastrace.tensorboard._command import tensorboard_command

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
        faithfulness: Per attribution method: `planted_top1` (share of test
            sentences whose top word is the planted word), `deletion_aopc`
            (mean area over the deletion curve of the target logit; higher is
            more faithful) and `mean_abs_delta` (completeness; IG only).
        tensorboard_logdir: The TensorBoard log directory.
        neighbors: For the first test sentences, the nearest training
            sentences in the [CLS] representation of the last block.
        influence: For the first test sentence, the training sentences that
            most supported (proponents) and opposed (opponents) the model's
            prediction, by TracIn over the checkpoints of each epoch.
    """

    run_dir: str
    accuracy: float
    attention_on_planted: dict
    attention_uniform_share: float
    examples: list
    files: list
    faithfulness: dict = dataclasses.field(default_factory=dict)
    tensorboard_logdir: str = ""
    neighbors: list = dataclasses.field(default_factory=list)
    influence: list = dataclasses.field(default_factory=list)

    def summary(self, dashboard: bool = True) -> str:
        """A few lines for a terminal, ending with the files written and, with
        `dashboard=True`, the command that opens the dashboard."""
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
        if self.faithfulness:
            lines.append("attribution methods (planted word ranked first / deletion AOPC):")
            for method, row in self.faithfulness.items():
                delta = row.get("mean_abs_delta")
                extra = "" if delta is None else f", mean |delta| {delta:.4f}"
                if row.get("large_delta"):
                    extra += f" ({row['large_delta']} with |delta| > 10% of the output change)"
                lines.append(
                    f"  {method:<22} {row['planted_top1']:.2f} / {row['deletion_aopc']:.3f}{extra}"
                )
        if self.neighbors:
            first = self.neighbors[0]
            lines.append(f"nearest training sentences to {first['query']!r}:")
            for nb in first["neighbors"]:
                lines.append(
                    f"  label {nb['label']} sim {nb['similarity']:.3f}  {nb['text']!r}"
                )
        if self.influence:
            first = self.influence[0]
            lines.append(
                "training sentences that most supported / opposed the prediction "
                f"(class {first['predicted']}) for {first['query']!r}:"
            )
            for kind, word in (("proponents", "supported"), ("opponents", "opposed")):
                for e in first[kind]:
                    lines.append(
                        f"  {word:<9} label {e['label']} score {e['score']:+.3g}  {e['text']!r}"
                    )
        lines += files_lines(self.run_dir, self.files)
        if self.tensorboard_logdir and dashboard:
            lines += dashboard_lines(
                self.tensorboard_logdir,
                "attention, attributions, profile and gradient flow, interactively",
            )
        return "\n".join(lines)


def run_demo(
    output_dir: str = "runs/demo",
    n_train: int = 3000,
    n_test: int = 500,
    epochs: int = 4,
    sequence_length: int = 24,
    seed: int = 0,
    verbose: int = 1,
    n_explain: int = 100,
    ig_steps: int = 64,
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
        n_explain: Test sentences explained by every method for the
            faithfulness table.
        ig_steps: Integrated Gradients steps.

    Returns:
        A `DemoResult`.

    Raises:
        ValueError: for invalid arguments.

    Example:

    >>> import tempfile
    >>> result = run_demo(tempfile.mkdtemp(), n_train=64, n_test=16, epochs=1, verbose=0)
    >>> [f in result.files for f in ("model.keras", "faithfulness.json", "profile/profile.png")]
    [True, True, True]
    """
    n_train = v.check_positive_int("n_train", n_train)
    n_test = v.check_positive_int("n_test", n_test)
    epochs = v.check_positive_int("epochs", epochs)
    sequence_length = v.check_positive_int("sequence_length", sequence_length)
    if sequence_length < 16:
        raise v.invalid("sequence_length", "an integer >= 16 (the demo sentences)", sequence_length)
    v.check_one_of("verbose", verbose, (0, 1, 2))
    n_explain = v.check_positive_int("n_explain", n_explain)
    ig_steps = v.check_positive_int("ig_steps", ig_steps)

    import keras

    from kerastrace import attention, attribution, profiling, scale, tensorboard, text
    from kerastrace import visualization as viz
    from kerastrace.apps import explain
    from kerastrace.io import atomic_write
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
    tb_dir = os.path.join(output_dir, "tensorboard")
    probe = te.ids[:3]
    special_ids = [tokenizer.cls_id, tokenizer.sep_id]
    # Keras' own graph (write_graph) is a Keras-3 model configuration that TensorBoard
    # 2.21's Graphs tab cannot draw (the model calls ops with constant arguments); the
    # op graph written below after training is what the Graphs tab shows.
    callbacks = [
        keras.callbacks.TensorBoard(
            os.path.join(tb_dir, "train"), profile_batch=0, write_graph=False
        )
    ]
    callbacks.append(
        tensorboard.AttentionMonitor(
            os.path.join(tb_dir, "attention_monitor"), probe, tokens=te.tokens[:3],
            pad_id=tokenizer.pad_id, special_ids=special_ids, write_images=False,
        )
    )
    callbacks.append(
        tensorboard.AttributionMonitor(
            os.path.join(tb_dir, "attribution_monitor"), probe, tokens=te.tokens[:3],
            pad_id=tokenizer.pad_id, special_ids=special_ids, write_images=False,
        )
    )
    callbacks.append(
        tensorboard.GradientFlow(
            os.path.join(tb_dir, "gradient_flow"), (tr.ids[:64], train.labels[:64])
        )
    )
    from kerastrace.influence import CheckpointRecorder, influence_for_texts

    ckpt_dir = os.path.join(output_dir, "checkpoints")
    callbacks.append(CheckpointRecorder(ckpt_dir))  # for TracIn below
    model.fit(tr.ids, train.labels, epochs=epochs, batch_size=32, verbose=verbose,
              validation_data=(te.ids, test.labels), callbacks=callbacks)
    tensorboard.write_model_graph(os.path.join(tb_dir, "train", "train"), model, tr.ids[:1])
    logits = model.predict(te.ids, verbose=0, batch_size=256)
    accuracy = float(np.mean(np.argmax(logits, -1) == test.labels))
    files = []

    def out(*parts):
        path = os.path.join(output_dir, *parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        files.append("/".join(parts))
        return path

    # --- attention: where does [CLS] look?
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
    first = {k: w[:1] for k, w in weights.items()}
    fig, _ = viz.plot_model_view(first, te.tokens[0], mask=te.mask[0])
    save_png(fig, out("attention", "model_view.png"), 80)
    fig, _ = viz.plot_attention_head(first[list(first)[-1]], te.tokens[0], mask=te.mask[0],
                                     title=f"{list(first)[-1]}, head 0")
    save_png(fig, out("attention", "head.png"), 90)
    rollout = attention.attention_rollout(weights, mask=te.mask)
    fig, _ = viz.plot_rollout(rollout[:1], te.tokens[0], query=0, mask=te.mask[0])
    save_png(fig, out("attention", "rollout.png"), 90)
    stats = attention.head_statistics(weights, mask=te.mask)
    tensorboard.write_attention(tb_dir, first, te.tokens[0], step=0, mask=te.mask[:1])
    tensorboard.write_head_statistics(tb_dir, stats, step=0)
    special = np.isin(te.ids, special_ids)
    for i in range(min(3, n_test)):  # the dashboard's attention view, one record per sentence
        tensorboard.write_attention_data(
            tb_dir, weights, te.tokens, step=0, batch=i, mask=te.mask, special=special,
            name=f"attention/example_{i}",
        )

    # --- attributions and their faithfulness
    n = min(n_explain, n_test)
    ids = te.ids[:n]
    targets = np.argmax(logits[:n], -1).astype("int32")
    methods = ("integrated_gradients", "smoothgrad", "attention_x_gradient")
    faithfulness, all_scores, all_deltas = {}, {}, {}
    for method in methods:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            scores, _, delta = explain.token_attributions(
                model, ids, method=method, target=targets, n_steps=ig_steps,
                pad_id=tokenizer.pad_id, mask=te.mask[:n], seed=seed,
                special_ids=[tokenizer.cls_id, tokenizer.sep_id],
            )
        # explain warns when IG's completeness gap is large (the same 10% rule);
        # the demo counts those examples in its summary instead of printing warnings.
        large = 0
        if delta is not None:
            f_diff = np.abs(scores.sum(-1) - delta)
            large = int(np.sum(np.abs(delta) > 0.1 * np.maximum(f_diff, 1e-3)))
        all_scores[method] = scores
        all_deltas[method] = delta
        word_scores = text.aggregate_to_words(scores, _subset(te, n))
        top1 = [
            max(range(len(ws)), key=lambda k, ws=ws: ws[k].score) == test.planted[i]
            for i, ws in enumerate(word_scores)
        ]
        # Only word tokens are ranked and removed; [CLS], [SEP] and padding stay.
        curve = attribution.metrics.deletion_curve(
            model, ids, scores, target=targets, baselines=tokenizer.pad_id, n_steps=8,
            mask=te.token_mask[:n],
        )
        faithfulness[method] = {
            "planted_top1": float(np.mean(top1)),
            "deletion_aopc": float(np.mean(curve.aopc)),
            "mean_abs_delta": None if delta is None else float(np.mean(np.abs(delta))),
            "large_delta": large,
        }
        tensorboard.write_token_attributions(
            tb_dir, scores[:3], te.tokens[:3], step=0, name=method, mask=te.mask[:3]
        )
        fig, _ = viz.plot_token_attributions(scores[0], te.tokens[0], mask=te.mask[0],
                                             title=method)
        save_png(fig, out("attributions", f"{method}.png"), 90)
    k = min(8, n)  # the HTML page (3 sentences) and the dashboard's attribution view
    words = {m: text.aggregate_to_words(all_scores[m][:k], _subset(te, k)) for m in methods}
    probs = _softmax(logits[:k])
    class_names = ["negative", "positive"]
    viz.attributions_page(
        {m: words[m][:3] for m in methods}, texts=test.sentences[:3], probabilities=probs[:3],
        targets=targets[:3], labels=test.labels[:3], class_names=class_names,
        deltas={m: d[:3] for m, d in all_deltas.items() if d is not None},
        title="kerastrace demo: word attributions",
        intro="Each word's score is the sum over its word pieces, for the predicted class.",
    ).save(out("attributions", "attributions.html"))
    tensorboard.write_attribution_data(
        tb_dir, {m: all_scores[m][:k] for m in methods}, te.tokens[:k], step=0,
        name="attributions", mask=te.mask[:k], special=special[:k],
        texts=test.sentences[:k], words=words, probabilities=probs, targets=targets[:k],
        labels=test.labels[:k], class_names=class_names,
    )
    atomic_write(out("faithfulness.json"), json.dumps(faithfulness, indent=2))
    table = [f"{'method':<24}{'planted top-1':>14}{'deletion AOPC':>15}{'mean |delta|':>14}\n"]
    for method, row in faithfulness.items():
        d = row["mean_abs_delta"]
        table.append(f"{method:<24}{row['planted_top1']:>14.3f}{row['deletion_aopc']:>15.3f}"
                     f"{'-' if d is None else format(d, '.4f'):>14}\n")
    atomic_write(out("faithfulness.txt"), "".join(table))

    # --- profile (with a tf.profiler trace in the TensorBoard directory)
    prof = profiling.profile_model(model, inputs=te.ids[:1], logdir=tb_dir)
    atomic_write(out("profile", "profile.txt"), prof.to_table())
    atomic_write(out("profile", "profile.json"), prof.to_json())
    atomic_write(out("profile", "profile.csv"), prof.to_csv())
    fig, _ = prof.plot()
    save_png(fig, out("profile", "profile.png"), 90)
    prof.to_tensorboard(tb_dir)
    _close_figures()

    # --- example-based explanation: nearest training sentences in [CLS] space
    neighbors = scale.neighbors_for_texts(
        model, tokenizer, train.sentences, train.labels.tolist(), test.sentences[:3], k=3
    )
    atomic_write(out("neighbors.json"), json.dumps(neighbors, indent=2))

    # --- training-data attribution: TracIn over the checkpoints of each epoch
    influence = influence_for_texts(
        model, tokenizer, train.sentences, train.labels, test.sentences[:1], ckpt_dir, k=3
    )
    atomic_write(out("influence.json"), json.dumps(influence, indent=2))
    files.extend(f"checkpoints/{name}" for name in sorted(os.listdir(ckpt_dir)))

    # the dashboard's views (attention, attributions, profile, gradient flow) in one file
    tensorboard.dashboard_html(tb_dir, out("dashboard.html"), title="kerastrace demo dashboard")
    save_atomically(out("model.keras"), model.save)
    save_atomically(out("vocab.txt"), lambda path: text.save_vocabulary(vocab, path))
    atomic_write(out("train.tsv"), "".join(
        f"{y}\t{s}\n" for y, s in zip(train.labels.tolist(), train.sentences)))
    files.append("summary.json")
    result = DemoResult(
        run_dir=os.path.abspath(output_dir),
        accuracy=accuracy,
        attention_on_planted=shares,
        attention_uniform_share=uniform,
        examples=examples,
        files=sorted(files),
        faithfulness=faithfulness,
        neighbors=neighbors,
        influence=influence,
        tensorboard_logdir=tb_dir,
    )
    atomic_write(os.path.join(output_dir, "summary.json"),
                 json.dumps(dataclasses.asdict(result), indent=2))
    return result


def _subset(tokenized, n):
    """The first `n` examples of a `TokenizedText` (every field has a batch axis)."""
    return dataclasses.replace(
        tokenized,
        **{f.name: getattr(tokenized, f.name)[:n] for f in dataclasses.fields(tokenized)},
    )


def files_lines(run_dir: str, files) -> list:
    """The lines of a summary that list the files written, grouped by folder."""
    groups: dict = {}
    for name in files:
        folder, _, base = str(name).rpartition("/")
        groups.setdefault(folder, []).append(base)
    import textwrap

    lines = [f"files written in {run_dir}:"]
    for folder in sorted(groups, key=lambda d: (d != "", d)):
        names = groups[folder]
        shown = (", ".join(names) if not folder or len(names) <= 6
                 else f"{len(names)} files, {names[0]} ... {names[-1]}")
        lines += textwrap.wrap(f"{folder + '/: ' if folder else ''}{shown}", width=96,
                               initial_indent="  ", subsequent_indent="    ",
                               break_on_hyphens=False, break_long_words=False)
    return lines


def dashboard_lines(logdir: str, what: str) -> list:
    """The last lines of a summary: the one command that opens the dashboard.

    `make tensorboard` is named too when the working directory is the
    repository (its Makefile has that target) and `logdir` is the one the
    target opens (`runs/demo/tensorboard`).
    """
    lines = [f"open it in TensorBoard: {tensorboard_command()} --logdir {logdir}"]
    try:
        with open("Makefile", encoding="utf-8") as f:
            has_target = any(line.startswith("tensorboard:") for line in f)
    except OSError:
        has_target = False
    if has_target and os.path.abspath(logdir) == os.path.abspath(
        os.path.join("runs", "demo", "tensorboard")
    ):
        lines[-1] += "   (or: make tensorboard)"
    lines.append(f"  then the KERASTRACE tab (http://localhost:6006/#kerastrace): {what}")
    return lines


def save_png(fig, path, dpi, **savefig_kwargs):
    """Write a matplotlib figure as PNG, atomically (`kerastrace.io.atomic_write`)."""
    from kerastrace.io import atomic_write

    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, **savefig_kwargs))


def save_atomically(path, save):
    """Run `save(tmp_path)` (e.g. `model.save`), then write the result to `path` atomically.

    For writers that insist on a file name of their own (Keras wants a
    `.keras` suffix): the file is written in a temporary directory with the
    same name, then copied into place with `kerastrace.io.atomic_write`.
    """
    import shutil
    import tempfile

    from kerastrace.io import atomic_write

    tmp = tempfile.mkdtemp(prefix="kerastrace-")
    try:
        staged = os.path.join(tmp, os.path.basename(path))
        save(staged)
        with open(staged, "rb") as src:
            atomic_write(path, lambda f: shutil.copyfileobj(src, f))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _close_figures():
    """Close the figures the demo made (it runs headless; nothing is shown)."""
    from kerastrace._utils.lazy import pyplot

    pyplot().close("all")
