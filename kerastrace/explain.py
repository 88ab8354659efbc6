"""Explain text predictions end to end: strings in, word scores out.

This module wires the public pieces together: `kerastrace.text` tokenizes
(keeping character offsets), a method from `kerastrace.attribution` (or
attention rollout from `kerastrace.attention`) scores each token of a
token-id model, and the scores are mapped back to the words of the user's
strings. The `kerastrace explain` command and the demo use it.

Methods (`method=`):

- `"integrated_gradients"`: `LayerIntegratedGradients` on the token
  embedding with the [PAD]-embedding baseline, summed over the hidden axis
  (has a convergence delta).
- `"gradient_x_activation"`: `LayerGradientXActivation` on the token embedding.
- `"smoothgrad"`: `NoiseTunnel(LayerGradientXActivation)`: gradient x
  activation averaged over Gaussian noise added to the token embedding
  (SmoothGrad on the embedding; seeded).
- `"attention_x_gradient"`: gradient-weighted attention rollout (Chefer et
  al. 2021), the [CLS] row.
- `"attention_rollout"`: plain attention rollout (Abnar & Zuidema 2020),
  the [CLS] row.
- `"occlusion"`: drop in the target score when one token is replaced by [PAD].
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from kerastrace._utils import validation as v

METHODS = (
    "integrated_gradients",
    "gradient_x_activation",
    "smoothgrad",
    "attention_x_gradient",
    "attention_rollout",
    "occlusion",
)


def find_token_embedding(model):
    """The token `keras.layers.Embedding` of a token-id model.

    Looks through nested layers (e.g. `TokenAndPositionEmbedding.token_embedding`)
    and returns the first `keras.layers.Embedding` found.

    Raises:
        ValueError: if the model has no `Embedding` layer.
    """
    from kerastrace._utils.models import find_token_embedding as _find

    layer = _find(model)
    if layer is not None:
        return layer
    raise ValueError(
        "Received an invalid value for argument `model`: it has no keras.layers.Embedding "
        "to attribute token scores to. Pass `embedding_layer=` explicitly. Received: "
        f"model={getattr(model, 'name', model)!r}"
    )


def token_attributions(
    model,
    ids,
    method: str = "integrated_gradients",
    target=None,
    n_steps: int = 32,
    pad_id: int = 0,
    mask=None,
    embedding_layer=None,
    internal_batch_size: int | None = None,
    baselines=None,
    nt_samples: int = 16,
    stdev: float = 0.15,
    seed: int = 0,
):
    """Per-token scores `(B, T)` of a token-id classifier for one method.

    Args:
        model: A Keras model from `(B, T)` int token ids to `(B, C)` outputs.
        ids: `(B, T)` int token ids.
        method: One of `METHODS`.
        target: Class index (int or one per example); default: the predicted class.
        n_steps: Path points for `integrated_gradients`.
        pad_id: Id of the [PAD] token (the baseline / occlusion value).
        mask: `(B, T)` bool of real tokens; default `ids != pad_id`.
        embedding_layer: The token embedding layer (default: found in the model).
        internal_batch_size: Rows per model call for the batched methods.
        baselines: Baseline token ids for `integrated_gradients`, broadcast to
            `ids` (default: `pad_id` everywhere).
        nt_samples: Noise samples for `smoothgrad`.
        stdev: Noise standard deviation for `smoothgrad`, relative to the
            embeddings' standard deviation.
        seed: Seed for `smoothgrad`.

    Returns:
        `(scores, targets, delta)`: `(B, T)` float32 scores (0 at masked
        positions), the `(B,)` explained classes, and the `(B,)` convergence
        delta for `integrated_gradients` (else None).

    Raises:
        ValueError: for an unknown method or ids that are not `(B, T)`.
    """
    from kerastrace import attention, attribution

    v.check_one_of("method", method, METHODS)
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            "Received an invalid value for argument `ids`, expected integer token ids of "
            f"shape (B, T). Received: ids.shape={ids.shape}, dtype={ids.dtype}"
        )
    ids = ids.astype("int32")
    mask = ids != pad_id if mask is None else np.asarray(mask, bool)
    if target is None:  # the predicted class: one forward pass
        logits = np.asarray(model.predict(ids, verbose=0, batch_size=256))
        targets = logits.argmax(-1).astype("int32")
    else:
        targets = np.broadcast_to(np.asarray(target, dtype="int32"), (len(ids),)).copy()
    delta = None
    if method in ("integrated_gradients", "gradient_x_activation", "smoothgrad"):
        emb = embedding_layer or find_token_embedding(model)
        if method == "integrated_gradients":
            attr, delta = attribution.LayerIntegratedGradients(model, emb).attribute(
                ids, baselines=pad_id if baselines is None else baselines,
                target=targets, n_steps=n_steps,
                internal_batch_size=internal_batch_size, return_convergence_delta=True,
            )
            scores = attribution.token_scores(attr)
        elif method == "gradient_x_activation":
            attr = attribution.LayerGradientXActivation(model, emb).attribute(
                ids, target=targets, internal_batch_size=internal_batch_size
            )
            scores = attribution.token_scores(attr)
        else:
            v.check_positive_int("nt_samples", nt_samples)
            v.check_non_negative_float("stdev", stdev)
            # Noise relative to the spread of the embeddings being explained.
            scale = stdev * float(np.std(np.asarray(emb(ids)))) if ids.size else stdev
            attr = attribution.NoiseTunnel(attribution.LayerGradientXActivation(model, emb)).attribute(
                ids, nt_samples=nt_samples, stdevs=scale, seed=seed, target=targets,
                internal_batch_size=internal_batch_size or 512,
            )
            scores = attribution.token_scores(attr)
    elif method == "attention_x_gradient":
        scores = attribution.GradientWeightedRollout(model).attribute(
            ids, target=targets, query_index=0, internal_batch_size=internal_batch_size
        )
    elif method == "attention_rollout":
        weights = attention.collect(model, ids)
        scores = attention.attention_rollout(weights, mask=mask)[:, 0, :]
    else:  # occlusion
        scores = attribution.Occlusion(model).attribute(
            ids, sliding_window_shapes=(1,), baselines=pad_id, target=targets,
            internal_batch_size=internal_batch_size,
        )
    scores = np.where(mask, np.asarray(scores, dtype="float32"), 0.0).astype("float32")
    return scores, targets, delta


@dataclasses.dataclass
class TextExplanation:
    """The explanation of one string.

    Attributes:
        text: The original string.
        method: The attribution method.
        target: The explained class.
        probabilities: Softmax of the model's outputs for this string.
        tokens: Token strings (padding included).
        token_scores: `(T,)` float32 score per token (0 for padding).
        mask: `(T,)` bool, True for real tokens.
        words: `[(word, (start, end), score), ...]`: scores summed per word of
            `text`, with character spans into it.
        delta: Convergence delta (Integrated Gradients only).
    """

    text: str
    method: str
    target: int
    probabilities: np.ndarray
    tokens: list
    token_scores: np.ndarray
    mask: np.ndarray
    words: list
    delta: float | None = None

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "method": self.method,
            "target": int(self.target),
            "probabilities": [float(p) for p in self.probabilities],
            "tokens": [t for t, m in zip(self.tokens, self.mask) if m],
            "token_scores": [float(s) for s, m in zip(self.token_scores, self.mask) if m],
            "words": [
                {"word": w, "start": int(s), "end": int(e), "score": float(sc)}
                for w, (s, e), sc in self.words
            ],
            "delta": None if self.delta is None else float(self.delta),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def to_html(self) -> str:
        """Coloured tokens as a self-contained HTML snippet."""
        from kerastrace.visualization import token_attributions_html

        return str(token_attributions_html(self.token_scores, self.tokens, mask=self.mask))

    def plot(self, ax=None):
        """Coloured tokens as a matplotlib figure; returns `(fig, ax)`."""
        from kerastrace.visualization import plot_token_attributions

        return plot_token_attributions(
            self.token_scores, self.tokens, ax=ax, mask=self.mask,
            title=f"{self.method} (class {self.target}, p={self.probabilities[self.target]:.2f})",
        )


def explain_text(
    model,
    tokenizer,
    texts,
    method: str = "integrated_gradients",
    target=None,
    n_steps: int = 32,
    **kwargs,
) -> list[TextExplanation]:
    """Tokenize `texts`, score every token with `method`, map scores to words.

    Args:
        model: A token-id classifier `(B, T) -> (B, C)` whose `T` equals
            `tokenizer.sequence_length`.
        tokenizer: A `kerastrace.text.Tokenizer`.
        texts: One string or a list of strings.
        method: One of `METHODS`.
        target: Class to explain (default: the predicted class).
        n_steps: Path points for Integrated Gradients.
        **kwargs: Passed to `token_attributions`.

    Returns:
        One `TextExplanation` per string.

    Raises:
        ValueError: if the tokenizer's length does not fit the model, or for
            invalid arguments.

    Example:

    >>> import numpy as np, keras
    >>> from kerastrace.text import Tokenizer
    >>> from kerastrace.testing.reference_models import build_text_classifier
    >>> vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "film"]
    >>> model = build_text_classifier(len(vocab), 6, num_layers=1)
    >>> [e] = explain_text(model, Tokenizer(vocab, sequence_length=6), "Good film")
    >>> [w.word for w in e.words]  # scores per word of the original string
    ['Good', 'film']
    >>> abs(e.delta) < 0.05  # completeness: word scores add up to f(x) - f(baseline)
    True
    """
    from kerastrace.text import aggregate_to_words

    if isinstance(texts, str):
        texts = [texts]
    length = model.input_shape[1] if isinstance(model.input_shape, tuple) else None
    if length is not None and length != tokenizer.sequence_length:
        raise ValueError(
            "Received an invalid value for argument `tokenizer`: its sequence_length "
            f"({tokenizer.sequence_length}) does not fit the model's input length ({length}). "
            f"Received: tokenizer.sequence_length={tokenizer.sequence_length}"
        )
    tok = tokenizer.tokenize(list(texts))
    logits = np.asarray(model.predict(tok.ids, verbose=0))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    probs = e / e.sum(-1, keepdims=True)
    scores, targets, delta = token_attributions(
        model, tok.ids, method=method,
        target=logits.argmax(-1).astype("int32") if target is None else target,
        n_steps=n_steps, pad_id=tokenizer.pad_id, mask=tok.mask, **kwargs,
    )
    word_scores = aggregate_to_words(scores, tok)
    return [
        TextExplanation(
            text=tok.texts[i],
            method=method,
            target=int(targets[i]),
            probabilities=probs[i],
            tokens=list(tok.tokens[i]),
            token_scores=scores[i],
            mask=tok.mask[i],
            words=list(word_scores[i]),
            delta=None if delta is None else float(delta[i]),
        )
        for i in range(len(tok))
    ]
