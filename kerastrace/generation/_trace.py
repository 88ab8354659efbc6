"""Trace generated tokens back to the tokens before them."""

from __future__ import annotations

import numpy as np

from kerastrace._utils import validation as v
from kerastrace.generation import METHODS
from kerastrace.generation._lm import CausalLM, Prompts, as_prompts, generate, step_scores
from kerastrace.generation._results import GenerationTrace

SCORES = ("logit", "probability", "log_probability")


def _rows(lm, prompts, generated, contrast):
    """One row per (example, generated token): its sequence, target and foil."""
    seqs, examples, steps, positions, targets, foils = [], [], [], [], [], []
    vocab = lm.vocab_size
    for b, (p, g) in enumerate(zip(prompts.ids, generated)):
        # The last generated token is only predicted, never read: leave it out.
        full = np.concatenate([p, g[:-1]]).astype(np.int32)
        for k, tok in enumerate(g):
            pos = len(p) + k - 1  # the position whose logits predicted token k
            seqs.append(full)
            examples.append(b)
            steps.append(k)
            positions.append(pos)
            targets.append(pos * vocab + int(tok))
            foil = _foil_for(contrast, b, k, len(g))
            foils.append(-1 if foil is None else pos * vocab + foil)
    return seqs, np.array(examples), np.array(steps), np.array(positions), (
        np.array(targets, np.int32), np.array(foils, np.int32)
    )


def _foil_for(contrast, b, k, n):
    """The alternative token of example `b`'s step `k` (None: no contrast)."""
    if contrast is None:
        return None
    if isinstance(contrast, dict):
        return contrast.get(k)
    if isinstance(contrast, (list, tuple)) and contrast and isinstance(contrast[0], dict):
        return contrast[b].get(k)
    return int(contrast)


def _check_contrast(contrast, vocab):
    """Every alternative token must be a token id of the model's vocabulary."""
    values = []
    if contrast is None:
        return
    if isinstance(contrast, dict):
        values = list(contrast.values())
    elif isinstance(contrast, (list, tuple)):
        values = [t for d in contrast for t in (d.values() if isinstance(d, dict) else [d])]
    else:
        values = [contrast]
    for t in values:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < vocab:
            raise v.invalid("contrast", f"token ids in [0, {vocab})", contrast,
                            hint="an alternative token must be in the model's vocabulary")


class GenerationTracer:
    """Trace every generated token of a causal LM back to the tokens before it.

    For each generated token (or each token of a forced continuation), the
    tracer scores every earlier token (prompt and generated prefix) by how
    much it contributed to that token's score; later positions get exactly 0.
    All rows `(example, generated token)` are laid out along the batch axis of
    the attribution engine, each with its own target, and run in one compiled
    call chunked by `internal_batch_size`; prompts, lengths and targets change
    without retracing (sequences are padded to a multiple of 16 tokens).

    Methods (`method=`):

    - `"integrated_gradients"`: Layer IG on the token embedding (baseline:
      every token replaced by `baseline_id`), summed over the hidden axis.
    - `"input_x_gradient"`: gradient x embedding, summed.
    - `"saliency"`: L2 norm of the gradient with respect to the embedding.
    - `"occlusion"`: drop of the score when one earlier token is replaced by
      `baseline_id`.
    - `"attention"`: the attention row of the predicting position, averaged
      over layers and heads (the full `(layers, heads, T)` rows are kept).
    - `"attention_x_gradient"`: gradient-weighted attention rollout (Chefer et
      al. 2021), the row of the predicting position, without the identity
      that rollout starts from (so the predicting token is not its own top
      source by construction).

    Args:
        model: A Keras causal LM with logits `(B, T, V)`: a keras-hub
            `CausalLM` (e.g. `GPT2CausalLM`, `LlamaCausalLM`) or a model from
            `(B, T)` token ids.
        method: One of `METHODS`.
        tokenizer: For text prompts and token strings: a
            `kerastrace.text.Tokenizer` (its `[CLS]`/`[SEP]` are not added to
            prompts) or a callable `text -> token ids`.
        pad_id: The padding token id.
        baseline_id: The token that replaces tokens in IG and occlusion.

    Example:

    >>> import numpy as np
    >>> from kerastrace.generation import GenerationTracer
    >>> from kerastrace.testing.model_zoo import keras_io_mini_gpt
    >>> lm = keras_io_mini_gpt(vocab_size=20, maxlen=12)
    >>> trace = GenerationTracer(lm, "input_x_gradient").trace([3, 7, 5], max_new_tokens=4)
    >>> trace.sources[0].shape  # 4 generated tokens x 7 tokens (3 prompt + 4 generated)
    (4, 7)
    >>> bool(np.all(np.triu(trace.sources[0], 3) == 0))  # nothing from later tokens
    True

    References:
        - [Sarti et al., 2023, Inseq: An Interpretability Toolkit for Sequence
          Generation Models](https://arxiv.org/abs/2302.13942)
        - [Miglani et al., 2025, Using Captum to Explain Generative Language
          Models](https://arxiv.org/abs/2312.05491)
    """

    def __init__(self, model, method: str = "integrated_gradients", tokenizer=None,
                 pad_id: int = 0, baseline_id: int | None = None):
        self.method = v.check_one_of("method", method, METHODS)
        self.lm = model if isinstance(model, CausalLM) else CausalLM(model, pad_id)
        self.model = self.lm.model
        self.tokenizer = tokenizer
        self.baseline_id = self.lm.pad_id if baseline_id is None else v.check_non_negative_int(
            "baseline_id", baseline_id
        )
        if self.baseline_id >= self.lm.vocab_size:
            raise v.invalid("baseline_id", f"a token id below {self.lm.vocab_size}", baseline_id)
        self._objects = {}

    # ------------------------------------------------------------ public
    def trace(
        self,
        prompt,
        max_new_tokens: int | None = None,
        *,
        continuation=None,
        contrast=None,
        score: str = "logit",
        sampling: str = "greedy",
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int = 0,
        n_steps: int = 20,
        internal_batch_size: int | None = 64,
        use_model_generate: bool | str = "auto",
    ) -> GenerationTrace:
        """Generate (or take a forced continuation) and trace every new token.

        Args:
            prompt: Text (with the tracer's tokenizer), token ids, or a list of
                either (prompts may have different lengths).
            max_new_tokens: Tokens to generate; not with `continuation`.
            continuation: A forced continuation instead of generating
                (teacher forcing): token ids or text, one per prompt.
            contrast: "Why this token rather than that one": one alternative
                token id for every step, a dict `{step: token}` (one prompt),
                or one such dict per prompt. The traced score becomes
                `score(token) - score(alternative)`.
            score: What is attributed: the token's `"logit"`, its
                `"probability"` or `"log_probability"`.
            sampling, temperature, top_k, seed: Generation settings
                (`"greedy"` or seeded `"sample"`).
            n_steps: Integrated Gradients steps.
            internal_batch_size: Rows per model call (memory is bounded by it,
                not by the number of generated tokens).
            use_model_generate: Use a keras-hub model's own `generate`
                (`"auto"`: when it has one).

        Returns:
            A `GenerationTrace`.

        Raises:
            ValueError: for an empty prompt, a prompt longer than the model's
                context, a contrast token outside the vocabulary, or invalid
                arguments.
        """
        v.check_one_of("score", score, SCORES)
        prompts = as_prompts(prompt, self.tokenizer)
        if continuation is not None:
            if max_new_tokens is not None:
                raise v.invalid("max_new_tokens", "None with a forced `continuation`",
                                max_new_tokens)
            generated = as_prompts(continuation, self.tokenizer).ids
            if len(generated) != len(prompts):
                raise v.invalid("continuation", f"one continuation per prompt ({len(prompts)})",
                                f"{len(generated)} continuations")
            for g in generated:
                if np.any((g < 0) | (g >= self.lm.vocab_size)):
                    raise v.invalid("continuation", f"token ids in [0, {self.lm.vocab_size})",
                                    g.tolist())
            for p, g in zip(prompts.ids, generated):
                self.lm.check_length(len(p) + len(g) - 1, "continuation", f"{len(g)} tokens")
            forced = True
        else:
            if max_new_tokens is None:
                raise v.invalid("max_new_tokens", "a positive integer (or a `continuation`)",
                                None)
            for p in prompts.ids:
                self.lm.check_length(len(p) + int(max_new_tokens) - 1, "max_new_tokens",
                                     max_new_tokens)
            generated = generate(self.lm, prompts, max_new_tokens, sampling, temperature,
                                 top_k, seed, use_model_generate)
            forced = False
        for p in prompts.ids:
            if np.any((p < 0) | (p >= self.lm.vocab_size)):
                raise v.invalid("prompt", f"token ids in [0, {self.lm.vocab_size})", p.tolist())
        _check_contrast(contrast, self.lm.vocab_size)
        return self._trace(prompts, generated, forced, contrast, score, n_steps,
                           internal_batch_size, sampling)

    # ----------------------------------------------------------- internals
    def _trace(self, prompts, generated, forced, contrast, score, n_steps, chunk, sampling):
        lm = self.lm
        seqs, examples, steps, positions, (targets, foils) = _rows(
            lm, prompts, generated, contrast
        )
        full = [np.concatenate([p, g]).astype(np.int32) for p, g in zip(prompts.ids, generated)]
        read = [f[:-1] if len(g) else f for f, g in zip(full, generated)]  # what the model reads
        ids_full, mask_full = lm.batch(read)
        logits = lm.logits(ids_full, [len(f) for f in read])
        stats = []
        for b, (p, g) in enumerate(zip(prompts.ids, generated)):
            pos = np.arange(len(p) - 1, len(p) + len(g) - 1)
            stats.append(step_scores(logits[b, pos], g))
        extra = {}
        if len(seqs):
            ids, mask = lm.batch(seqs, ids_full.shape[1])
            scores, extra = self._attribute(ids, mask, targets, foils, positions, score,
                                            n_steps, chunk)
        else:
            scores = np.zeros((0, ids_full.shape[1]), np.float32)
        sources = []
        for b, f in enumerate(full):
            rows = np.flatnonzero(examples == b)
            s = np.zeros((len(rows), len(f)), np.float32)
            width = min(len(f), scores.shape[1])
            s[:, :width] = scores[rows][:, :width]
            # Exactly 0 at and after the generated token itself: it cannot be its own source.
            limit = positions[rows] + 1
            s = np.where(np.arange(len(f))[None] < limit[:, None], s, 0.0).astype(np.float32)
            sources.append(s)
        details = {}
        if "attention" in extra:
            details["attention"] = [extra["attention"][examples == b] for b in range(len(full))]
            details["attention_layers"] = extra["layers"]
        return GenerationTrace(
            method=self.method,
            prompt_ids=[p.tolist() for p in prompts.ids],
            generated_ids=[g.tolist() for g in generated],
            sources=sources,
            steps=stats,
            forced=forced,
            score=score,
            contrast=[
                [_foil_for(contrast, b, k, len(g)) for k in range(len(g))]
                for b, g in enumerate(generated)
            ],
            token_strings=self._strings(full),
            prompt_texts=prompts.texts,
            sampling="forced" if forced else sampling,
            details=details,
        )

    def _strings(self, seqs):
        tok = self.tokenizer
        if tok is not None and hasattr(tok, "id_to_token"):
            return [[tok.id_to_token(int(t)) for t in s] for s in seqs]
        if tok is not None and hasattr(tok, "id_to_token") is False and hasattr(
            tok, "detokenize"
        ):
            return [[str(tok.detokenize([int(t)])) for t in s] for s in seqs]
        return [[str(int(t)) for t in s] for s in seqs]

    def _object(self, key, build):
        if key not in self._objects:
            self._objects[key] = build()
        return self._objects[key]

    def _attribute(self, ids, mask, targets, foils, positions, score, n_steps, chunk):
        from kerastrace import attribution
        from kerastrace.attribution import Contrast

        lm = self.lm
        inputs = lm.inputs(ids, mask)
        tgt = Contrast(targets, foils if np.any(foils >= 0) else None, space=score)
        method = self.method
        if method in ("integrated_gradients", "input_x_gradient", "saliency"):
            emb = lm.token_embedding
            if method == "integrated_gradients":
                lig = self._object("ig", lambda: attribution.LayerIntegratedGradients(
                    self.model, emb))
                base = np.where(mask, self.baseline_id, ids).astype(np.int32)
                baselines = {"token_ids": base} if lm.dict_inputs else base
                attr = lig.attribute(inputs, baselines=baselines, target=tgt, n_steps=n_steps,
                                     internal_batch_size=chunk)
                return attribution.token_scores(attr), {}
            multiply = method == "input_x_gradient"
            gxa = self._object(("gxa", multiply), lambda: attribution.LayerGradientXActivation(
                self.model, emb, multiply_by_inputs=multiply))
            attr = gxa.attribute(inputs, target=tgt, internal_batch_size=chunk)
            return attribution.token_scores(attr, "sum" if multiply else "norm"), {}
        if method == "occlusion":
            occ = self._object("occ", lambda: attribution.Occlusion(self.model))
            baseline = {"token_ids": self.baseline_id} if lm.dict_inputs else self.baseline_id
            out = occ.attribute(inputs, sliding_window_shapes=(1,), baselines=baseline,
                                target=tgt, internal_batch_size=chunk or 256)
            return (out["token_ids"] if isinstance(out, dict) else out), {}
        if method == "attention":
            from kerastrace.attention import collect

            maps = collect(self.model, inputs)
            names = [k for k in maps if maps.sites[k].kind == "self"]
            rows = np.stack(
                [maps[k][np.arange(len(ids)), :, positions, :] for k in names], axis=1
            )  # (R, L, H, T)
            return rows.mean(axis=(1, 2)), {"attention": rows, "layers": names}
        gwr = self._object("gwr", lambda: attribution.GradientWeightedRollout(self.model))
        rel = gwr.attribute(inputs, target=tgt, query=positions.astype(int), mask=mask,
                            internal_batch_size=chunk)
        # Rollout starts from the identity: every position keeps 1 for itself. What
        # reached the predicting position through attention is the rest.
        rel[np.arange(len(rel)), positions] -= 1.0
        return rel, {}


def trace_generation(model, prompt, max_new_tokens=None, method="integrated_gradients",
                     tokenizer=None, **kwargs) -> GenerationTrace:
    """Generate from `prompt` and trace every generated token (see `GenerationTracer`).

    Example:

    >>> from kerastrace.generation import trace_generation
    >>> from kerastrace.testing.model_zoo import keras_io_mini_gpt
    >>> t = trace_generation(keras_io_mini_gpt(vocab_size=20, maxlen=12), [3, 7, 5],
    ...                      max_new_tokens=2, method="saliency")
    >>> len(t.generated_ids[0]), t.steps[0]["probability"].shape
    (2, (2,))
    """
    tracer = GenerationTracer(model, method, tokenizer=tokenizer,
                              pad_id=kwargs.pop("pad_id", 0),
                              baseline_id=kwargs.pop("baseline_id", None))
    return tracer.trace(prompt, max_new_tokens, **kwargs)


__all__ = ["GenerationTracer", "METHODS", "Prompts", "trace_generation"]
