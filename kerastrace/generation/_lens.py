"""Logit lens: the next-token distribution read after every transformer block."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from kerastrace._utils import instrument, tf_compat
from kerastrace._utils import validation as v
from kerastrace.generation._lm import CausalLM, as_prompts
from kerastrace.generation._results import LogitLens


def _lens_fn(lm: CausalLM, blocks):
    """Compiled: hidden states after every block, then each through the model's tail.

    The tail is "everything after the last block": the final normalization and
    the output head (a tied embedding's reverse call included). It is applied
    by re-running the model with the last block's output replaced by the
    hidden state of another layer, so any model works without knowing its
    head; at the last block this is the model's own output.
    """
    model = lm.model
    last = blocks[-1]
    first = blocks[0]

    def body(inputs):
        states = []
        with instrument.capture(first, call=0, what="input") as head_in:
            with _capture_all(blocks) as captures:
                model(inputs, training=False)
        states.append(head_in.values[0])
        states.extend(c.values[0] for c in captures)
        out = []
        for h in states:
            with instrument.replace(last, h, call=0):
                out.append(tf.nn.softmax(tf.cast(model(inputs, training=False), tf.float32), -1))
        return tf.stack(out, 0)  # (L + 1, B, T, V)

    return tf_compat.function(body, reduce_retracing=True)


class _capture_all:
    """Capture the output of call 0 of several layers at once."""

    def __init__(self, layers):
        self.layers = layers
        self._stack = None

    def __enter__(self):
        import contextlib

        self._stack = contextlib.ExitStack()
        return [self._stack.enter_context(instrument.capture(layer, 0)) for layer in self.layers]

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)


def logit_lens(model, prompt, tokenizer=None, top_k: int = 5, layers=None, pad_id: int = 0):
    """Read the next-token distribution after every block (the logit lens).

    For each transformer block (and the embeddings before the first), the
    model's final normalization and output head are applied to that block's
    hidden state. Works for keras-hub `CausalLM`s (tied output head) and
    models built from kerastrace or stock Keras layers. At the last block the
    distribution is the model's own.

    Args:
        model: A Keras causal LM (logits `(B, T, V)`), or a `CausalLM`.
        prompt: Text (with `tokenizer`) or token ids; one prompt.
        tokenizer: A `kerastrace.text.Tokenizer` or a callable.
        top_k: Tokens kept per layer and position.
        layers: Block paths to read (default: every block holding a
            self-attention layer, in call order).
        pad_id: Padding id.

    Returns:
        A `LogitLens`.

    Example:

    >>> from kerastrace.generation import logit_lens
    >>> from kerastrace.testing.model_zoo import keras_io_mini_gpt
    >>> lens = logit_lens(keras_io_mini_gpt(vocab_size=20, maxlen=8), [3, 7, 5], top_k=3)
    >>> lens.layers[0], lens.top_tokens.shape
    ('embeddings', (3, 3, 3))

    References:
        - [nostalgebraist, 2020, interpreting GPT: the logit
          lens](https://www.lesswrong.com/posts/AcKRB8wDpdaN6v6ru/interpreting-gpt-the-logit-lens)
    """
    lm = model if isinstance(model, CausalLM) else CausalLM(model, pad_id)
    top_k = v.check_positive_int("top_k", top_k)
    prompts = as_prompts(prompt, tokenizer)
    if len(prompts) != 1:
        raise v.invalid("prompt", "one prompt", f"{len(prompts)} prompts")
    paths = lm.blocks() if layers is None else [
        instrument.resolve_layer(lm.model, p, "layers")[0] for p in layers
    ]
    if not paths:
        raise v.invalid("layers", "at least one block", layers)
    blocks = [instrument.resolve_layer(lm.model, p, "layers")[1] for p in paths]
    ids, mask = lm.batch(prompts.ids)
    n = len(prompts.ids[0])
    key = tuple(paths)
    cache = getattr(lm, "_lens_fns", None)
    if cache is None:
        cache = {}
        object.__setattr__(lm, "_lens_fns", cache)
    if key not in cache:
        cache[key] = _lens_fn(lm, blocks)
    probs = cache[key](lm.inputs(ids, mask)).numpy()[:, 0, :n]  # (L + 1, T, V)
    top_k = min(top_k, probs.shape[-1])
    order = np.argsort(-probs, axis=-1, kind="stable")
    final = order[-1, :, 0]
    rank = np.argmax(order == final[None, :, None], axis=-1)
    fp = np.take_along_axis(probs, final[None, :, None], -1)[..., 0]
    top = order[..., :top_k]
    strings = None
    if tokenizer is not None and hasattr(tokenizer, "id_to_token"):
        strings = tokenizer.id_to_token
    tokens = [strings(int(t)) if strings else str(int(t)) for t in prompts.ids[0]]
    return LogitLens(
        layers=["embeddings", *paths],
        tokens=tokens,
        top_tokens=top.astype(np.int32),
        top_probabilities=np.take_along_axis(probs, top, -1).astype(np.float32),
        final_tokens=final.astype(np.int32),
        final_rank=rank.astype(np.int32),
        final_probability=fp.astype(np.float32),
        last_distribution=probs[:, -1].astype(np.float32),
        token_strings=strings,
    )
