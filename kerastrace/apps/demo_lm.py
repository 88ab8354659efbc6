"""The language-model demo: a small causal LM on key-value recall, and where its answers came from.

`run_lm_demo()` generates recall prompts whose right source is known
(`kerastrace.testing.data.make_recall_corpus`: pair tokens `"k3=v7"` and
filler words, then a query `"k3?"`; the answer is `"v7"` and its source is
the pair token), trains a two-block causal `TransformerBlock` LM on the CPU,
lets it answer test prompts (greedy generation) and traces every answer back
to the prompt with each method of `kerastrace.generation`. It writes:

    lm/model.keras, lm/vocab.txt   the trained LM and its vocabulary
    lm/sources.json                per method: how often the true source ranks first
    lm/traces.html                 answers coloured by probability; click one for its sources
    lm/dashboard.html              the kerastrace dashboard of tensorboard/lm in one offline
                                   file (generation and attention views, no server needed)
    lm/trace.json, lm/sources.png  the Integrated Gradients trace of the first prompts
    lm/logit_lens.json / .png      the prediction after each block
    lm/heads.json / .png           head importance and what masking two heads costs
    tensorboard/lm/                the trace (text, images, the kerastrace dashboard's
                                   generation view) and the LM's attention, in the same
                                   TensorBoard log directory as the classifier demo

Nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from kerastrace._utils import validation as v


@dataclasses.dataclass
class LMDemoResult:
    """What `run_lm_demo` produced.

    Attributes:
        run_dir: The run directory (`<output_dir>/lm`).
        accuracy: Share of test prompts answered with the right value.
        source_top1: Per method, the share of test prompts whose true source
            (the pair token of the queried key) ranks first among the
            prompt's context tokens (the query itself excluded).
        example: The first test prompt, its answer and its top sources.
        heads: Head importance and the masking what-if.
        files: Files written, relative to `run_dir`.
        tensorboard_logdir: The TensorBoard log directory (`<output_dir>/tensorboard`,
            shared with the classifier demo; this demo writes its run `lm`).
    """

    run_dir: str
    accuracy: float
    source_top1: dict
    example: dict
    heads: dict
    files: list
    tensorboard_logdir: str = ""

    def summary(self, dashboard: bool = True) -> str:
        """A few lines for a terminal, ending with the files written and, with
        `dashboard=True`, the command that opens the dashboard."""
        lines = [
            f"language model demo (key-value recall): answer accuracy {self.accuracy:.3f}",
            "true source ranked first among the context tokens, per method:",
        ]
        lines += [f"  {m:<22} {r:.2f}" for m, r in self.source_top1.items()]
        ex = self.example
        lines.append(f"  e.g. {ex['prompt']!r} -> {ex['answer']!r} (p={ex['probability']:.2f}); "
                     f"top sources: {', '.join(f'{t} ({s:+.2f})' for t, s in ex['sources'])}")
        if self.heads:
            h = self.heads
            lines.append(
                f"masking the 2 least important heads {h['masked']}: accuracy "
                f"{h['accuracy_all_heads']:.3f} -> {h['accuracy']:.3f}, "
                f"{100 * h['flops_saved'] / h['flops_total']:.1f}% of the forward FLOPs saved"
            )
        from kerastrace.apps.demo import dashboard_lines, files_lines

        lines += files_lines(self.run_dir, self.files)
        if self.tensorboard_logdir and dashboard:
            lines += dashboard_lines(
                self.tensorboard_logdir, "Generation: click an answer to see its sources"
            )
        return "\n".join(lines)


def train_recall_lm(n_train: int = 8000, epochs: int = 2, seed: int = 0, verbose: int = 0):
    """Train the demo's causal LM on key-value recall; returns `(model, corpus)`.

    Only the answer position is trained (the other next tokens are random by
    construction).
    """
    import keras

    from kerastrace.testing.data import make_recall_corpus
    from kerastrace.testing.reference_models import build_causal_lm

    corpus = make_recall_corpus(n_train, seed=seed)
    t = corpus.ids.shape[1]
    model = build_causal_lm(len(corpus.vocab), t, dim=64, num_heads=4, ff_dim=128,
                            num_layers=2, seed=seed, name="recall_lm")
    answer = keras.Model(model.input, model.output[:, t - 1])
    answer.compile(keras.optimizers.Adam(3e-3),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    answer.fit(corpus.ids, corpus.answers, batch_size=128, epochs=epochs, verbose=verbose)
    return model, corpus


def source_ranks(trace, sources, exclude_last: bool = True) -> np.ndarray:
    """Per prompt, whether the true source ranks first (signed score) for its first answer."""
    hits = []
    for i, src in enumerate(sources):
        row = np.array(trace.sources[i][0], np.float64)
        n = len(trace.prompt_ids[i]) - (1 if exclude_last else 0)
        hits.append(int(np.argmax(row[:n])) == int(src))
    return np.array(hits)


def run_lm_demo(
    output_dir: str = "runs/demo",
    n_train: int = 8000,
    n_test: int = 100,
    epochs: int = 2,
    seed: int = 0,
    verbose: int = 0,
) -> LMDemoResult:
    """Train the recall LM, answer test prompts and trace the answers (see the module docstring).

    Args:
        output_dir: The demo's run directory; this demo writes `<output_dir>/lm`.
        n_train: Training prompts.
        n_test: Test prompts traced by every method.
        epochs: Training epochs.
        seed: Random seed.
        verbose: Keras verbosity of the training.

    Returns:
        An `LMDemoResult`.
    """
    n_train = v.check_positive_int("n_train", n_train)
    n_test = v.check_positive_int("n_test", n_test)
    epochs = v.check_positive_int("epochs", epochs)
    from kerastrace import attention, generation, profiling, tensorboard, text
    from kerastrace.apps.demo import save_atomically, save_png
    from kerastrace.io import atomic_write
    from kerastrace.tensorboard import dashboard_html
    from kerastrace.testing.data import make_recall_corpus

    run_dir = os.path.join(output_dir, "lm")
    os.makedirs(run_dir, exist_ok=True)
    files = []

    def out(name):
        files.append(name)
        return os.path.join(run_dir, name)

    model, corpus = train_recall_lm(n_train, epochs, seed, verbose)
    test = make_recall_corpus(n_test, seed=seed + 1)
    vocab = corpus.vocab
    lm = generation.CausalLM(model)
    answers = generation.generate(lm, generation.Prompts(list(test.ids)), 1)
    answers = np.array([a[0] for a in answers])
    accuracy = float(np.mean(answers == test.answers))

    lookup = _Lookup(vocab)
    top1, traces = {}, {}
    for method in generation.METHODS:
        tracer = generation.GenerationTracer(lm, method, tokenizer=lookup)
        tr = tracer.trace(list(test.ids), continuation=[[int(a)] for a in answers])
        top1[method] = float(source_ranks(tr, test.sources).mean())
        traces[method] = tr
    atomic_write(out("sources.json"), json.dumps(
        {"source_top1": top1, "n_test": n_test, "accuracy": accuracy}, indent=2))

    ig = traces["integrated_gradients"]
    first = _subset(ig, 5)
    atomic_write(out("trace.json"), first.to_json())
    first.to_html(out("traces.html"))
    fig, _ = first.plot(0)
    save_png(fig, out("sources.png"), 90)
    tb_dir = os.path.join(output_dir, "tensorboard")
    # with the dashboard's generation view
    first.to_tensorboard(os.path.join(tb_dir, "lm"), id_to_token=lookup.id_to_token)
    prompt_tokens = [vocab[int(i)] for i in test.ids[0]]
    tensorboard.write_attention_data(
        os.path.join(tb_dir, "lm"), attention.collect(model, test.ids[:1]), prompt_tokens,
        name="attention/prompt_0",
    )
    dashboard_html(os.path.join(tb_dir, "lm"), out("dashboard.html"),
                   title="kerastrace language-model demo dashboard")

    lens = generation.logit_lens(lm, test.ids[0], tokenizer=lookup)
    atomic_write(out("logit_lens.json"), lens.to_json())
    fig, _ = lens.plot()
    save_png(fig, out("logit_lens.png"), 90)

    t = test.ids.shape[1]
    labels = np.zeros_like(test.ids)
    labels[:, t - 1] = test.answers
    mask = np.zeros(test.ids.shape, bool)
    mask[:, t - 1] = True
    data = (test.ids, labels, mask)
    imp = generation.head_importance(model, data, task="lm")
    prof = profiling.profile_model(model, inputs=test.ids[:1], trace=False)
    heads = generation.mask_heads(model, imp.least_important(2), data, task="lm", profile=prof)
    imp.ablation.append(heads)
    atomic_write(out("heads.json"), imp.to_json())
    fig, _ = imp.plot()
    save_png(fig, out("heads.png"), 90)

    save_atomically(out("model.keras"), model.save)
    save_atomically(out("vocab.txt"), lambda path: text.save_vocabulary(vocab, path))
    _close_figures()
    row = ig.sources[0][0]
    n = len(ig.prompt_ids[0]) - 1
    best = np.argsort(-row[:n], kind="stable")[:3]
    example = {
        "prompt": " ".join(vocab[i] for i in test.ids[0]),
        "answer": vocab[int(answers[0])],
        "probability": float(ig.steps[0]["probability"][0]),
        "sources": [(vocab[int(test.ids[0][j])], float(row[j])) for j in best],
    }
    result = LMDemoResult(
        run_dir=os.path.abspath(run_dir), accuracy=accuracy, source_top1=top1,
        example=example, heads=heads, files=sorted(files + ["summary.json"]),
        tensorboard_logdir=tb_dir,
    )
    atomic_write(os.path.join(run_dir, "summary.json"),
                 json.dumps(dataclasses.asdict(result), indent=2))
    return result


class _Lookup:
    """Whole-token lookup for the recall vocabulary (its tokens contain '=' and '?')."""

    def __init__(self, vocab):
        self.vocab = list(vocab)
        self.index = {t: i for i, t in enumerate(self.vocab)}

    def __call__(self, text):
        return [self.index[t] for t in text.split()]

    def id_to_token(self, i):
        return self.vocab[int(i)]


def _subset(trace, n):
    fields = {}
    for f in dataclasses.fields(trace):
        val = getattr(trace, f.name)
        fields[f.name] = val[:n] if isinstance(val, list) else val
    fields["details"] = {}
    return type(trace)(**fields)


def _close_figures():
    from kerastrace._utils.lazy import pyplot

    pyplot().close("all")
