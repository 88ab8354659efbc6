"""Subcommand implementations. Each imports TensorFlow only when it runs."""

from __future__ import annotations

import json
import os

import numpy as np


def _parse_shape(text: str, arg: str = "--input-shape") -> tuple:
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise ValueError(
            f"Received an invalid value for argument `{arg}`, expected comma-separated "
            f"positive integers such as 1,128. Received: {text!r}"
        )
    return dims


def _load_model(path: str, unsafe: bool):
    from kerastrace.profiling import load_model_for_profiling

    return load_model_for_profiling(path, safe_mode=not unsafe)


def _check_exists(path: str, arg: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{arg}: no such file: {path}")


# ---------------------------------------------------------------- profile
def profile(args) -> int:
    from kerastrace.profiling import build_from_builder, profile_model

    if args.builder:
        model = build_from_builder(args.builder)
    else:
        if not args.model:
            raise ValueError("give a MODEL.keras path or --builder path.py:function")
        _check_exists(args.model, "MODEL")
        model = _load_model(args.model, args.unsafe)
    shape = _parse_shape(args.input_shape) if args.input_shape else None
    result = profile_model(
        model,
        input_shape=shape,
        batch_size=args.batch_size,
        depth=args.depth,
        trace=not args.no_trace,
        logdir=args.logdir,
    )
    if args.format == "json":
        print(result.to_json())
    elif args.format == "csv":
        print(result.to_csv(), end="")
    else:
        print(result.to_table(sort_by=args.sort_by, top_k=args.top_k))
    if args.logdir:
        result.to_tensorboard(args.logdir)
        print(f"\nOpen it in TensorBoard: tensorboard --logdir {args.logdir}")
    return 0


# ---------------------------------------------------------------- inputs
def _texts(args) -> list[str]:
    texts = list(args.text or [])
    if args.text_file:
        _check_exists(args.text_file, "--text-file")
        with open(args.text_file, encoding="utf-8") as f:
            texts += [line.rstrip("\n") for line in f if line.strip()]
    return texts


def _token_inputs(args, model):
    """(ids, tokenizer or None, tokenized or None) from --text/--text-file/--npy."""
    texts = _texts(args)
    if args.npy and texts:
        raise ValueError("give either --npy or --text/--text-file, not both")
    if args.npy:
        _check_exists(args.npy, "--npy")
        ids = np.load(args.npy)
        expected = tuple(model.input_shape[1:])
        if ids.ndim == len(expected):
            ids = ids[None]
        if tuple(ids.shape[1:]) != expected:
            raise ValueError(
                f"--npy: the array's shape {ids.shape} does not fit the model's input "
                f"shape (batch, {', '.join(str(d) for d in expected)})"
            )
        return ids, None, None
    if not texts:
        raise ValueError("give --text, --text-file or --npy")
    if not args.vocab:
        raise ValueError("--vocab is required with --text/--text-file")
    _check_exists(args.vocab, "--vocab")
    from kerastrace.text import Tokenizer

    length = model.input_shape[1]
    tokenizer = Tokenizer(args.vocab, sequence_length=length)
    tok = tokenizer.tokenize(texts)
    return tok.ids, tokenizer, tok


# ---------------------------------------------------------------- explain
def explain(args) -> int:
    from kerastrace import explain as ex

    _check_exists(args.model, "MODEL")
    model = _load_model(args.model, args.unsafe)
    ids, tokenizer, tok = _token_inputs(args, model)
    os.makedirs(args.output_dir, exist_ok=True)
    if tokenizer is not None:
        explanations = ex.explain_text(
            model, tokenizer, tok.texts, method=args.method, target=args.target,
            n_steps=args.steps,
        )
        records = [e.to_dict() for e in explanations]
        for i, e in enumerate(explanations):
            words = ", ".join(f"{w}={s:+.3f}" for w, _, s in e.words)
            print(f"[{i}] class {e.target} (p={e.probabilities[e.target]:.2f}): {words}")
        html = "\n".join(
            f"<p><b>{i}</b> class {e.target}: {e.to_html()}</p>" for i, e in enumerate(explanations)
        )
        scores = np.stack([e.token_scores for e in explanations])
        tokens = [e.tokens for e in explanations]
        mask = np.stack([e.mask for e in explanations])
    else:
        scores, targets, delta = ex.token_attributions(
            model, ids, method=args.method, target=args.target, n_steps=args.steps
        )
        records = [
            {"index": i, "target": int(targets[i]), "token_scores": scores[i].tolist(),
             "delta": None if delta is None else float(delta[i])}
            for i in range(len(ids))
        ]
        tokens = [[str(t) for t in row] for row in ids.tolist()]
        mask = ids != 0
        from kerastrace.visualization import token_attributions_html

        html = "\n".join(
            f"<p>{i}: {token_attributions_html(scores[i], tokens[i], mask=mask[i])}</p>"
            for i in range(len(ids))
        )
        for r in records:
            print(f"[{r['index']}] class {r['target']}: {np.round(r['token_scores'], 3).tolist()}")
    with open(os.path.join(args.output_dir, "explanations.json"), "w", encoding="utf-8") as f:
        json.dump({"method": args.method, "explanations": records}, f, indent=2,
                  ensure_ascii=False)
    with open(os.path.join(args.output_dir, "explanations.html"), "w", encoding="utf-8") as f:
        f.write(f"<html><meta charset='utf-8'><body>{html}</body></html>\n")
    from kerastrace.visualization import plot_token_attributions

    fig, _ = plot_token_attributions(scores[0], tokens[0], mask=mask[0], title=args.method)
    fig.savefig(os.path.join(args.output_dir, "explanation_0.png"), dpi=100)
    if args.logdir:
        from kerastrace.tensorboard import write_token_attributions

        write_token_attributions(args.logdir, scores, tokens, step=0, name=args.method, mask=mask)
    print(f"wrote {args.output_dir}/explanations.json, explanations.html, explanation_0.png")
    if args.logdir:
        print(f"Open it in TensorBoard: tensorboard --logdir {args.logdir}")
    return 0


# ---------------------------------------------------------------- attention
def attention(args) -> int:
    from kerastrace import attention as att
    from kerastrace.visualization import plot_attention_head, plot_model_view, plot_rollout

    _check_exists(args.model, "MODEL")
    model = _load_model(args.model, args.unsafe)
    ids, tokenizer, tok = _token_inputs(args, model)
    weights = att.collect(model, ids)
    mask = ids != 0
    tokens = tok.tokens[0] if tok is not None else [str(t) for t in ids[0].tolist()]
    os.makedirs(args.output_dir, exist_ok=True)
    np.savez_compressed(
        os.path.join(args.output_dir, "attention.npz"),
        **{k.replace("/", "__"): w for k, w in weights.items()},
    )
    fig, _ = plot_model_view(weights, tokens, mask=mask[0])
    fig.savefig(os.path.join(args.output_dir, "model_view.png"), dpi=80)
    layer = args.layer or list(weights)[-1]
    if layer not in weights:
        raise ValueError(f"--layer: no attention layer {layer!r}; choose from {sorted(weights)}")
    fig, _ = plot_attention_head(weights[layer], tokens, head=args.head, mask=mask[0],
                                 title=f"{layer} head {args.head}")
    fig.savefig(os.path.join(args.output_dir, "head.png"), dpi=100)
    rollout = att.attention_rollout(weights, mask=mask)
    fig, _ = plot_rollout(rollout, tokens, query=0, mask=mask[0])
    fig.savefig(os.path.join(args.output_dir, "rollout.png"), dpi=100)
    stats = att.head_statistics(weights, mask=mask)
    summary = {
        "layers": {k: list(w.shape) for k, w in weights.items()},
        "head_statistics": {k: float(v) for k, v in stats.scalars().items()},
    }
    with open(os.path.join(args.output_dir, "attention.json"), "w") as f:
        json.dump(summary, f, indent=2)
    if args.logdir:
        from kerastrace.tensorboard import write_attention, write_head_statistics

        write_attention(args.logdir, weights, tok.tokens if tok is not None else None, step=0,
                        mask=mask)
        write_head_statistics(args.logdir, stats, step=0)
    for k, w in weights.items():
        print(f"{k}: {tuple(w.shape)}")
    print(f"wrote {args.output_dir}/attention.npz, attention.json, model_view.png, head.png, "
          "rollout.png")
    if args.logdir:
        print(f"Open it in TensorBoard: tensorboard --logdir {args.logdir}")
    return 0


# ---------------------------------------------------------------- neighbors
def _read_train_file(path: str):
    """Lines of `label<TAB>text` (labels optional) -> (texts, labels or None)."""
    _check_exists(path, "--train-file")
    texts, labels = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            head, sep, rest = line.partition("\t")
            if sep:
                try:
                    labels.append(int(head))
                except ValueError:
                    raise ValueError(
                        f"--train-file: line {n} has a tab but its first field {head!r} is "
                        "not an integer label (expected `label<TAB>text`)"
                    ) from None
                texts.append(rest)
            else:
                texts.append(line)
    if not texts:
        raise ValueError(f"--train-file: {path} holds no text lines")
    if labels and len(labels) != len(texts):
        raise ValueError("--train-file: give a label on every line or on none")
    return texts, (labels or None)


def neighbors(args) -> int:
    from kerastrace.scale import neighbors_for_texts
    from kerastrace.text import Tokenizer

    _check_exists(args.model, "MODEL")
    model = _load_model(args.model, args.unsafe)
    queries = _texts(args)
    if not queries:
        raise ValueError("give --text or --text-file")
    if not args.vocab:
        raise ValueError("--vocab is required")
    _check_exists(args.vocab, "--vocab")
    texts, labels = _read_train_file(args.train_file)
    tokenizer = Tokenizer(args.vocab, sequence_length=model.input_shape[1])
    results = neighbors_for_texts(
        model, tokenizer, texts, labels, queries, k=args.k, layer=args.layer, metric=args.metric
    )
    if args.format == "json":
        print(json.dumps(results, indent=2, ensure_ascii=False))
        return 0
    for r in results:
        print(f"query: {r['query']}")
        for nb in r["neighbors"]:
            label = "-" if nb["label"] is None else nb["label"]
            print(f"  {nb['rank']}. sim={nb['similarity']:+.3f} label={label} {nb['text']}")
    return 0
