"""Subcommand implementations. Each imports TensorFlow only when it runs.

Every file a subcommand writes is rendered in memory first and written at the
end with `kerastrace.io.atomic_write` (`_write_outputs`): an error while
computing leaves nothing behind, and each file is whole or absent.
"""

from __future__ import annotations

import io
import json
import os
import re

import numpy as np

from kerastrace.tensorboard._command import open_command


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


def _check_exists(path: str, arg: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{arg}: no such file: {path}")


def _custom_objects(args) -> dict:
    """Import every --custom-objects file (in order); merge their CUSTOM_OBJECTS dicts."""
    from kerastrace.profiling import import_custom_objects

    merged: dict = {}
    for path in getattr(args, "custom_objects", None) or []:
        _check_exists(path, "--custom-objects")
        merged.update(import_custom_objects(path))
    return merged


def _load_model(args):
    """The MODEL file (archive checked first), after the --custom-objects files are imported."""
    from kerastrace.io import load_model

    _check_exists(args.model, "MODEL")
    custom = _custom_objects(args)
    return load_model(args.model, safe_mode=not args.unsafe, custom_objects=custom)


def _png(fig, dpi: int) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    from kerastrace._utils.lazy import pyplot

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    return buf.getvalue()


def _write_outputs(directory: str, files: dict) -> None:
    """Create `directory` and write each `{name: bytes or str}` atomically, in order."""
    from kerastrace.io import atomic_write

    os.makedirs(directory, exist_ok=True)
    for name, data in files.items():
        atomic_write(os.path.join(directory, name), data)


# ---------------------------------------------------------------- profile
def _parse_input(text: str) -> tuple:
    """`NAME:SHAPE[:DTYPE]` -> (name, shape, dtype or None)."""
    import tensorflow as tf

    parts = text.split(":")
    expected = ("Received an invalid value for argument `--input`, expected NAME:SHAPE[:DTYPE] "
                f"such as token_ids:1,128:int32. Received: {text!r}")  # fmt: skip
    if len(parts) not in (2, 3) or not parts[0].strip():
        raise ValueError(expected)
    shape = _parse_shape(parts[1], arg="--input")
    dtype = parts[2].strip() if len(parts) == 3 else None
    if dtype is not None:
        try:
            dtype = tf.as_dtype(dtype).name
        except TypeError:
            raise ValueError(
                f"Received an invalid value for argument `--input`: {dtype!r} is not a dtype "
                f"(int32, int64, float32, bool, ...). Received: {text!r}"
            ) from None
    return parts[0].strip(), shape, dtype


def _profile_shapes(args):
    """(input_shape, input_dtype, flag) for `profile_model` from --input-shape / --input."""
    if args.input_shape and args.inputs:
        raise ValueError("give either --input-shape or --input NAME:SHAPE[:DTYPE], not both")
    if args.inputs:
        shapes, dtypes = {}, {}
        for text in args.inputs:
            name, shape, dtype = _parse_input(text)
            if name in shapes:
                raise ValueError(
                    f"Received an invalid value for argument `--input`: input {name!r} is "
                    f"given twice. Received: {text!r}"
                )
            shapes[name] = shape
            if dtype is not None:
                dtypes[name] = dtype
        return shapes, dtypes or None, "--input"
    if args.input_shape:
        shapes = [_parse_shape(t) for t in args.input_shape]
        return (shapes[0] if len(shapes) == 1 else shapes), None, "--input-shape"
    return None, None, "--input-shape"


def _for_cli(message: str, flag: str) -> str:
    """Name the command-line flag in an error of `profile_model`."""
    if "unknown non-batch dimensions" in message:
        named = re.search(r"has input '([^']+)'", message)
        how = (f"--input {named.group(1)}:1,128[:DTYPE] (one --input per model input)" if named
               else "--input-shape 1,128")  # fmt: skip
        return f"{message.split(' Pass `')[0]} Give every dimension, e.g. {how}."
    return (
        message.replace(" or `inputs=`", "")
        .replace("`input_shape=`", f"`{flag}`")
        .replace("`input_shape`", f"`{flag}`")
        .replace("`input_dtype`", "`--input`")
    )


def profile(args) -> int:
    from kerastrace.profiling import build_from_builder, profile_model

    input_shape, input_dtype, flag = _profile_shapes(args)
    if args.builder:
        if args.model:
            raise ValueError("give either MODEL or --builder path.py:function, not both")
        _custom_objects(args)
        model = build_from_builder(args.builder)
    elif not args.model:
        raise ValueError("give a MODEL.keras path or --builder path.py:function")
    else:
        model = _load_model(args)
    try:
        result = profile_model(
            model,
            input_shape=input_shape,
            input_dtype=input_dtype,
            batch_size=args.batch_size,
            depth=args.depth,
            trace=not args.no_trace,
            logdir=args.logdir,
        )
    except ValueError as exc:
        raise ValueError(_for_cli(str(exc), flag)) from exc
    if args.format == "json":
        print(result.to_json())
    elif args.format == "csv":
        print(result.to_csv(), end="")
    else:
        print(result.to_table(sort_by=args.sort_by, top_k=args.top_k))
    if args.logdir:
        result.to_tensorboard(args.logdir)
        print(f"\nOpen it in TensorBoard: {open_command(args.logdir)}")
    return 0


# ---------------------------------------------------------------- inputs
def _texts(args) -> list[str]:
    texts = list(args.text or [])
    if args.text_file:
        _check_exists(args.text_file, "--text-file")
        with open(args.text_file, encoding="utf-8") as f:
            texts += [line.rstrip("\n") for line in f if line.strip()]
    return texts


def _token_shape(model) -> tuple | None:
    """Shape `(None, T or None, ...)` of the model's token-id input (`token_ids` of a dict)."""
    from kerastrace._utils import instrument

    specs = instrument.input_specs(model)
    if isinstance(specs, dict):
        if "token_ids" not in specs:
            raise ValueError(
                f"MODEL: it takes a dict of inputs {sorted(specs)} without 'token_ids'; "
                "this command feeds token ids"
            )
        specs = specs["token_ids"]
    elif isinstance(specs, (list, tuple)):
        if len(specs) != 1:
            raise ValueError(
                f"MODEL: it takes {len(specs)} inputs; this command feeds one array of "
                "token ids (or a keras-hub dict with 'token_ids')"
            )
        specs = specs[0]
    shape = getattr(specs, "shape", None)
    return None if shape is None else tuple(shape)


def _max_sequence_length(model):
    """A keras-hub backbone's `max_sequence_length` (the position table's size), or None."""
    for obj in (model, getattr(model, "backbone", None)):
        n = getattr(obj, "max_sequence_length", None)
        if isinstance(n, int) and n > 0:
            return n
    return None


DEFAULT_SEQUENCE_LENGTH = 128


def _sequence_length(args, model) -> int:
    """Tokens per text: the model's fixed length, else --sequence-length, else 128 (capped)."""
    shape = _token_shape(model)
    fixed = shape[1] if shape is not None and len(shape) >= 2 else None
    given = getattr(args, "sequence_length", None)
    if given is not None and given < 2:
        raise ValueError(
            "Received an invalid value for argument `--sequence-length`, expected an integer "
            f">= 2 (room for [CLS] and [SEP]). Received: {given}"
        )
    if fixed is not None:
        if given is not None and given != fixed:
            raise ValueError(
                f"Received an invalid value for argument `--sequence-length`: the model takes "
                f"exactly {fixed} tokens. Received: {given}"
            )
        return int(fixed)
    if given is not None:
        return given
    cap = _max_sequence_length(model)
    return min(DEFAULT_SEQUENCE_LENGTH, cap) if cap else DEFAULT_SEQUENCE_LENGTH


def _check_vocab(tokenizer, model):
    """Refuse a vocabulary with more tokens than the model's token embedding has rows."""
    from kerastrace.explain import find_token_embedding

    try:
        embedding = find_token_embedding(model)
    except ValueError:  # no token embedding: the command's own call says what is wrong
        return
    rows = int(embedding.input_dim)
    if tokenizer.vocab_size > rows:
        raise ValueError(
            f"Received an invalid value for argument `--vocab`: it has {tokenizer.vocab_size} "
            f"tokens but the model's token embedding {embedding.name!r} has {rows} rows "
            f"(ids >= {rows} would be out of range); use the vocabulary the model was "
            "trained with"
        )


def _tokenizer(args, model):
    if not args.vocab:
        raise ValueError("--vocab is required with --text/--text-file")
    _check_exists(args.vocab, "--vocab")
    from kerastrace.text import Tokenizer

    tokenizer = Tokenizer(args.vocab, sequence_length=_sequence_length(args, model))
    _check_vocab(tokenizer, model)
    return tokenizer


def _token_inputs(args, model):
    """(ids, mask, tokenizer or None, tokenized or None) from --text/--text-file/--npy."""
    texts = _texts(args)
    if args.npy and texts:
        raise ValueError("give either --npy or --text/--text-file, not both")
    if args.npy:
        _check_exists(args.npy, "--npy")
        ids = np.load(args.npy)
        shape = _token_shape(model)
        expected = shape[1:] if shape is not None else (None,)
        if ids.ndim == len(expected):
            ids = ids[None]
        fits = ids.ndim == len(expected) + 1 and all(
            e is None or e == d for e, d in zip(expected, ids.shape[1:])
        )
        if not fits or not np.issubdtype(ids.dtype, np.integer):
            dims = ", ".join("T" if d is None else str(d) for d in expected)
            raise ValueError(
                f"--npy: the array's shape {ids.shape} ({ids.dtype}) does not fit the model's "
                f"input shape (batch, {dims}) of integer token ids"
            )
        return ids, ids != 0, None, None
    if not texts:
        raise ValueError("give --text, --text-file or --npy")
    tokenizer = _tokenizer(args, model)
    tok = tokenizer.tokenize(texts)
    return tok.ids, tok.mask, tokenizer, tok


# ---------------------------------------------------------------- explain
def explain(args) -> int:
    from kerastrace import explain as ex
    from kerastrace import visualization as viz

    model = _load_model(args)
    ids, mask, tokenizer, tok = _token_inputs(args, model)
    if tokenizer is not None:
        explanations = ex.explain_text(
            model, tokenizer, tok.texts, method=args.method, target=args.target,
            n_steps=args.steps,
        )
        records = [e.to_dict() for e in explanations]
        for i, e in enumerate(explanations):
            words = ", ".join(f"{w}={s:+.3f}" for w, _, s in e.words)
            print(f"[{i}] class {e.target} (p={e.probabilities[e.target]:.2f}): {words}")
        page = viz.explanations_page(explanations, title=f"kerastrace explain: {args.method}")
        scores = np.stack([e.token_scores for e in explanations])
        tokens = [e.tokens for e in explanations]
        mask = np.stack([e.mask for e in explanations])
    else:
        scores, targets, delta = ex.token_attributions(
            model, ids, method=args.method, target=args.target, n_steps=args.steps, mask=mask
        )
        records = [
            {"index": i, "target": int(targets[i]), "token_scores": scores[i].tolist(),
             "delta": None if delta is None else float(delta[i])}
            for i in range(len(ids))
        ]
        tokens = [[str(t) for t in row] for row in ids.tolist()]
        page = viz.attributions_page(
            tokens=tokens, scores={args.method: scores}, mask=mask, targets=targets,
            deltas=None if delta is None else {args.method: delta},
            title=f"kerastrace explain: {args.method}", intro="Scores of the token ids.",
        )
        for r in records:
            print(f"[{r['index']}] class {r['target']}: {np.round(r['token_scores'], 3).tolist()}")
    from kerastrace.visualization import plot_token_attributions

    fig, _ = plot_token_attributions(scores[0], tokens[0], mask=mask[0], title=args.method)
    _write_outputs(args.output_dir, {
        "explanations.json": json.dumps({"method": args.method, "explanations": records},
                                        indent=2, ensure_ascii=False),
        "explanations.html": page,
        "explanation_0.png": _png(fig, 100),
    })  # fmt: skip
    if args.logdir:
        from kerastrace.tensorboard import write_token_attributions

        write_token_attributions(args.logdir, scores, tokens, step=0, name=args.method, mask=mask)
    print(f"wrote {args.output_dir}/explanations.json, explanations.html, explanation_0.png")
    if args.logdir:
        print(f"Open it in TensorBoard: {open_command(args.logdir)}")
    return 0


# ---------------------------------------------------------------- attention
def _check_attention_choice(args, weights):
    """Validate --layer, --head and --stack against the collected maps; return them."""
    keys = list(weights)
    layer = args.layer or keys[-1]
    if layer not in weights:
        raise ValueError(
            f"Received an invalid value for argument `--layer`: no attention map {layer!r}; "
            f"choose from {keys}"
        )
    heads = int(weights[layer].shape[1])
    if not 0 <= args.head < heads:
        raise ValueError(
            f"Received an invalid value for argument `--head`, expected 0 <= head < {heads} "
            f"({layer!r} has {heads} heads). Received: {args.head}"
        )
    stacks = weights.stacks
    if args.stack is not None and args.stack not in stacks:
        raise ValueError(
            f"Received an invalid value for argument `--stack`, expected one of "
            f"{sorted(stacks)}. Received: {args.stack!r}"
        )
    if args.stack == "cross":
        raise ValueError(
            "Received an invalid value for argument `--stack`: rollout chains "
            "self-attention maps over one token axis; the 'cross' stack has none. Choose "
            f"one of {sorted(s for s in stacks if s != 'cross')}."
        )
    chosen = [args.stack] if args.stack else [s for s in stacks if s != "cross"]
    return layer, chosen


def _on_tokens(weights, n):
    """The maps whose queries and keys are the `n` input tokens."""
    return {k: w for k, w in weights.items() if w.shape[-1] == n and w.shape[-2] == n}


def attention(args) -> int:
    from kerastrace import attention as att
    from kerastrace.explain import model_inputs
    from kerastrace.visualization import plot_attention_head, plot_model_view, plot_rollout

    model = _load_model(args)
    ids, mask, _, tok = _token_inputs(args, model)
    weights = att.collect(model, model_inputs(model, ids, mask))
    layer, stacks = _check_attention_choice(args, weights)  # before any file is written
    tokens = tok.tokens[0] if tok is not None else [str(t) for t in ids[0].tolist()]
    n = len(tokens)
    buf = io.BytesIO()
    np.savez_compressed(
        buf, **{k.replace("/", "__").replace(":", "__call"): w for k, w in weights.items()}
    )
    files = {"attention.npz": buf.getvalue()}
    on_tokens = _on_tokens(weights, n)
    fig, _ = plot_model_view(on_tokens, tokens, mask=mask[0])
    files["model_view.png"] = _png(fig, 80)
    fig, _ = plot_attention_head(weights[layer], tokens, head=args.head, mask=mask[0],
                                 title=f"{layer} head {args.head}")
    files["head.png"] = _png(fig, 100)
    for stack in stacks:
        maps = weights.stack(stack)
        if not _on_tokens(maps, n):
            continue
        rollout = att.attention_rollout(maps, mask=mask)
        one = len(weights.stacks) == 1
        name = "rollout.png" if one else f"rollout_{stack}.png"
        fig, _ = plot_rollout(rollout, tokens, query=0, mask=mask[0],
                              title="attention rollout" + ("" if one else f" ({stack})"))
        files[name] = _png(fig, 100)
    stats = att.head_statistics(on_tokens, mask=mask)
    summary = {
        "layers": {k: list(w.shape) for k, w in weights.items()},
        "stacks": weights.stacks,
        "head_statistics": {k: float(v) for k, v in stats.scalars().items()},
    }
    files["attention.json"] = json.dumps(summary, indent=2)
    _write_outputs(args.output_dir, files)
    written = list(files)
    if args.logdir:
        from kerastrace.tensorboard import write_attention, write_head_statistics

        write_attention(args.logdir, on_tokens, tok.tokens if tok is not None else None, step=0,
                        mask=mask)
        write_head_statistics(args.logdir, stats, step=0)
    for k, w in weights.items():
        print(f"{k}: {tuple(w.shape)}")
    print(f"wrote {args.output_dir}/{', '.join(written)}")
    if args.logdir:
        print(f"Open it in TensorBoard: {open_command(args.logdir)}")
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

    model = _load_model(args)
    queries = _texts(args)
    if not queries:
        raise ValueError("give --text or --text-file")
    if not args.vocab:
        raise ValueError("--vocab is required")
    texts, labels = _read_train_file(args.train_file)
    tokenizer = _tokenizer(args, model)
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


# ---------------------------------------------------------------- generation
class _VocabTokenizer:
    """Prompt text -> ids: whole vocabulary tokens where every word is one, else WordPiece."""

    def __init__(self, path):
        from kerastrace.text import Tokenizer, load_vocabulary

        self.vocab = list(load_vocabulary(path))
        self.index = {t: i for i, t in enumerate(self.vocab)}
        self._wordpiece = None
        self._path = path
        self._tokenizer_cls = Tokenizer

    def __call__(self, text):
        words = text.split()
        if words and all(w in self.index for w in words):
            return [self.index[w] for w in words]
        if self._wordpiece is None:
            self._wordpiece = self._tokenizer_cls(
                self.vocab, sequence_length=512, add_special_tokens=False
            )
        tok = self._wordpiece.tokenize([text])
        return tok.ids[0][tok.mask[0]].tolist()

    def id_to_token(self, i):
        return self.vocab[int(i)] if 0 <= int(i) < len(self.vocab) else str(int(i))

    def token_id(self, token):
        if token in self.index:
            return self.index[token]
        raise ValueError(
            f"--contrast-with: {token!r} is not a token of the vocabulary "
            f"({len(self.vocab)} tokens in {self._path})"
        )


def _ids_option(text, arg):
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        ids = []
    if not ids or any(i < 0 for i in ids):
        raise ValueError(
            f"{arg}: expected comma-separated non-negative token ids such as 3,17,5. "
            f"Received: {text!r}"
        )
    return ids


def _prompt(args):
    """(prompt, tokenizer) from --prompt/--prompt-ids/--vocab; checked before any work."""
    if bool(args.prompt) == bool(args.prompt_ids):
        raise ValueError("give exactly one of --prompt TEXT or --prompt-ids 3,17,5")
    tokenizer = None
    if args.vocab:
        _check_exists(args.vocab, "--vocab")
        tokenizer = _VocabTokenizer(args.vocab)
    if args.prompt:
        if tokenizer is None:
            raise ValueError("--prompt needs --vocab (or give --prompt-ids)")
        if not args.prompt.strip():
            raise ValueError("--prompt: the prompt is empty")
        return args.prompt, tokenizer
    return _ids_option(args.prompt_ids, "--prompt-ids"), tokenizer


def generate(args) -> int:
    from kerastrace import generation

    prompt, tokenizer = _prompt(args)
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens: expected a positive integer. Received: "
                         f"{args.max_new_tokens}")
    model = _load_model(args)
    tracer = generation.GenerationTracer(model, args.method, tokenizer=tokenizer)
    contrast = None
    if args.contrast_with is not None:
        token = args.contrast_with
        contrast = int(token) if token.isdigit() else (
            tokenizer.token_id(token) if tokenizer is not None else None
        )
        if contrast is None:
            raise ValueError("--contrast-with: give a token id, or --vocab to name a token")
    kw = {"contrast": contrast, "score": args.score,
          "sampling": "sample" if args.sample else "greedy", "seed": args.seed}
    if args.continuation is not None:
        cont = args.continuation if args.prompt else _ids_option(args.continuation,
                                                                  "--continuation")
        trace = tracer.trace(prompt, continuation=[cont] if not isinstance(cont, str) else cont,
                             **kw)
    else:
        trace = tracer.trace(prompt, args.max_new_tokens, **kw)
    fig, _ = trace.plot(0)
    _write_outputs(args.output_dir, {"trace.json": trace.to_json(), "trace.html": trace.to_html(),
                                     "sources.png": _png(fig, 100)})  # fmt: skip
    if args.logdir:
        trace.to_tensorboard(args.logdir)
    toks = trace._tokens(0)
    p_len = len(trace.prompt_ids[0])
    print("prompt:   " + " ".join(toks[:p_len]))
    print("generated:" if not trace.forced else "forced:   ", " ".join(toks[p_len:]))
    for k, srcs in enumerate(trace.top_sources(3, 0)):
        s = trace.steps[0]
        tops = ", ".join(f"{t} {sc:+.3f}" for _, t, sc in srcs)
        print(f"  {toks[p_len + k]!r:<14} p={float(s['probability'][k]):.3f} "
              f"rank={int(s['rank'][k])}  sources: {tops}")
    print(f"wrote {args.output_dir}/trace.json, trace.html, sources.png")
    return 0


def lens(args) -> int:
    from kerastrace import generation

    prompt, tokenizer = _prompt(args)
    if args.top_k < 1:
        raise ValueError(f"--top-k: expected a positive integer. Received: {args.top_k}")
    model = _load_model(args)
    result = generation.logit_lens(model, prompt, tokenizer=tokenizer, top_k=args.top_k)
    fig, _ = result.plot()
    _write_outputs(args.output_dir, {"logit_lens.json": result.to_json(),
                                     "logit_lens.png": _png(fig, 100)})  # fmt: skip
    last = len(result.tokens) - 1
    print(f"next token after {' '.join(result.tokens)!r}, layer by layer:")
    for li, name in enumerate(result.layers):
        tops = ", ".join(
            f"{result._str(t)} {p:.2f}"
            for t, p in zip(result.top_tokens[li, last], result.top_probabilities[li, last])
        )
        print(f"  {name:<28} {tops}")
    print(f"wrote {args.output_dir}/logit_lens.json, logit_lens.png")
    return 0


# ---------------------------------------------------------------- influence
def _for_influence_cli(message: str) -> str:
    """Name the command-line flags in an error of `influence_for_texts`."""
    hints = {"`learning_rates`": "--learning-rate LR (once per checkpoint, or one for all)",
             "`checkpoints`": "--checkpoints", "`layers`": "--layer",
             "`projection_dim`": "--projection-dim", "`output_dir`": "--index-dir"}  # fmt: skip
    for arg, flag in hints.items():
        if f"argument {arg}" in message:
            return f"{message} [command line: {flag}]"
    return message


def influence(args) -> int:
    from kerastrace.influence import influence_for_texts

    queries = _texts(args)
    if not queries:
        raise ValueError("give --text or --text-file")
    if not args.vocab:
        raise ValueError("--vocab is required")
    if args.k < 1:
        raise ValueError(f"-k: expected a positive integer. Received: {args.k}")
    texts, labels = _read_train_file(args.train_file)
    if labels is None:
        raise ValueError(
            "--train-file: TracIn differentiates the training loss, which needs the labels: "
            "give `label<TAB>text` on every line"
        )
    model = _load_model(args)
    tokenizer = _tokenizer(args, model)
    rates = args.learning_rate
    if rates is not None and len(rates) == 1:
        rates = rates[0]
    try:
        results = influence_for_texts(
            model, tokenizer, texts, labels, queries, args.checkpoints, k=args.k,
            learning_rates=rates, layers=args.layer, projection_dim=args.projection_dim,
            index_dir=args.index_dir,
        )  # fmt: skip
    except ValueError as exc:
        raise ValueError(_for_influence_cli(str(exc))) from exc
    if args.format == "json":
        print(json.dumps(results, indent=2, ensure_ascii=False))
        return 0
    for r in results:
        print(f"query: {r['query']} (predicted class {r['predicted']})")
        for kind, title in (("proponents", "most supported by"), ("opponents", "most opposed by")):
            print(f"  {title} ({kind}):")
            for e in r[kind]:
                print(f"    {e['rank']}. score={e['score']:+.4g} label={e['label']} {e['text']}")
    return 0
