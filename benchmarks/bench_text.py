"""Benchmark kerastrace.text against plain tensorflow-text, side by side.

Baselines (same corpus, same vocabulary, same process):

1. `Tokenizer.tf_tokenize` (ids + mask, pure TF, compiled) vs tensorflow-text's
   `FastBertTokenizer.tokenize` + `pad_model_inputs` in one `tf.function`
   (the usual tf-text recipe, no offsets).
2. `Tokenizer.tokenize` (eager: ids, mask, *character* offsets, words, word
   ids) vs `FastBertTokenizer.tokenize_with_offsets` (byte offsets only,
   ragged, compiled).
3. `tf.data` pipeline: `dataset.map(tok.tf_tokenize)` vs the tf-text recipe
   mapped the same way.
4. `aggregate_to_words` on a (B, L) score matrix vs a straightforward Python
   loop over tokens (dict of word -> sum).

Run: `python benchmarks/bench_text.py [--quick]`. Prints ratios (kerastrace /
baseline; < 1 means kerastrace is faster).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kerastrace.text import Tokenizer, aggregate_to_words, build_vocabulary  # noqa: E402

WORDS = (
    "the a movie film plot actors was were great terrible not really very boring "
    "wonderful crème brûlée naïve café straße 我 喜 欢 电 影 😀 👍 unbelievable"
).split()


def make_corpus(n, seed=0):
    rng = np.random.default_rng(seed)
    return [
        " ".join(rng.choice(WORDS, size=rng.integers(5, 40))) + rng.choice([".", "!", ","])
        for _ in range(n)
    ]


def best(fn, repeats):
    fn()  # warm up / trace
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small corpus, few repeats")
    parser.add_argument("--batch", type=int, default=None, help="strings per batch")
    parser.add_argument("--seq-len", type=int, default=64)
    args = parser.parse_args(argv)
    batch = args.batch or (256 if args.quick else 1024)
    repeats = 3 if args.quick else 7

    import tensorflow_text as tft

    corpus = make_corpus(batch)
    vocab = build_vocabulary(corpus, vocab_size=400)
    tok = Tokenizer(vocab, sequence_length=args.seq_len)
    L = args.seq_len
    fast = tft.FastBertTokenizer(
        vocab=vocab, token_out_type=tf.int32, lower_case_nfd_strip_accents=True
    )
    cls_id, sep_id = vocab.index("[CLS]"), vocab.index("[SEP]")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def recipe(strings):
        ids = fast.tokenize(strings)[:, : L - 2]
        n = ids.nrows()
        ids = tf.concat([tf.fill([n, 1], cls_id), ids, tf.fill([n, 1], sep_id)], axis=1)
        return tft.pad_model_inputs(ids, max_seq_length=L)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def recipe_offsets(strings):
        return fast.tokenize_with_offsets(strings)

    strings = tf.constant(corpus)
    np.testing.assert_array_equal(recipe(strings)[0].numpy(), tok.tf_tokenize(strings)[0].numpy())

    rows = []
    t_k = best(lambda: tok.tf_tokenize(strings), repeats)
    t_b = best(lambda: recipe(strings), repeats)
    rows.append(("tf_tokenize vs FastBertTokenizer+pad_model_inputs", t_k, t_b))

    t_k = best(lambda: tok.tokenize(corpus), repeats)
    t_b = best(lambda: recipe_offsets(strings), repeats)
    rows.append(("tokenize (char offsets, words) vs tokenize_with_offsets (bytes)", t_k, t_b))

    ds = tf.data.Dataset.from_tensor_slices(corpus)

    def drain(d):
        for _ in d:
            pass

    ds_k = ds.batch(64).map(tok.tf_tokenize)  # built once: times iteration, not tracing
    ds_b = ds.batch(64).map(recipe)
    t_k = best(lambda: drain(ds_k), repeats)
    t_b = best(lambda: drain(ds_b), repeats)
    rows.append(("tf.data map(tf_tokenize) vs map(recipe), batches of 64", t_k, t_b))

    tokenized = tok.tokenize(corpus)
    scores = np.random.default_rng(0).normal(size=tokenized.ids.shape)

    def loop():
        out = []
        for b in range(len(corpus)):
            acc = {}
            for k in range(L):
                w = int(tokenized.word_ids[b, k])
                if w >= 0:
                    acc[w] = acc.get(w, 0.0) + scores[b, k]
            out.append([(tokenized.words[b][w], acc[w]) for w in sorted(acc)])
        return out

    t_k = best(lambda: aggregate_to_words(scores, tokenized), repeats)
    t_b = best(loop, repeats)
    rows.append(("aggregate_to_words vs Python loop", t_k, t_b))

    print(
        f"kerastrace.text benchmark: batch={batch} strings, sequence_length={L}, "
        f"vocab={len(vocab)}, best of {repeats}"
    )
    print(f"{'case':66s} {'kerastrace':>11s} {'baseline':>10s} {'ratio':>7s}")
    for name, a, b in rows:
        print(f"{name:66s} {a * 1e3:9.2f}ms {b * 1e3:8.2f}ms {a / b:6.2f}x")


if __name__ == "__main__":
    main()
