"""Structured data for the kerastrace TensorBoard dashboard (the `kerastrace` plugin).

The writers here log what the dashboard's interactive views read: attention
weights with their tokens (`write_attention_data`), token and word
attributions with the prediction (`write_attribution_data`,
`write_explanations`), generation traces (`write_generation_data`),
per-layer profiles (`write_profile_data`) and per-layer gradient norms
(`write_gradient_flow_data`). Each writes one record per call: a
`tf.summary` tensor of the plugin `"kerastrace"` under the tag
`"kerastrace/<name>"` (format: `kerastrace.tensorboard.plugin._format`).
The monitors of `kerastrace.tensorboard` call them every logged epoch;
open the results with `tensorboard --logdir <logdir>`, tab "KERASTRACE".

`write_model_graph` writes a model's op graph for TensorBoard's Graphs tab.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from kerastrace._utils import validation as v
from kerastrace.tensorboard._writers import _bool_rows, _check_step, _tokens_for, _writing
from kerastrace.tensorboard.plugin import _format as fmt

__all__ = [
    "method_name",
    "model_probabilities",
    "write_attention_data",
    "write_attribution_data",
    "write_explanations",
    "write_generation_data",
    "write_gradient_flow_data",
    "write_model_graph",
    "write_profile_data",
]


def _metadata(kind: str) -> bytes:
    from tensorboard.compat.proto import summary_pb2

    md = summary_pb2.SummaryMetadata()
    md.plugin_data.plugin_name = fmt.PLUGIN_NAME
    md.plugin_data.content = fmt.content(kind)
    md.data_class = summary_pb2.DATA_CLASS_TENSOR
    return md.SerializeToString()


def _check_name(name) -> str:
    if not isinstance(name, str) or not name.strip() or name.startswith("/"):
        raise v.invalid("name", "a non-empty record name such as 'attention'", name)
    return name


def _record(logdir_or_writer, name, kind, payload, step, blob=None) -> str:
    """Write one record; returns its tag."""
    tag = fmt.tag_for(name)
    values = [fmt.encode(payload)] + ([blob] if blob is not None else [])
    with _writing(logdir_or_writer):
        tf.summary.write(tag, tf.constant(values, tf.string), step=step, metadata=_metadata(kind))
    return tag


def _round(a, digits=5):
    return np.round(np.asarray(a, np.float64), digits).tolist()


# ----------------------------------------------------------------- attention


def _special_row(special, t, batch):
    """`(T,)` bool of special positions from a `(B, T)`/`(T,)` bool array or positions."""
    if special is None:
        return None
    arr = np.asarray(special)
    if arr.dtype == bool:
        if arr.ndim == 2:
            arr = arr[batch]
        if arr.shape != (t,):
            raise v.invalid("special", f"a ({t},) or (B, {t}) boolean array or positions", special)
        return arr
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise v.invalid("special", "a boolean array or a list of positions", special)
    if arr.size and (arr.min() < -t or arr.max() >= t):
        raise v.invalid("special", f"positions in [0, {t})", special)
    out = np.zeros(t, bool)
    out[arr] = True
    return out


def _stats_payload(stats, layers, heads):
    """`{stat: [layer][head]}` of a HeadStatistics (or its dict), rows ordered as `layers`.

    Rows are cut to each layer's `heads` (HeadStatistics pads ragged layers with NaN).
    """
    get = (lambda k: stats.get(k)) if isinstance(stats, Mapping) else (
        lambda k: getattr(stats, k, None))
    names = list(get("layers") or layers)
    out = {}
    for stat in ("entropy", "distance", "special_share"):
        arr = get(stat)
        if arr is None:
            continue
        arr = np.asarray(arr, np.float64)
        rows = {n: arr[i] for i, n in enumerate(names) if i < len(arr)}
        out[stat] = [_round(rows[n][:h], 4) if n in rows else None
                     for n, h in zip(layers, heads)]
    return out


def write_attention_data(
    logdir_or_writer,
    weights_by_layer: Mapping[str, np.ndarray],
    tokens: Sequence[str] | Sequence[Sequence[str]] | None = None,
    step: int = 0,
    *,
    batch: int = 0,
    mask=None,
    special=None,
    stats=None,
    stats_prefix: str | None = None,
    rollout: bool = True,
    name: str = "attention",
) -> str:
    """Log one example's attention for the dashboard's attention view.

    Writes the weights of every layer and head (masked positions left out,
    stored as float16), the tokens, the attention rollout (when every layer
    is self-attention over the same tokens) and the per-head statistics.
    The view shows bertviz-style head lines, heatmaps, the layer x head grid
    and the rollout; with `stats_prefix` (the prefix `write_head_statistics`
    used, e.g. `"heads"`) it also plots those scalars over the steps.

    Args:
        logdir_or_writer: Log directory or a `tf.summary.SummaryWriter`.
        weights_by_layer: `{layer: (B, H, T_q, T_k)}`, e.g. from
            `kerastrace.attention.collect`.
        tokens: `T` token strings, or one list per example (default: positions).
        step: Summary step (e.g. the epoch).
        batch: Example logged.
        mask: Optional `(B, T)` or `(T,)` boolean array, True on real tokens.
        special: Optional special positions (`[0]`) or a boolean array, shown
            greyed in the view.
        stats: Optional `kerastrace.attention.HeadStatistics` to log (default:
            computed from this example).
        stats_prefix: Tag prefix of head-statistics scalars to plot over steps.
        rollout: Also log the attention rollout.
        name: Record name (tag `"kerastrace/<name>"`).

    Returns:
        The tag written.

    Raises:
        ValueError: for a bad `step`, `batch`, `name` or shapes that do not fit.

    Example:

    >>> import tempfile, numpy as np
    >>> from kerastrace.tensorboard import write_attention_data
    >>> w = {"block/attention": np.full((1, 2, 3, 3), 1 / 3)}
    >>> write_attention_data(tempfile.mkdtemp(), w, ["a", "b", "c"])
    'kerastrace/attention'
    """
    from kerastrace.attention import attention_rollout, head_statistics

    step = _check_step(step)
    name = _check_name(name)
    if not isinstance(weights_by_layer, Mapping) or not weights_by_layer:
        raise v.invalid("weights_by_layer", "a non-empty dict {layer: (B, H, T, T)}",
                        type(weights_by_layer).__name__)
    arrays = {str(k): np.asarray(w, np.float32) for k, w in weights_by_layer.items()}
    for key, w in arrays.items():
        if w.ndim != 4:
            raise ValueError(
                "Received an invalid value for argument `weights_by_layer`, expected "
                f"(B, H, T_q, T_k) arrays. Received: {key!r} of shape {w.shape}"
            )
    first = next(iter(arrays.values()))
    b = first.shape[0]
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or not 0 <= batch < b:
        raise v.invalid("batch", f"an example index in [0, {b})", batch)
    squares = [w.shape[-1] for w in arrays.values() if w.shape[-1] == w.shape[-2]]
    t = squares[0] if squares else first.shape[-1]
    toks = _tokens_for(tokens, b, t)[batch]
    if len(toks) != t:
        raise ValueError(
            f"Received an invalid value for argument `tokens`, expected {t} tokens (the "
            f"attention's sequence length). Received: {len(toks)} tokens"
        )
    m = np.ones(t, bool) if mask is None else _bool_rows("mask", mask, b, t)[batch]
    keep = np.flatnonzero(m)
    sp = _special_row(special, t, batch)
    layers, chunks, offset, causal = [], [], 0, True
    for key, w in arrays.items():
        x = w[batch]
        if x.shape[1] == t:
            x = x[:, keep]
        if x.shape[2] == t:
            x = x[:, :, keep]
        kind = "self" if x.shape[1] == x.shape[2] == len(keep) else "cross"
        if kind == "self" and x.shape[-1] > 1:
            causal = causal and bool(np.abs(np.triu(x, 1)).max() <= 1e-6)
        chunk = np.ascontiguousarray(x, dtype="<f2")
        layers.append({"name": key, "heads": int(x.shape[0]), "query_len": int(x.shape[1]),
                       "key_len": int(x.shape[2]), "offset": offset, "kind": kind})
        offset += chunk.size
        chunks.append(chunk.tobytes())
    self_only = all(layer["kind"] == "self" for layer in layers)
    roll = None
    if rollout and self_only:
        r = attention_rollout([w[batch: batch + 1] for w in arrays.values()], mask=m[None])
        roll = _round(r[0][np.ix_(keep, keep)], 4)
    if stats is None:
        stats = head_statistics({k: w[batch: batch + 1] for k, w in arrays.items()},
                                mask=None if not self_only else m[None],
                                special=None if sp is None or not self_only else sp[None])
    payload = {
        "example": int(batch),
        "tokens": [str(toks[i]) for i in keep],
        "positions": keep.tolist(),
        "special": None if sp is None else sp[keep].tolist(),
        "layers": layers,
        "dtype": "float16",
        "rollout": roll,
        "causal": bool(causal and self_only),
        "stats": _stats_payload(stats, list(arrays), [x["heads"] for x in layers]),
        "stats_prefix": stats_prefix,
    }
    return _record(logdir_or_writer, name, fmt.ATTENTION, payload, step, b"".join(chunks))


# --------------------------------------------------------------- attribution


def _probabilities(outputs) -> np.ndarray | None:
    """`(B, C)` class probabilities from `(B, C)` model outputs (logits or probabilities)."""
    arr = np.asarray(outputs, np.float64)
    if arr.ndim != 2 or not np.all(np.isfinite(arr)):
        return None
    if arr.shape[1] == 1:
        p = arr[:, 0]
        if p.min() < 0 or p.max() > 1:
            p = 1.0 / (1.0 + np.exp(-p))
        return np.stack([1 - p, p], axis=1)
    if arr.min() >= 0 and arr.max() <= 1 and np.allclose(arr.sum(-1), 1.0, atol=1e-3):
        return arr
    e = np.exp(arr - arr.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def model_probabilities(model, inputs) -> np.ndarray | None:
    """Class probabilities of a classifier on `inputs`, or None for other outputs.

    Runs `model(inputs, training=False)`; a `(B, C)` output is returned as
    is when it already holds probabilities (rows in `[0, 1]` summing to 1),
    else as its softmax (a sigmoid for one column, given as `[1 - p, p]`).
    Outputs of another rank (e.g. a language model's `(B, T, V)`) give None.

    Args:
        model: A Keras model (the first output is used when it has several).
        inputs: What the model is called on (array, tuple or keras-hub dict).

    Returns:
        A `(B, C)` float array, or None.

    Example:

    >>> import numpy as np, keras
    >>> from kerastrace.tensorboard import model_probabilities
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, use_bias=False,
    ...                           kernel_initializer="zeros")])
    >>> model_probabilities(model, np.ones((1, 2))).tolist()
    [[0.5, 0.5]]
    """
    out = model(inputs, training=False)
    if isinstance(out, Mapping):
        out = next(iter(out.values()))
    if isinstance(out, (list, tuple)):
        out = out[0]
    return _probabilities(np.asarray(out))


def method_name(fn) -> str:
    """A readable name for an attribution function (`"attribution"` for lambdas)."""
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return "attribution" if name == "<lambda>" else str(name)


def _word_entries(words, method, i):
    """`[(word, start, end, score)]` from WordScore-like items of example `i`."""
    out = []
    for w in words:
        word = getattr(w, "word", None)
        if word is not None:
            span, score = w.span, w.score
        else:
            try:
                word, span, score = w
            except (TypeError, ValueError):
                raise v.invalid(
                    "words", "per example a list of (word, (start, end), score) as returned "
                    "by kerastrace.text.aggregate_to_words", w,
                    hint=f"method {method!r}, example {i}") from None
        out.append((str(word), int(span[0]), int(span[1]), float(score)))
    return out


def _example(tokens, scores, shown, special, text=None, words=None, probabilities=None,
             target=None, label=None):
    """One example of an attribution record. `scores`: `{method: (T,)}`; `words`: `{method: entries}`."""
    keep = np.flatnonzero(shown)
    ex = {
        "text": None if text is None else str(text),
        "tokens": [str(tokens[j]) for j in keep],
        "positions": keep.tolist(),
        "special": np.asarray(special, bool)[keep].tolist(),
        "scores": {m: _round(np.asarray(s)[keep]) for m, s in scores.items()},
        "words": None,
        "word_scores": None,
        "predicted": None,
        "probability": None,
        "probabilities": None,
        "target": None if target is None else int(target),
        "label": None if label is None else (int(label) if isinstance(label, (int, np.integer))
                                             else str(label)),
    }
    if words:
        first = next(iter(words.values()))
        ex["words"] = [{"word": w, "start": s, "end": e} for w, s, e, _ in first]
        ex["word_scores"] = {m: _round([x[3] for x in entries]) for m, entries in words.items()}
    if probabilities is not None:
        p = np.asarray(probabilities, np.float64).ravel()
        if p.size:
            ex["predicted"] = int(np.argmax(p))
            ex["probability"] = float(p[ex["predicted"]])
            ex["probabilities"] = _round(p, 5) if p.size <= 50 else None
            if ex["target"] is None:
                ex["target"] = ex["predicted"]
    return ex


def _per_example(name, value, b):
    if value is None:
        return [None] * b
    seq = list(np.asarray(value).tolist()) if not isinstance(value, (list, tuple)) else list(value)
    if len(seq) != b:
        raise v.invalid(name, f"one entry per example ({b})", value)
    return seq


def write_attribution_data(
    logdir_or_writer,
    scores,
    tokens: Sequence[str] | Sequence[Sequence[str]] | None = None,
    step: int = 0,
    *,
    name: str = "attributions",
    mask=None,
    special=None,
    texts: Sequence[str] | None = None,
    words=None,
    probabilities=None,
    targets=None,
    labels=None,
    class_names: Sequence[str] | None = None,
    max_examples: int = 16,
) -> str:
    """Log token (and word) attributions with the prediction for the attribution view.

    The view colours the sentence by score (red supports the explained
    class, blue speaks against it), shows the user's words when `words`
    are given (tokens otherwise), the predicted class and its probability,
    and switches between the methods logged in one record.

    Args:
        logdir_or_writer: Log directory or a `tf.summary.SummaryWriter`.
        scores: `(T,)` or `(B, T)` token scores, or `{method: scores}` to log
            several methods on the same examples.
        tokens: `T` token strings, or one list per example (default: positions).
        step: Summary step.
        name: Record name (tag `"kerastrace/<name>"`).
        mask: Optional `(B, T)`/`(T,)` boolean array, True on tokens to show.
        special: Optional `(B, T)`/`(T,)` boolean array, True on special tokens
            (shown greyed, left out of the colour scale).
        texts: The original strings, one per example.
        words: Word scores of each example, as returned by
            `kerastrace.text.aggregate_to_words` (one list of
            `(word, (start, end), score)` per example), or
            `{method: such lists}` matching `scores`.
        probabilities: Optional `(B, C)` class probabilities (predicted class
            and its probability are shown).
        targets: Optional `(B,)` explained classes (default: the predicted ones).
        labels: Optional `(B,)` true labels.
        class_names: Optional names of the classes.
        max_examples: Examples logged.

    Returns:
        The tag written.

    Raises:
        ValueError: for a bad `step`, `name` or shapes that do not fit.

    Example:

    >>> import tempfile
    >>> from kerastrace.tensorboard import write_attribution_data
    >>> write_attribution_data(tempfile.mkdtemp(), {"saliency": [0.9, -0.1]}, ["good", "film"])
    'kerastrace/attributions'
    """
    step = _check_step(step)
    name = _check_name(name)
    max_examples = v.check_positive_int("max_examples", max_examples)
    by_method = dict(scores) if isinstance(scores, Mapping) else {"attribution": scores}
    if not by_method:
        raise v.invalid("scores", "token scores or a non-empty {method: scores}", scores)
    arrays = {}
    for method, s in by_method.items():
        a = np.asarray(s, np.float64)
        a = a[None] if a.ndim == 1 else a
        if a.ndim != 2:
            raise v.invalid("scores", "(T,) or (B, T) token scores", f"shape {a.shape}",
                            hint=f"method {method!r}")
        arrays[str(method)] = a
    shape = next(iter(arrays.values())).shape
    for method, a in arrays.items():
        if a.shape != shape:
            raise v.invalid("scores", f"every method with the same shape {shape}",
                            f"{method!r} of shape {a.shape}")
    b, t = shape
    toks = _tokens_for(tokens, b, t)
    if any(len(x) != t for x in toks):
        raise v.invalid("tokens", f"{t} tokens per example (the scores' length)",
                        [len(x) for x in toks])
    shown = np.ones((b, t), bool) if mask is None else _bool_rows("mask", mask, b, t)
    sp = _bool_rows("special", special, b, t)
    texts = _per_example("texts", texts, b)
    targets = _per_example("targets", targets, b)
    labels = _per_example("labels", labels, b)
    probs = None if probabilities is None else np.asarray(probabilities, np.float64)
    if probs is not None and (probs.ndim != 2 or probs.shape[0] != b):
        raise v.invalid("probabilities", f"a ({b}, C) array", f"shape {probs.shape}")
    if words is not None and not isinstance(words, Mapping):
        words = {next(iter(arrays)): words}
    if words is not None and not set(words) <= set(arrays):
        raise v.invalid("words", f"keys among the scores' methods {sorted(arrays)}",
                        sorted(words))
    examples = []
    for i in range(min(b, max_examples)):
        ex_words = None
        if words is not None:
            ex_words = {}
            for method, per_ex in words.items():
                if len(per_ex) != b:
                    raise v.invalid("words", f"one list per example ({b})", len(per_ex),
                                    hint=f"method {method!r}")
                ex_words[method] = _word_entries(per_ex[i], method, i)
            if len({len(e) for e in ex_words.values()}) > 1:
                raise v.invalid("words", "the same words for every method",
                                {m: len(e) for m, e in ex_words.items()})
        examples.append(_example(
            toks[i], {m: a[i] for m, a in arrays.items()}, shown[i], sp[i], texts[i], ex_words,
            None if probs is None else probs[i], targets[i], labels[i]))
    payload = {
        "methods": list(arrays),
        "class_names": None if class_names is None else [str(c) for c in class_names],
        "examples": examples,
    }
    return _record(logdir_or_writer, name, fmt.ATTRIBUTION, payload, step)


def write_explanations(
    logdir_or_writer,
    explanations,
    step: int = 0,
    *,
    name: str = "explanations",
    class_names: Sequence[str] | None = None,
) -> str:
    """Log `kerastrace.explain.explain_text` results for the attribution view.

    Explanations of the same text by several methods become one example
    whose method the view switches; the view shows the user's words (each
    explanation's `words`), the sentence, the explained class and its
    probability.

    Args:
        logdir_or_writer: Log directory or a `tf.summary.SummaryWriter`.
        explanations: A `TextExplanation` or a list of them.
        step: Summary step.
        name: Record name (tag `"kerastrace/<name>"`).
        class_names: Optional names of the classes.

    Returns:
        The tag written.

    Raises:
        ValueError: for no explanations or a bad `step`.
        TypeError: for objects that are not `TextExplanation`s.
    """
    step = _check_step(step)
    name = _check_name(name)
    items = [explanations] if hasattr(explanations, "token_scores") else list(explanations)
    if not items:
        raise v.invalid("explanations", "at least one TextExplanation", explanations)
    groups: dict = {}
    for e in items:
        if not all(hasattr(e, a) for a in ("text", "method", "tokens", "token_scores", "words")):
            raise TypeError(
                "Received an invalid value for argument `explanations`, expected "
                "TextExplanation objects (kerastrace.explain.explain_text). Received: "
                f"{type(e).__name__}"
            )
        groups.setdefault((e.text, len(e.tokens), int(getattr(e, "target", -1))), []).append(e)
    examples, methods = [], []
    for group in groups.values():
        e0 = group[0]
        t = len(e0.tokens)
        shown = np.ones(t, bool) if e0.mask is None else np.asarray(e0.mask, bool)
        sp = (np.zeros(t, bool) if getattr(e0, "special", None) is None
              else np.asarray(e0.special, bool))
        scores = {str(e.method): np.asarray(e.token_scores, np.float64) for e in group}
        words = {str(e.method): _word_entries(e.words, e.method, 0) for e in group}
        methods += [m for m in scores if m not in methods]
        ex = _example(e0.tokens, scores, shown, sp, e0.text, words,
                      getattr(e0, "probabilities", None), getattr(e0, "target", None))
        unknown = getattr(e0, "unknown_words", None)
        if unknown is not None and len(unknown) == len(ex["words"] or []):
            ex["unknown_words"] = [bool(u) for u in unknown]  # words the model read as [UNK]
        examples.append(ex)
    payload = {
        "methods": methods,
        "class_names": None if class_names is None else [str(c) for c in class_names],
        "examples": examples,
    }
    return _record(logdir_or_writer, name, fmt.ATTRIBUTION, payload, step)


# ---------------------------------------------------------------- generation


def write_generation_data(
    logdir_or_writer, trace, step: int = 0, *, name: str = "generation", id_to_token=None,
    max_examples: int = 16,
) -> str:
    """Log a `kerastrace.generation.GenerationTrace` for the generation view.

    The view shows each example's prompt and generated tokens coloured by a
    step score (probability, entropy, rank); clicking a generated token
    colours the tokens it came from by their source scores.

    Args:
        logdir_or_writer: Log directory or a `tf.summary.SummaryWriter`.
        trace: A `GenerationTrace` (anything with `to_dict()` giving its
            `examples`).
        step: Summary step.
        name: Record name (tag `"kerastrace/<name>"`).
        id_to_token: Optional callable id -> string naming the alternative
            tokens of each step (default: the strings of ids seen in the trace).
        max_examples: Examples logged.

    Returns:
        The tag written.

    Raises:
        TypeError: for an object without `to_dict()`.
        ValueError: for a bad `step` or `name`.
    """
    step = _check_step(step)
    name = _check_name(name)
    max_examples = v.check_positive_int("max_examples", max_examples)
    if not callable(getattr(trace, "to_dict", None)):
        raise TypeError(
            "Received an invalid value for argument `trace`, expected a GenerationTrace. "
            f"Received: trace={type(trace).__name__}"
        )
    data = trace.to_dict()
    examples = []
    for ex in data.get("examples", [])[:max_examples]:
        ids = list(ex.get("prompt_ids", [])) + list(ex.get("generated_ids", []))
        tokens = [str(t) for t in ex.get("tokens", ids)]
        known = {int(i): tok for i, tok in zip(ids, tokens)}
        steps = dict(ex.get("steps", {}))
        if "top_tokens" in steps:
            steps["top_token_strings"] = [
                [str(id_to_token(i)) if id_to_token else known.get(int(i), f"#{int(i)}")
                 for i in row]
                for row in steps["top_tokens"]
            ]
        examples.append({
            "prompt": ex.get("prompt"),
            "tokens": tokens,
            "prompt_len": len(ex.get("prompt_ids", [])),
            "sources": [_round(r) for r in ex.get("sources", [])],
            "steps": steps,
            "contrast": ex.get("contrast"),
        })
    payload = {
        "method": data.get("method"),
        "score": data.get("score"),
        "sampling": data.get("sampling"),
        "forced": bool(getattr(trace, "forced", False)),
        "examples": examples,
    }
    return _record(logdir_or_writer, name, fmt.GENERATION, payload, step)


# ------------------------------------------------------------------- profile


def _shape_text(s) -> str:
    if s is None:
        return ""
    if isinstance(s, (list, tuple)) and all(isinstance(d, (int, type(None))) for d in s):
        return "(" + ", ".join("None" if d is None else str(d) for d in s) + ")"
    if isinstance(s, (list, tuple)):
        return "[" + ", ".join(_shape_text(x) for x in s) + "]"
    if isinstance(s, Mapping):
        return "{" + ", ".join(f"{k}: {_shape_text(x)}" for k, x in s.items()) + "}"
    return str(s)


def write_profile_data(logdir_or_writer, profile, step: int = 0, *, name: str = "profile") -> str:
    """Log a per-layer profile for the profile view (sortable, collapsible table with bars).

    Args:
        logdir_or_writer: Log directory or a `tf.summary.SummaryWriter`.
        profile: A `kerastrace.profiling.ModelProfile` (or its `to_dict()`,
            e.g. read back from `profile.json`).
        step: Summary step.
        name: Record name (tag `"kerastrace/<name>"`).

    Returns:
        The tag written.

    Raises:
        TypeError: for anything else.
        ValueError: for a bad `step` or `name`.

    Example:

    >>> import tempfile, keras
    >>> from kerastrace.profiling import profile_model
    >>> from kerastrace.tensorboard import write_profile_data
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")])
    >>> write_profile_data(tempfile.mkdtemp(), profile_model(model, trace=False))
    'kerastrace/profile'
    """
    step = _check_step(step)
    name = _check_name(name)
    data = profile.to_dict() if callable(getattr(profile, "to_dict", None)) else profile
    if not isinstance(data, Mapping) or not isinstance(data.get("layers"), (list, tuple)):
        raise TypeError(
            "Received an invalid value for argument `profile`, expected a ModelProfile "
            f"(kerastrace.profiling.profile_model) or its to_dict(). Received: "
            f"profile={type(profile).__name__}"
        )
    payload = dict(data)
    rows = []
    for r in data["layers"]:
        row = dict(r)
        row["output_shape_text"] = _shape_text(row.get("output_shape"))
        row.pop("output_shape", None)
        if "params" not in row:
            row["params"] = int(row.get("trainable_params", 0)) + int(
                row.get("non_trainable_params", 0))
        rows.append(row)
    payload["layers"] = rows
    payload["input_shapes_text"] = _shape_text(data.get("input_shapes"))
    payload.pop("input_shapes", None)
    return _record(logdir_or_writer, name, fmt.PROFILE, payload, step)


# ------------------------------------------------------------- gradient flow


def write_gradient_flow_data(
    logdir_or_writer,
    norms: Mapping[str, float],
    step: int = 0,
    *,
    vanish_threshold: float = 1e-7,
    explode_threshold: float = 1e3,
    scalar_prefix: str | None = "gradient_norm",
    name: str = "gradient_flow",
) -> str:
    """Log per-layer gradient norms of one step for the gradient-flow view.

    The view plots the norms over the steps (read from the
    `"<scalar_prefix>/<layer>"` scalars `GradientFlow` writes, which keep
    more steps than TensorBoard keeps records, and from these records) and
    marks layers below `vanish_threshold` (vanishing) or above
    `explode_threshold` or not finite (exploding).

    Args:
        logdir_or_writer: Log directory or a `tf.summary.SummaryWriter`.
        norms: `{layer path: gradient norm}`.
        step: Summary step (the epoch).
        vanish_threshold: Norm below which a layer's gradient counts as vanished.
        explode_threshold: Norm above which it counts as exploding.
        scalar_prefix: Prefix of the scalar series to read, or None.
        name: Record name (tag `"kerastrace/<name>"`).

    Returns:
        The tag written.

    Raises:
        ValueError: for a bad `step`, thresholds or norms.

    Example:

    >>> import tempfile
    >>> from kerastrace.tensorboard import write_gradient_flow_data
    >>> write_gradient_flow_data(tempfile.mkdtemp(), {"dense": 0.5, "head": 1e-9})
    'kerastrace/gradient_flow'
    """
    step = _check_step(step)
    name = _check_name(name)
    vanish = v.check_non_negative_float("vanish_threshold", vanish_threshold)
    explode = v.check_non_negative_float("explode_threshold", explode_threshold)
    if explode <= vanish:
        raise v.invalid("explode_threshold", f"a value above vanish_threshold={vanish}", explode)
    if not isinstance(norms, Mapping):
        raise v.invalid("norms", "a dict {layer path: gradient norm}", type(norms).__name__)
    values, nonfinite = {}, []
    for path, x in norms.items():
        try:
            f = float(x)
        except (TypeError, ValueError):
            raise v.invalid("norms", "numbers", x, hint=f"layer {path!r}") from None
        if not math.isfinite(f):
            nonfinite.append(str(path))
        values[str(path)] = f
    payload = {
        "norms": values,
        "nonfinite": nonfinite,
        "vanish_threshold": vanish,
        "explode_threshold": explode,
        "scalar_prefix": scalar_prefix,
    }
    return _record(logdir_or_writer, name, fmt.GRADIENT_FLOW, payload, step)


# --------------------------------------------------------------------- graph


def write_model_graph(logdir_or_writer, model, inputs) -> None:
    """Write the op graph of `model(inputs, training=False)` for TensorBoard's Graphs tab.

    Traces the forward pass into a `tf.function` (batch dimension left
    free) and writes its graph with `tf.summary.graph`; ops are grouped by
    the layers' name scopes. Use it instead of `keras.callbacks.TensorBoard`'s
    `write_graph`, whose Keras-3 model configuration TensorBoard 2.21 cannot
    draw when the model calls ops with constant arguments (`x[:, 0]`,
    `ops.not_equal(ids, 0)`).

    Args:
        logdir_or_writer: Log directory or a `tf.summary.SummaryWriter`.
        model: A built Keras model (TensorFlow backend).
        inputs: Example inputs (array, tuple or dict): their dtypes and shapes
            after the batch axis define the traced signature.

    Raises:
        ValueError: for inputs without a batch axis.
        TypeError: for a bad `logdir_or_writer`.

    Example:

    >>> import tempfile, numpy as np, keras
    >>> from kerastrace.tensorboard import write_model_graph
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
    >>> write_model_graph(tempfile.mkdtemp(), model, np.ones((1, 3), "float32"))
    """

    def spec(a):
        a = a if hasattr(a, "dtype") and hasattr(a, "shape") else np.asarray(a)
        shape = tuple(a.shape)
        if not shape:
            raise v.invalid("inputs", "arrays with a batch axis", a)
        return tf.TensorSpec((None, *shape[1:]), tf.as_dtype(a.dtype))

    specs = tf.nest.map_structure(spec, inputs)
    fn = tf.function(lambda x: model(x, training=False))
    graph = fn.get_concrete_function(specs).graph
    with _writing(logdir_or_writer):
        tf.summary.graph(graph)
