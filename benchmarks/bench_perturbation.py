"""Benchmark the perturbation methods: accuracy per model evaluation, and engine overhead.

Every number printed is measured in this run, side by side:

1. Accuracy at a budget. A small text classifier
   (`kerastrace.testing.reference_models.build_text_classifier`) is trained
   for a few epochs on `kerastrace.testing.data.make_sentiment_corpus`,
   tokenized with the kerastrace `Tokenizer`. For a demo sentence of 12-16
   words, exact word-level Shapley values are computed by enumerating all
   `2**F` word coalitions (`ShapleyValues`), and `ShapleyValueSampling` with
   `max_evals=256` (antithetic permutations) is compared with them: Spearman
   rank correlation, evaluations used, efficiency residual. `KernelShap`
   with the same budget is shown beside it. For reference, shap's text
   explainer defaults to 500 evaluations and Xplique's KernelShap to 800.
   The same comparison over more corpus sentences and seeds shows the
   spread.
2. Engine throughput. The perturbed rows of one call scored by the
   compiled perturbation engine (rows built inside the graph from the
   coalition bits) vs one plain compiled batched forward pass of the model
   on the same number of ready-made rows: throughput ratio
   time(plain) / time(engine) (>= 0.8 means the engine adds little over the
   model). Also the whole `attribute()` call (host-side planning included).
   Timings are best-of-N, the candidates run interleaved.

Usage:
    python benchmarks/bench_perturbation.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

#: 15 words; "but" and "were" are not in the vocabulary and become several word pieces each,
#: which the word mask keeps together.
DEMO = "this movie was long and the plot seemed somewhat boring but the actors were fine"
SEQ_LEN = 24


def spearman(a, b):
    """Spearman rank correlation (average ranks for ties), without scipy."""

    def ranks(x):
        x = np.asarray(x, np.float64)
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=np.float64)
        for value in np.unique(x):  # average the ranks of ties
            tie = x == value
            r[tie] = r[tie].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / np.sqrt((ra * ra).sum() * (rb * rb).sum()))


def train_model(n_train, epochs, seed=0):
    import keras

    from kerastrace import text
    from kerastrace.testing.data import make_sentiment_corpus
    from kerastrace.testing.reference_models import build_text_classifier

    keras.utils.set_random_seed(seed)
    train = make_sentiment_corpus(n_train, seed=seed, negation_rate=0.2)
    vocab = text.build_vocabulary(train.sentences, vocab_size=400, min_count=1)
    tok = text.Tokenizer(vocab, sequence_length=SEQ_LEN)
    model = build_text_classifier(len(vocab), SEQ_LEN, dim=32, num_heads=2, ff_dim=64,
                                  num_layers=2, seed=seed)
    model.compile(
        keras.optimizers.Adam(2e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(tok.tokenize(train.sentences).ids, train.labels, epochs=epochs, batch_size=32,
              verbose=0)
    test = make_sentiment_corpus(200, seed=seed + 1, negation_rate=0.2)
    acc = float(np.mean(
        model.predict(tok.tokenize(test.sentences).ids, verbose=0).argmax(-1) == test.labels
    ))
    return model, tok, acc


def compare(model, tok, sentence, budget, seed, exact_cache):
    """Exact vs sampled word-level Shapley values of one sentence."""
    from kerastrace import text
    from kerastrace.attribution import KernelShap, ShapleyValues, ShapleyValueSampling

    t = tok.tokenize(sentence)
    mask = text.word_feature_mask(t)
    target = int(np.asarray(model.predict(t.ids, verbose=0)).argmax())
    kw = dict(target=target, feature_mask=mask, return_input_shape=False, return_info=True)
    if sentence not in exact_cache:
        start = time.perf_counter()
        exact, info = ShapleyValues(model).attribute(t.ids, **kw)
        exact_cache[sentence] = (exact[0], info, time.perf_counter() - start)
    exact, exact_info, exact_s = exact_cache[sentence]
    svs, svs_info = ShapleyValueSampling(model).attribute(t.ids, max_evals=budget, seed=seed, **kw)
    ks, ks_info = KernelShap(model).attribute(t.ids, n_samples=budget, seed=seed, **kw)
    return {
        "words": t.words[0],
        "F": int(exact_info.n_features[0]),
        "exact": exact,
        "exact_evals": int(exact_info.evaluations[0]),
        "exact_s": exact_s,
        "svs": svs[0],
        "svs_rho": spearman(exact, svs[0]),
        "svs_evals": int(svs_info.evaluations[0]),
        "svs_delta": float(svs_info.delta[0]),
        "ks_rho": spearman(exact, ks[0]),
        "ks_evals": int(ks_info.evaluations[0]),
        "ks_delta": float(ks_info.delta[0]),
    }


def best_times(fns, repeats):
    """Best-of-`repeats` time of each function, run interleaved (fair on a busy machine)."""
    for fn in fns.values():
        fn()  # warm up / trace
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def throughput(model, tok, n_sentences, budget, repeats):
    """Engine vs plain batched forward on the same rows."""
    import tensorflow as tf

    from kerastrace import text
    from kerastrace.attribution import ShapleyValueSampling
    from kerastrace.attribution._core import Layout, TargetSpec
    from kerastrace.attribution._perturbation import endpoints
    from kerastrace.attribution.shapley import permutation_coalitions, permutations
    from kerastrace.testing.data import make_sentiment_corpus

    corpus = make_sentiment_corpus(n_sentences, seed=7, min_words=12, max_words=14)
    t = tok.tokenize(corpus.sentences)
    mask = text.word_feature_mask(t)
    target = np.asarray(model.predict(t.ids, verbose=0)).argmax(-1).astype("int32")
    n_features = mask.max(axis=1) + 1
    # The coalitions one attribute(max_evals=budget) call evaluates (antithetic permutations).
    coalitions = []
    for f in n_features.tolist():
        perms = permutations(np.random.default_rng(0), f, (budget - 2) // (f - 1))
        coalitions.append(np.concatenate([endpoints(f), permutation_coalitions(perms)]))
    counts = [len(c) for c in coalitions]
    n_rows = sum(counts)
    z = np.ones((n_rows, int(n_features.max())), bool)
    owner = np.repeat(np.arange(len(coalitions)), counts).astype("int32")
    at = 0
    for c in coalitions:
        z[at : at + len(c), : c.shape[1]] = c
        at += len(c)
    # The same rows built on the host, for the plain forward pass.
    m = mask[owner]
    keep = (m < 0) | np.take_along_axis(z, np.maximum(m, 0), axis=1)
    rows_t = tf.constant(np.where(keep, t.ids[owner], 0).astype("int32"))
    tgt_t = tf.constant(target[owner])

    @tf.function(input_signature=[tf.TensorSpec((None, SEQ_LEN), tf.int32),
                                  tf.TensorSpec((None,), tf.int32)])
    def plain(x, tgt):
        return tf.gather(model(x, training=False), tgt, axis=1, batch_dims=1)

    svs = ShapleyValueSampling(model)
    layout = Layout("array", (0,), (0,))
    base = np.zeros_like(t.ids)

    def engine(chunk):
        return svs.engine.scores(
            (t.ids,), (base,), (mask,), (), z, owner, TargetSpec(target), layout, chunk=chunk
        )

    def whole():
        return svs.attribute(t.ids, target=target, feature_mask=mask, max_evals=budget, seed=0)

    ref = plain(rows_t, tgt_t).numpy()
    out = {"rows": n_rows, "max_abs_diff": float(np.abs(engine(n_rows) - ref).max())}
    out.update(best_times({
        "plain": lambda: plain(rows_t, tgt_t).numpy(),
        "engine_one": lambda: engine(n_rows),
        "engine_256": lambda: engine(256),
        "whole": whole,
    }, repeats))
    out["traces"] = svs.engine.trace_count
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer sentences and repeats")
    parser.add_argument("--budget", type=int, default=256, help="model evaluations per text")
    args = parser.parse_args(argv)
    n_train, epochs = (1500, 3) if args.quick else (3000, 3)
    n_extra, seeds, repeats = (6, 3, 3) if args.quick else (16, 5, 7)

    from kerastrace.testing.data import make_sentiment_corpus

    start = time.perf_counter()
    model, tok, acc = train_model(n_train, epochs)
    print(f"model: build_text_classifier trained {epochs} epochs on {n_train} sentences "
          f"(test accuracy {acc:.3f}, {time.perf_counter() - start:.1f} s)")

    # ---- 1. accuracy at a budget, the demo sentence
    cache = {}
    print(f"\n[1] word-level Shapley values, budget {args.budget} model evaluations per text")
    demo = [compare(model, tok, DEMO, args.budget, seed, cache) for seed in range(seeds)]
    d = demo[0]
    print(f"demo sentence ({len(d['words'])} words): {DEMO!r}")
    print(f"  exact (ShapleyValues): {d['exact_evals']} evaluations, {d['exact_s']:.2f} s")
    print("  word           exact   sampled (seed 0)")
    for w, e, s in zip(d["words"], d["exact"], d["svs"]):
        print(f"  {w:<12} {e:8.3f} {s:9.3f}")
    rho = [r["svs_rho"] for r in demo]
    print(f"  ShapleyValueSampling: Spearman vs exact {rho[0]:.3f} (seed 0); over seeds "
          f"0-{seeds - 1}: median {np.median(rho):.3f}, min {min(rho):.3f}; "
          f"evaluations {d['svs_evals']} <= {args.budget}; efficiency residual "
          f"max {max(abs(r['svs_delta']) for r in demo):.1e}")
    krho = [r["ks_rho"] for r in demo]
    print(f"  KernelShap (same budget): Spearman median {np.median(krho):.3f}, min "
          f"{min(krho):.3f}; evaluations {d['ks_evals']}; efficiency residual max "
          f"{max(abs(r['ks_delta']) for r in demo):.1e}")

    # ---- the same over corpus sentences of 12-16 words
    corpus = make_sentiment_corpus(n_extra, seed=11, min_words=11, max_words=14,
                                   negation_rate=0.2)
    rows = [compare(model, tok, s, args.budget, seed, cache)
            for s in corpus.sentences for seed in range(seeds)]
    svs_rho = np.array([r["svs_rho"] for r in rows])
    ks_rho = np.array([r["ks_rho"] for r in rows])
    sizes = sorted({r["F"] for r in rows})
    print(f"\n  {n_extra} corpus sentences ({sizes[0]}-{sizes[-1]} words) x {seeds} seeds:")
    print(f"  ShapleyValueSampling Spearman: mean {svs_rho.mean():.3f}, median "
          f"{np.median(svs_rho):.3f}, 5th percentile {np.percentile(svs_rho, 5):.3f}, "
          f">= 0.9 in {np.mean(svs_rho >= 0.9):.0%}")
    print(f"  KernelShap Spearman:           mean {ks_rho.mean():.3f}, median "
          f"{np.median(ks_rho):.3f}, 5th percentile {np.percentile(ks_rho, 5):.3f}, "
          f">= 0.9 in {np.mean(ks_rho >= 0.9):.0%}")
    print(f"  evaluations per text: max {max(r['svs_evals'] for r in rows)} (Shapley sampling), "
          f"max {max(r['ks_evals'] for r in rows)} (KernelShap); budget {args.budget}")

    # ---- 2. engine throughput
    n_sent = 4 if args.quick else 8
    tp = throughput(model, tok, n_sent, args.budget, repeats)
    print(f"\n[2] engine throughput: {tp['rows']} perturbed rows ({n_sent} texts x "
          f"{args.budget} evaluations), scores agree with the plain pass to "
          f"{tp['max_abs_diff']:.1e}")
    t_plain = tp["plain"]
    print(f"  plain compiled forward pass of all {tp['rows']} ready-made rows: "
          f"{t_plain * 1e3:7.1f} ms (baseline)")
    for label, key in ((f"engine, one model call of {tp['rows']} rows", "engine_one"),
                       ("engine, chunks of 256 rows (default)", "engine_256"),
                       ("whole attribute() call (plan + engine + combine)", "whole")):
        print(f"  {label:<50} {tp[key] * 1e3:7.1f} ms -> throughput ratio "
              f"{t_plain / tp[key]:.2f}")
    print(f"  compiled traces of the engine over all calls: {tp['traces']}")


if __name__ == "__main__":
    main()
