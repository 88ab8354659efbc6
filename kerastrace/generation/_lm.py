"""A causal language model as the generation tools see it, and text generation.

`CausalLM` wraps any Keras causal LM whose output is logits `(B, T, V)`:
keras-hub `CausalLM` models (dict inputs `{"token_ids", "padding_mask"}`) and
plain Keras models that take `(B, T)` token ids (functional or subclassed,
kerastrace layers or stock ones). It knows how to call the model on padded
sequences, the model's context length, its token embedding, its transformer
blocks (the layers that hold its self-attention layers) and its vocabulary.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import tensorflow as tf

from kerastrace._utils import instrument, tf_compat
from kerastrace._utils import validation as v

#: Sequences are padded to a multiple of this (so calls with other lengths reuse
#: the compiled functions), up to the model's context.
BUCKET = 16


@dataclasses.dataclass
class Prompts:
    """Token-id prompts of possibly different lengths.

    Attributes:
        ids: list of `B` int32 arrays.
        texts: the prompt strings when they came from text (else None).
    """

    ids: list
    texts: list | None = None

    def __len__(self):
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(p) for p in self.ids], np.int32)


def _tokenize(tokenizer, texts):
    if hasattr(tokenizer, "tokenize") and hasattr(tokenizer, "pad_id"):  # kerastrace.text
        tok = tokenizer.tokenize(list(texts))
        keep = tok.mask & (tok.word_ids >= 0)  # no [CLS]/[SEP]/padding in a prompt
        return [tok.ids[i][keep[i]].astype(np.int32) for i in range(len(tok))]
    if callable(tokenizer):
        return [np.asarray(tokenizer(t), np.int32).reshape(-1) for t in texts]
    raise v.invalid(
        "tokenizer", "a kerastrace.text.Tokenizer or a callable text -> token ids", tokenizer
    )


def as_prompts(prompt, tokenizer=None) -> Prompts:
    """Normalize a prompt: text (with a tokenizer), token ids, or a list of either."""
    if isinstance(prompt, Prompts):
        return prompt
    if isinstance(prompt, str) or (
        isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt)
    ):
        texts = [prompt] if isinstance(prompt, str) else list(prompt)
        if tokenizer is None:
            raise v.invalid("tokenizer", "a tokenizer for text prompts", None,
                            hint="pass tokenizer=, or give the prompt as token ids")
        ids = _tokenize(tokenizer, texts)
        out = Prompts(ids, texts)
    else:
        arr = prompt.numpy() if hasattr(prompt, "numpy") else prompt
        if isinstance(arr, np.ndarray) and arr.ndim == 2:
            rows = [r for r in arr]
        elif isinstance(arr, (list, tuple)) and arr and all(
            isinstance(r, (list, tuple, np.ndarray)) for r in arr
        ):
            rows = list(arr)
        else:
            rows = [arr]
        ids = []
        for r in rows:
            r = np.asarray(r)
            if r.ndim != 1 or not (np.issubdtype(r.dtype, np.integer) or r.size == 0):
                raise v.invalid("prompt", "text, token ids, or a list of either",
                                f"an array of dtype {r.dtype} and shape {r.shape}")
            ids.append(r.astype(np.int32))
        out = Prompts(ids)
    for i, p in enumerate(out.ids):
        if p.size == 0:
            what = repr(out.texts[i]) if out.texts else f"prompt {i}"
            raise v.invalid("prompt", "a prompt with at least one token",
                            what, hint="an empty prompt gives the model nothing to continue")
    return out


class CausalLM:
    """How to call a Keras causal LM, and what is inside it.

    Args:
        model: A Keras model from token ids (or keras-hub's dict inputs) to
            logits `(B, T, V)`.
        pad_id: Token id used to pad sequences (its positions are masked for
            keras-hub models; causal models never look ahead, so right padding
            does not change earlier positions).

    Raises:
        ValueError: if the model's output is not `(B, T, V)` logits.
    """

    def __init__(self, model, pad_id: int = 0):
        import keras

        if not isinstance(model, keras.Model):
            raise v.invalid("model", "a Keras model", type(model).__name__)
        self.model = model
        self.pad_id = v.check_non_negative_int("pad_id", pad_id)
        specs = instrument.input_specs(model)
        self.dict_inputs = isinstance(specs, dict)
        if self.dict_inputs and "token_ids" not in specs:
            raise v.invalid("model", "a causal LM taking token ids (or keras-hub's "
                            "{'token_ids', 'padding_mask'})", f"inputs {list(specs)}")
        if not self.dict_inputs and isinstance(specs, (list, tuple)):
            raise v.invalid("model", "a causal LM with one token-id input",
                            f"{len(specs)} inputs")
        spec = specs["token_ids"] if self.dict_inputs else specs
        self.input_keys = list(specs) if self.dict_inputs else None
        self.fixed_length = None if spec is None or spec.shape[1] is None else int(spec.shape[1])
        self.context = self.fixed_length or _max_length(model)
        self._logits_fn = None
        probe = self.fixed_length or min(self.context or BUCKET, BUCKET)
        out = self.logits(np.full((1, probe), max(self.pad_id, 1), np.int32), np.ones((1,), int))
        if out.ndim != 3:
            raise v.invalid(
                "model", "a causal language model whose output is logits (B, T, V)",
                f"a model with output shape {out.shape}",
                hint="generation tracing needs next-token logits at every position",
            )
        self.vocab_size = int(out.shape[-1])

    # ----------------------------------------------------------------- calls
    def padded_length(self, n: int) -> int:
        """The length sequences of `n` tokens are padded to (fixed or bucketed)."""
        if self.fixed_length is not None:
            return self.fixed_length
        t = int(np.ceil(max(n, 1) / BUCKET) * BUCKET)
        return t if self.context is None else min(t, self.context)

    def check_length(self, n: int, arg: str = "prompt", value=None):
        """Refuse sequences the model cannot read: `n` tokens against its context."""
        if self.context is not None and n > self.context:
            raise ValueError(
                f"Received an invalid value for argument `{arg}`: the model reads at most "
                f"{self.context} tokens (its context), and this needs {n} (the prompt plus "
                "the new tokens but the last, which is only predicted). Shorten the prompt "
                f"or ask for fewer new tokens. Received: {arg}={value if value is not None else n}"
            )

    def batch(self, sequences, length=None):
        """`(ids (B, T), mask (B, T))` with the sequences right-padded to one length."""
        n = max(len(s) for s in sequences)
        self.check_length(n)
        t = length or self.padded_length(n)
        ids = np.full((len(sequences), t), self.pad_id, np.int32)
        mask = np.zeros((len(sequences), t), bool)
        for i, s in enumerate(sequences):
            ids[i, : len(s)] = s
            mask[i, : len(s)] = True
        return ids, mask

    def inputs(self, ids, mask):
        """What the model is called on: the ids, or keras-hub's dict."""
        if not self.dict_inputs:
            return np.asarray(ids, np.int32)
        return instrument.token_inputs(self.model, ids, mask)

    def logits(self, ids, lengths=None):
        """`(B, T, V)` float32 logits (compiled; one trace per padded length)."""
        ids = np.asarray(ids, np.int32)
        if lengths is None:
            mask = np.ones(ids.shape, bool)
        else:
            mask = np.arange(ids.shape[1])[None] < np.asarray(lengths)[:, None]
        if self._logits_fn is None:
            model = self.model

            def run(inputs):
                return tf.cast(model(inputs, training=False), tf.float32)

            self._logits_fn = tf_compat.function(run, reduce_retracing=True)
        return self._logits_fn(self.inputs(ids, mask)).numpy()

    # ------------------------------------------------------------- insides
    @property
    def token_embedding(self):
        layer = instrument.find_token_embedding(self.model)
        if layer is None:
            raise v.invalid("model", "a language model with a token embedding (an Embedding "
                            "applied to its token ids)", getattr(self.model, "name", None))
        return layer

    def blocks(self) -> list[str]:
        """Paths of the transformer blocks, in call order: the layers holding self-attention.

        keras-hub `transformer_layer_i`, kerastrace `TransformerBlock`s, the
        keras.io mini-GPT's blocks. Their outputs are the residual stream
        after each block (what the logit lens reads).
        """
        ids, _ = self.batch([np.full(2, max(self.pad_id, 1), np.int32)])
        order: list = []
        layers = instrument.attention_layers(self.model)
        if not layers:
            raise v.invalid("model", "a transformer language model (with attention layers)",
                            getattr(self.model, "name", None))

        def body(inputs):
            with instrument.attention_seams(layers, lambda s, w: order.append(s)):
                self.model(inputs, training=False)
            return tf.constant(0)

        tf_compat.function(body).get_concrete_function(
            tf.nest.map_structure(lambda a: tf.TensorSpec((None, *a.shape[1:]), a.dtype),
                                  self.inputs(ids, np.ones(ids.shape, bool)))
        )
        out = []
        for site in order:
            parent = site.path.rpartition("/")[0] or site.path
            if site.kind == "self" and parent not in out:
                out.append(parent)
        return out


def _max_length(model):
    """The longest sequence a keras-hub backbone takes (its position embedding), or None."""
    backbone = getattr(model, "backbone", None)
    n = getattr(backbone, "max_sequence_length", None)
    return int(n) if isinstance(n, (int, np.integer)) else None


# -------------------------------------------------------------- generation
def _sampler(model, sampling, temperature, top_k, seed):
    import keras_hub

    if sampling == "greedy":
        return keras_hub.samplers.GreedySampler()
    if top_k:
        return keras_hub.samplers.TopKSampler(k=top_k, seed=seed, temperature=temperature)
    return keras_hub.samplers.RandomSampler(seed=seed, temperature=temperature)


@contextlib.contextmanager
def _swapped_sampler(model, key, make_sampler):
    """Use our sampler for one keras-hub `generate` call; the model's own is put back.

    The compiled generate function of each sampler setting is kept (on the
    model, next to keras-hub's own cache), so repeated calls do not retrace.
    """
    cache = getattr(model, "_kerastrace_generate", None)
    if cache is None:
        cache = {}
        object.__setattr__(model, "_kerastrace_generate", cache)
    saved, saved_fn = model.sampler, model.generate_function
    if key not in cache:
        cache[key] = (make_sampler(), None)
    sampler, fn = cache[key]
    model.sampler, model.generate_function = sampler, fn
    try:
        yield
    finally:
        cache[key] = (sampler, model.generate_function)
        model.sampler, model.generate_function = saved, saved_fn


def has_own_generate(model) -> bool:
    """keras-hub `CausalLM`s generate with their own cached, compiled loop."""
    return callable(getattr(model, "generate", None)) and callable(
        getattr(model, "generate_step", None)
    )


def generate(
    lm: CausalLM,
    prompts: Prompts,
    max_new_tokens: int,
    sampling: str = "greedy",
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    use_model_generate: bool | str = "auto",
) -> list:
    """Continue every prompt by `max_new_tokens` tokens; returns the new tokens per prompt.

    Greedy (`sampling="greedy"`) or seeded sampling (`"sample"`, with
    `temperature` and optionally `top_k`). keras-hub `CausalLM`s use their
    own `generate` (with a keras-hub sampler set for this call only);
    other models a compiled step that reruns the padded sequence.
    """
    v.check_one_of("sampling", sampling, ("greedy", "sample"))
    k = v.check_positive_int("max_new_tokens", max_new_tokens)
    lengths = prompts.lengths
    lm.check_length(int(lengths.max()) + k - 1, "max_new_tokens", k)  # the last is never read
    use_own = has_own_generate(lm.model) if use_model_generate == "auto" else bool(
        use_model_generate
    )
    if use_own and has_own_generate(lm.model):
        return _generate_keras_hub(lm, prompts, k, sampling, temperature, top_k, seed)
    rng = np.random.default_rng(seed)
    seqs = [p.copy() for p in prompts.ids]
    length = lm.padded_length(int(lengths.max()) + k - 1)
    out = [[] for _ in seqs]
    for _ in range(k):
        ids, _ = lm.batch(seqs, length)
        cur = np.array([len(s) for s in seqs])
        logits = lm.logits(ids, cur)[np.arange(len(seqs)), cur - 1]  # (B, V)
        nxt = _pick(logits, sampling, temperature, top_k, rng)
        for i, t in enumerate(nxt):
            seqs[i] = np.append(seqs[i], np.int32(t))
            out[i].append(int(t))
    return [np.array(o, np.int32) for o in out]


def _pick(logits, sampling, temperature, top_k, rng):
    if sampling == "greedy":
        return logits.argmax(-1)
    z = logits.astype(np.float64) / max(float(temperature), 1e-6)
    if top_k:
        kth = np.sort(z, -1)[:, -top_k][:, None]
        z = np.where(z >= kth, z, -np.inf)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.array([rng.choice(p.shape[-1], p=row) for row in p])


def _generate_keras_hub(lm, prompts, k, sampling, temperature, top_k, seed):
    """keras-hub's `generate`: it keeps every row's prompt (its `padding_mask`) and fills the
    rest, so prompts of different lengths go in one call."""
    lengths = prompts.lengths
    total = int(lengths.max()) + k
    if lm.context is not None and total > lm.context:
        raise v.invalid("max_new_tokens", f"at most {lm.context - int(lengths.max())} for "
                        "keras-hub's generate (prompt and generated tokens must fit its "
                        "context)", k)
    ids, mask = lm.batch(prompts.ids, min(lm.padded_length(total), lm.context or total))
    key = (sampling, float(temperature), top_k, int(seed))
    make = lambda: _sampler(lm.model, sampling, temperature, top_k, seed)  # noqa: E731
    with _swapped_sampler(lm.model, key, make):
        res = lm.model.generate({"token_ids": ids, "padding_mask": mask}, stop_token_ids=None)
    toks = np.asarray(res["token_ids"])
    return [toks[b, n : n + k].astype(np.int32) for b, n in enumerate(lengths)]


# -------------------------------------------------------------- step scores
def step_scores(logits_rows, chosen, top_k: int = 5) -> dict:
    """Per generated token: probability, log-probability, entropy, rank, alternatives.

    Args:
        logits_rows: `(K, V)` logits that predicted each generated token.
        chosen: `(K,)` the generated tokens.
        top_k: How many most likely alternatives to keep.
    """
    z = np.asarray(logits_rows, np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    p = np.exp(logp)
    idx = np.arange(len(chosen))
    chosen = np.asarray(chosen)
    order = np.argsort(-z, axis=-1, kind="stable")
    rank = np.argmax(order == chosen[:, None], axis=-1)  # 0 = the most likely token
    top = order[:, :top_k]
    return {
        "probability": p[idx, chosen],
        "log_probability": logp[idx, chosen],
        "entropy": -(p * logp).sum(-1),
        "rank": rank.astype(np.int32),
        "top_tokens": top.astype(np.int32),
        "top_probabilities": np.take_along_axis(p, top, -1),
    }
