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
  al. 2021), the row of the position the model reads (`query="auto"`: the
  first real token of [CLS] models, the last of causal models, the mean of
  mean-pooled ones).
- `"attention_rollout"`: plain attention rollout (Abnar & Zuidema 2020),
  the same row.
- `"occlusion"`: drop in the target score when one token is replaced by [PAD].
- `"feature_ablation"`: drop in the target score when one feature (by
  default one token; in `explain_text` one word, all its pieces together) is
  replaced by [PAD] (`FeatureAblation`).
- `"shapley"`: Shapley values of the features by antithetic permutation
  sampling (`ShapleyValueSampling`); the scores add up exactly to
  `f(text) - f(all features removed)` (reported as `delta`, ~0).
- `"kernel_shap"`: Shapley values by KernelSHAP's weighted regression
  (`KernelShap`), efficiency enforced (`delta` ~0).
- `"lime"`: coefficients of LIME's local linear surrogate (`Lime`).

The four perturbation methods need no gradient and run every perturbed copy
through one compiled forward function. `explain_text` gives them one
feature per word of the user's string (`kerastrace.text.word_feature_mask`),
so each word gets one score; on the token axis that score is spread evenly
over the word's pieces, so the word sums give it back.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np

from kerastrace._utils import validation as v

# How `TextExplanation.plot()` / `to_html()` mark a word that is not in the vocabulary,
# and the note shown with the pictures when some words are unknown.
from kerastrace.visualization._html import UNKNOWN_MARK, UNKNOWN_NOTE

METHODS = (
    "integrated_gradients",
    "gradient_x_activation",
    "smoothgrad",
    "attention_x_gradient",
    "attention_rollout",
    "occlusion",
    "feature_ablation",
    "shapley",
    "kernel_shap",
    "lime",
)

#: The perturbation methods and their `kerastrace.attribution` classes.
PERTURBATION_METHODS = {
    "feature_ablation": "FeatureAblation",
    "shapley": "ShapleyValueSampling",
    "kernel_shap": "KernelShap",
    "lime": "Lime",
}


def find_token_embedding(model):
    """The token `keras.layers.Embedding` of a token-id model.

    The Embedding whose input is the model's token ids (see
    `kerastrace._utils.instrument.find_token_embedding`): inside
    `TokenAndPositionEmbedding`, keras-hub backbones (`ReversibleEmbedding`,
    also when tied to the output head) and plain models; never a position
    or segment embedding.

    Raises:
        ValueError: if the model has no Embedding applied to its inputs.
    """
    from kerastrace._utils import instrument

    layer = instrument.find_token_embedding(model)
    if layer is not None:
        return layer
    raise ValueError(
        "Received an invalid value for argument `model`: it has no keras.layers.Embedding "
        "applied to integer token ids from its inputs, so there is no token embedding to "
        "attribute to (a vision model, or a model that embeds outside Keras layers). Pass "
        f"`embedding_layer=` explicitly. Received: model={getattr(model, 'name', model)!r}"
    )


def _cache(model) -> dict:
    """Attribution objects reused across calls (their compiled functions too).

    Kept on the model object itself, so they live and die with it (a global
    cache keyed by the model would keep the model alive).
    """
    cache = getattr(model, "_kerastrace_explain_cache", None)
    if cache is None:
        cache = {}
        object.__setattr__(model, "_kerastrace_explain_cache", cache)
    return cache


def _method_object(model, key, build):
    cache = _cache(model)
    if key not in cache:
        cache[key] = build()
    return cache[key]


def model_inputs(model, ids, mask=None, segment_ids=None):
    """What `model` is called on for token ids `ids`: the ids, or a keras-hub dict.

    keras-hub text models take `{"token_ids", "padding_mask"[, "segment_ids"]}`;
    the dict gets exactly the entries the model declares, in their dtypes.
    See `kerastrace._utils.instrument.token_inputs`.

    Args:
        model: A Keras model.
        ids: `(B, T)` int token ids.
        mask: `(B, T)` bool, True on real tokens (default: all real).
        segment_ids: Optional `(B, T)` segment ids (default zeros).
    """
    from kerastrace._utils import instrument

    return instrument.token_inputs(model, ids, mask, segment_ids)


def output_kind(model, outputs=None) -> str:
    """`"probabilities"` when the model ends in a softmax/sigmoid, else `"logits"`.

    Looks at the last layer's activation (a `Dense(..., activation="softmax")`,
    an `Activation`/`Softmax` layer); failing that, at `outputs` when given:
    rows in `[0, 1]` that sum to 1 are probabilities.
    """
    import keras

    layers = getattr(model, "layers", None) or []
    last = layers[-1] if layers else None
    act = getattr(last, "activation", None)
    name = getattr(act, "__name__", str(act) if act is not None else "")
    if isinstance(last, keras.layers.Softmax) or name in ("softmax", "sigmoid"):
        return "probabilities"
    if outputs is not None:
        out = np.asarray(outputs, np.float64)
        if out.ndim == 2 and out.shape[1] > 1 and out.min() >= 0 and out.max() <= 1:
            if np.allclose(out.sum(-1), 1.0, atol=1e-4):
                return "probabilities"
    return "logits"


def to_probabilities(outputs, kind: str) -> np.ndarray:
    """Class probabilities from model outputs of `kind` (`"logits"` or `"probabilities"`)."""
    out = np.asarray(outputs, np.float64)
    if kind == "probabilities":
        return out
    if out.shape[-1] == 1:  # one logit: sigmoid
        return 1.0 / (1.0 + np.exp(-out))
    e = np.exp(out - out.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _check_delta(delta, f_diff, method_name):
    """Warn when Integrated Gradients' completeness gap is large for its output change."""
    if delta is None or f_diff is None:
        return
    d = np.abs(np.asarray(delta, np.float64))
    scale = np.maximum(np.abs(np.asarray(f_diff, np.float64)), 1e-3)
    bad = np.flatnonzero(d > 0.1 * scale)
    if bad.size:
        i = int(bad[0])
        warnings.warn(
            f"{method_name}: the convergence delta of {bad.size} example(s) is large for "
            f"the change of the explained output (example {i}: delta {d[i]:.3g} vs "
            f"|f(x) - f(baseline)| = {abs(float(np.asarray(f_diff)[i])):.3g}); the scores do "
            "not add up to the prediction. Use more steps (`n_steps`), or another rule "
            "(method='riemann_trapezoid').",
            UserWarning,
            stacklevel=3,
        )


def _check_token_model(model):
    """Refuse models that do not take integer token ids (images, float features)."""
    from kerastrace._utils import instrument

    specs = instrument.input_specs(model)
    if isinstance(specs, dict):
        return  # model_inputs checks the keys
    first = specs[0] if isinstance(specs, (list, tuple)) and specs else specs
    dtype = getattr(first, "dtype", None)
    if dtype is not None and not dtype.is_integer:
        raise ValueError(
            "Received an invalid value for argument `model`: it takes "
            f"{dtype.name} inputs of shape {tuple(first.shape)}, not token ids, so it has no "
            "token embedding to explain words with. Explain its inputs directly with "
            "`kerastrace.attribution.IntegratedGradients` or `Saliency`."
        )


def _output_shape(model, inputs):
    """Per-example output shape (without the batch axis), from one traced call."""
    spec = getattr(model, "output_shape", None)
    if isinstance(spec, tuple) and spec and all(isinstance(d, (int, type(None))) for d in spec):
        return tuple(spec[1:])
    out = model(inputs, training=False)
    return tuple(np.shape(out)[1:])


def _token_embedding_or_none(model):
    from kerastrace._utils import instrument

    try:
        return instrument.find_token_embedding(model)
    except Exception:  # noqa: BLE001 - a model that cannot be traced symbolically
        return None


def _baseline_ids(baselines, ids):
    """Baseline token ids broadcast to `ids`; non-integral values are refused, not truncated."""
    from kerastrace.attribution import _core

    arr = np.asarray(baselines.numpy() if hasattr(baselines, "numpy") else baselines)
    try:
        arr = np.broadcast_to(arr, ids.shape)
    except ValueError:
        raise ValueError(
            "Received an invalid value for argument `baselines`, expected token ids that "
            f"broadcast to `ids` {ids.shape}. Received: baselines with shape {arr.shape}"
        ) from None
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.inexact)):
        raise v.invalid("baselines", "integer token ids", baselines)
    _core.check_integral(arr, "baselines", "the baseline token ids")
    return arr.astype("int32")


def _check_ids(ids, pad_id, baselines, layer):
    """Token ids, the pad id and baseline ids must be in the token embedding's vocabulary."""
    from kerastrace.attribution import _core

    if layer is None:
        return
    n = getattr(layer, "input_dim", None)
    if n is not None and not 0 <= int(pad_id) < n:
        raise v.invalid(
            "pad_id", f"an id in the token embedding's vocabulary, 0..{n - 1}", pad_id,
            hint=f"The token embedding {layer.name!r} has input_dim={n}",
        )
    _core.check_ids_in_vocabulary(ids, layer, "ids", "the token ids")
    if baselines is not None:
        _core.check_ids_in_vocabulary(
            _baseline_ids(baselines, ids), layer, "baselines", "the baseline token ids"
        )


def _keep_mask(ids, mask, special_ids):
    """Positions the IG baseline keeps: padding and special tokens ([CLS], [SEP])."""
    keep = ~np.asarray(mask, bool)
    if special_ids:
        keep |= np.isin(ids, np.asarray(list(special_ids)))
    return keep


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
    special_ids=None,
    query="auto",
    stack: str | None = None,
    segment_ids=None,
    feature_mask=None,
    n_samples: int | None = None,
    max_evals: int | None = None,
    mask_padding: bool = False,
):
    """Per-token scores `(B, T)` of a token-id classifier for one method.

    The model takes `(B, T)` token ids or, for keras-hub models, a dict
    `{"token_ids", "padding_mask"[, "segment_ids"]}` that is built from
    `ids` and `mask` (see `model_inputs`).

    Args:
        model: A Keras model from token ids to `(B, C)` outputs.
        ids: `(B, T)` int token ids.
        method: One of `METHODS`.
        target: Class index (int or one per example); default: the predicted class.
        n_steps: Path points for `integrated_gradients`.
        pad_id: Id of the [PAD] token (the baseline / occlusion value).
        mask: `(B, T)` bool of real tokens; default `ids != pad_id`.
        embedding_layer: The token embedding layer (default: found in the model).
        internal_batch_size: Rows per model call for the batched methods.
        baselines: Baseline token ids for `integrated_gradients`, broadcast to
            `ids`. Default: the word tokens replaced by `pad_id`, padding and
            the special tokens in `special_ids` kept, as Captum's BERT
            tutorials do (an all-pad baseline hands `[CLS]` most of the score).
        nt_samples: Noise samples for `smoothgrad`.
        stdev: Noise standard deviation for `smoothgrad`, relative to the
            embeddings' standard deviation.
        seed: Seed for `smoothgrad`.
        special_ids: Ids of special tokens (`[CLS]`, `[SEP]`) kept in the
            default baseline.
        query: For the rollout methods, the position whose row is read (see
            `kerastrace.attention.query_scores`): `"auto"` (default) reads
            the last real token of causal models, the mean of mean-pooled
            models and otherwise the first real token ([CLS]).
        stack: For encoder-decoder models, the attention stack of the
            rollout methods.
        segment_ids: Segment ids for keras-hub models that take them.
        feature_mask: For the perturbation methods: `(B, T)` int feature ids
            (e.g. `kerastrace.text.word_feature_mask`), -1 for tokens never
            removed. Default: every real token that is not in `special_ids`
            is its own feature. A feature's score is spread evenly over its
            tokens, so summing per feature gives it back.
        n_samples: For `shapley` the number of permutations (default 25),
            for `kernel_shap` / `lime` the model evaluations per text
            (defaults: `max(25, 2F + 2)` / 50).
        max_evals: Instead of `n_samples`, the budget of model evaluations per
            text for `shapley`, `kernel_shap` and `lime`.
        mask_padding: For keras-hub models and the perturbation methods: a
            removed token also gets `padding_mask = 0`.

    Returns:
        `(scores, targets, delta)`: `(B, T)` float32 scores (0 at masked
        positions), the `(B,)` explained classes, and the `(B,)` convergence
        delta for `integrated_gradients`, or the efficiency residual
        `sum(scores) - (f(x) - f(all features removed))` for `shapley` and
        `kernel_shap` (else None).

    Raises:
        ValueError: for an unknown method, ids that are not `(B, T)`, ids,
            `pad_id` or baseline ids outside the token embedding's
            vocabulary (`input_dim`), non-integral baselines, and NaN/inf
            model outputs or gradients.
    """
    from kerastrace import attention, attribution
    from kerastrace._utils import instrument
    from kerastrace.attention._analysis import resolve_query

    v.check_one_of("method", method, METHODS)
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            "Received an invalid value for argument `ids`, expected integer token ids of "
            f"shape (B, T). Received: ids.shape={ids.shape}, dtype={ids.dtype}"
        )
    ids = ids.astype("int32")
    if isinstance(pad_id, bool) or not isinstance(pad_id, (int, np.integer)):
        raise v.invalid("pad_id", "an integer token id", pad_id)
    mask = ids != pad_id if mask is None else np.asarray(mask, bool)
    _check_token_model(model)
    vocab_layer = embedding_layer or _token_embedding_or_none(model)
    _check_ids(ids, pad_id, baselines, vocab_layer)
    inputs = model_inputs(model, ids, mask, segment_ids)
    if target is None:  # the predicted class: one forward pass
        logits = np.asarray(model.predict(inputs, verbose=0, batch_size=256))
        if logits.ndim > 2:
            raise ValueError(
                "Received an invalid value for argument `target`: the model outputs a "
                f"sequence of shape {logits.shape} (e.g. a language model's (B, T, V) "
                "logits), so 'the predicted class' is not defined. Pass `target=` as an "
                "index into the flattened output (position * V + token), or trace "
                "generated tokens with `kerastrace.generation`. Received: target=None"
            )
        targets = logits.reshape(len(ids), -1).argmax(-1).astype("int32")
    else:
        targets = np.broadcast_to(np.asarray(target, dtype="int32"), (len(ids),)).copy()
    delta = None
    out_shape = _output_shape(model, inputs)
    if isinstance(query, str) and query == "auto" and len(out_shape) > 1:
        # A sequence output (B, T, V): read the row of the explained position.
        query = (targets // int(np.prod(out_shape[1:]))).astype(int)
    if method in ("integrated_gradients", "gradient_x_activation", "smoothgrad"):
        emb = embedding_layer or find_token_embedding(model)
        if method == "integrated_gradients":
            lig = _method_object(
                model, ("lig", id(emb)), lambda: attribution.LayerIntegratedGradients(model, emb)
            )
            if baselines is None:
                base_ids = np.where(_keep_mask(ids, mask, special_ids), ids, pad_id)
            else:
                base_ids = _baseline_ids(baselines, ids)
            base = model_inputs(model, base_ids, mask, segment_ids)
            base = {"token_ids": base["token_ids"]} if isinstance(base, dict) else base
            attr, delta = lig.attribute(
                inputs, baselines=base, target=targets, n_steps=n_steps,
                internal_batch_size=internal_batch_size, return_convergence_delta=True,
            )
            scores = attribution.token_scores(attr)
            _check_delta(delta, scores.sum(-1) - delta, "integrated_gradients")
        elif method == "gradient_x_activation":
            gxa = _method_object(
                model, ("gxa", id(emb)), lambda: attribution.LayerGradientXActivation(model, emb)
            )
            attr = gxa.attribute(inputs, target=targets, internal_batch_size=internal_batch_size)
            scores = attribution.token_scores(attr)
        else:
            v.check_positive_int("nt_samples", nt_samples)
            v.check_non_negative_float("stdev", stdev)
            nt = _method_object(
                model, ("nt", id(emb)),
                lambda: attribution.NoiseTunnel(attribution.LayerGradientXActivation(model, emb)),
            )
            # Noise relative to the spread of the embeddings being explained.
            table = np.asarray(emb.embeddings.numpy() if hasattr(emb, "embeddings") else 1.0)
            spread = float(np.std(table[ids])) if table.ndim == 2 and ids.size else 1.0
            attr = nt.attribute(
                inputs, nt_samples=nt_samples, stdevs=stdev * spread, seed=seed, target=targets,
                internal_batch_size=internal_batch_size or 512,
            )
            scores = attribution.token_scores(attr)
    elif method == "attention_x_gradient":
        gwr = _method_object(
            model, ("gwr",), lambda: attribution.GradientWeightedRollout(model)
        )
        scores = gwr.attribute(
            inputs, target=targets, query=query, mask=mask, stack=stack,
            internal_batch_size=internal_batch_size,
        )
    elif method == "attention_rollout":
        weights = attention.collect(model, inputs)
        if stack is not None:
            weights = weights.stack(stack)
        matrix = attention.attention_rollout(weights, mask=mask)
        q = resolve_query(query, weights.is_causal(), instrument.has_mean_pooling(model))
        scores = attention.query_scores(matrix, q, mask=mask)
    elif method in PERTURBATION_METHODS:
        scores, delta = _perturbation_scores(
            model, inputs, ids, mask, targets, method, pad_id, special_ids, feature_mask,
            n_samples, max_evals, seed, mask_padding, internal_batch_size,
        )
    else:  # occlusion
        occ = _method_object(model, ("occlusion",), lambda: attribution.Occlusion(model))
        occluded = {"token_ids": pad_id} if isinstance(inputs, dict) else pad_id
        scores = occ.attribute(
            inputs, sliding_window_shapes=(1,), baselines=occluded, target=targets,
            internal_batch_size=internal_batch_size,
        )
        scores = scores["token_ids"] if isinstance(scores, dict) else scores
    scores = np.where(mask, np.asarray(scores, dtype="float32"), 0.0).astype("float32")
    return scores, targets, delta


def _token_features(ids, mask, special_ids, feature_mask):
    """`(B, T)` int32 feature ids: the given mask, or one feature per real non-special token."""
    if feature_mask is not None:
        fm = np.asarray(feature_mask)
        if fm.shape != ids.shape or not np.issubdtype(fm.dtype, np.integer):
            raise ValueError(
                "Received an invalid value for argument `feature_mask`, expected integer "
                f"feature ids of the shape of `ids` {ids.shape}. Received: feature_mask with "
                f"shape {fm.shape} and dtype {fm.dtype}"
            )
        return np.where(mask, fm, -1).astype("int32")
    real = np.asarray(mask, bool)
    if special_ids:
        real &= ~np.isin(ids, np.asarray(list(special_ids)))
    return np.where(real, np.cumsum(real, axis=1) - 1, -1).astype("int32")


def _perturbation_scores(model, inputs, ids, mask, targets, method, pad_id, special_ids,
                         feature_mask, n_samples, max_evals, seed, mask_padding,
                         internal_batch_size):
    """`(B, T)` token scores and the efficiency residual of a perturbation method."""
    from kerastrace import attribution

    cls = getattr(attribution, PERTURBATION_METHODS[method])
    obj = _method_object(model, (method,), lambda: cls(model))
    fm = _token_features(ids, mask, special_ids, feature_mask)
    kwargs = {}
    if method == "shapley":
        kwargs = dict(n_samples=n_samples, max_evals=max_evals, seed=seed)
    elif method in ("kernel_shap", "lime"):
        if n_samples is not None and max_evals is not None:
            raise ValueError(
                "Received an invalid value for argument `max_evals`: give either `n_samples` "
                f"or `max_evals`, not both. Received: n_samples={n_samples!r}, "
                f"max_evals={max_evals!r}"
            )
        budget = n_samples if n_samples is not None else max_evals
        kwargs = dict(seed=seed)
        if budget is not None:
            kwargs["n_samples"] = budget
    per_eval = None
    if internal_batch_size is not None:
        per_eval = max(1, v.check_positive_int("internal_batch_size", internal_batch_size)
                       // len(ids))
    is_dict = isinstance(inputs, dict)
    phi, info = obj.attribute(
        inputs,
        baselines={"token_ids": pad_id} if is_dict else pad_id,
        target=targets,
        feature_mask={"token_ids": fm} if is_dict else fm,
        perturbations_per_eval=per_eval,
        mask_padding=mask_padding,
        return_input_shape=False,
        return_info=True,
        **kwargs,
    )
    # Spread every feature's score evenly over its tokens.
    rows = np.arange(len(ids))[:, None]
    keep = fm >= 0
    safe = np.where(keep, fm, 0)
    counts = np.zeros(phi.shape, np.int64)
    np.add.at(counts, (np.broadcast_to(rows, fm.shape)[keep], fm[keep]), 1)
    share = phi[rows, safe] / np.maximum(counts[rows, safe], 1)
    return np.where(keep, share, 0.0).astype("float32"), info.delta


@dataclasses.dataclass
class TextExplanation:
    """The explanation of one string.

    Attributes:
        text: The original string.
        method: The attribution method.
        target: The explained class.
        probabilities: Class probabilities for this string (the model's own
            outputs when it ends in a softmax/sigmoid, else a softmax of its
            logits).
        tokens: Token strings (padding included).
        token_scores: `(T,)` float32 score per token (0 for padding).
        mask: `(T,)` bool, True for real tokens (special tokens included).
        words: `[(word, (start, end), score), ...]`: scores summed per word of
            `text`, with character spans into it.
        delta: Convergence delta (Integrated Gradients), or the efficiency
            residual of `shapley` / `kernel_shap` (their word scores add up
            to `f(text) - f(every word removed)`); None for other methods.
        special: `(T,)` bool, True for `[CLS]`, `[SEP]` and padding: tokens
            that do not come from the text and are left out of rankings.
        unknown: `(T,)` bool, True for tokens of words that are not in the
            tokenizer's vocabulary (the model read `[UNK]` there); None when
            not known.
        unknown_words: One bool per entry of `words`: True for a word the
            model read as `[UNK]`. Its score is the score of the unknown
            token, not of the word itself. `plot()` and `to_html()` mark such
            words with `UNKNOWN_MARK` and a note; `to_dict()` has an
            `"unknown"` flag per word and per token.
        offsets: `(T, 2)` int character offsets of every token into `text`
            (`(-1, -1)` for special tokens and padding), or None.
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
    special: np.ndarray | None = None
    unknown: np.ndarray | None = None
    unknown_words: list | None = None
    offsets: np.ndarray | None = None

    def _unknown_tokens(self) -> np.ndarray:
        if self.unknown is None:
            return np.zeros(len(self.tokens), bool)
        return np.asarray(self.unknown, bool)

    def _display_tokens(self) -> list:
        """Token strings for the pictures: unknown words shown as `word (unknown)`."""
        unknown = self._unknown_tokens()
        out = []
        for i, tok in enumerate(self.tokens):
            if unknown[i]:
                start, end = (-1, -1) if self.offsets is None else map(int, self.offsets[i])
                tok = (self.text[start:end] if start >= 0 else tok) + UNKNOWN_MARK
            out.append(tok)
        return out

    def top_tokens(self, k: int = 5, include_special: bool = False) -> list:
        """The `k` tokens with the largest |score|, as `(position, token, score)`.

        Special tokens (`[CLS]`, `[SEP]`, padding) are left out unless
        `include_special=True`.
        """
        k = v.check_positive_int("k", k)
        keep = np.asarray(self.mask, bool).copy()
        if not include_special and self.special is not None:
            keep &= ~np.asarray(self.special, bool)
        pos = np.flatnonzero(keep)
        order = pos[np.argsort(-np.abs(self.token_scores[pos]), kind="stable")][:k]
        return [(int(i), self.tokens[i], float(self.token_scores[i])) for i in order]

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "method": self.method,
            "target": int(self.target),
            "probabilities": [float(p) for p in self.probabilities],
            "tokens": [t for t, m in zip(self.tokens, self.mask) if m],
            "token_scores": [float(s) for s, m in zip(self.token_scores, self.mask) if m],
            "special": (
                None if self.special is None
                else [bool(x) for x, m in zip(self.special, self.mask) if m]
            ),
            "unknown": [bool(u) for u, m in zip(self._unknown_tokens(), self.mask) if m],
            "words": [
                {"word": w, "start": int(s), "end": int(e), "score": float(sc),
                 "unknown": bool(self.unknown_words[k]) if self.unknown_words else False}
                for k, (w, (s, e), sc) in enumerate(self.words)
            ],
            "delta": None if self.delta is None else float(self.delta),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def to_html(self, path=None, *, class_names=None) -> str:
        """The explanation as one self-contained HTML page (no network).

        The user's words (not word pieces) coloured by score (red supports
        the explained class, blue speaks against it; the text colour keeps
        every word readable), under a heading with the sentence, the
        prediction (class and probability) and the method, with a legend.
        Words the model read as `[UNK]` show as `word (unknown)`, with a
        note. Every user string is HTML-escaped. In a notebook the
        explanation displays itself (`_repr_html_`).

        Args:
            path: When given, the page is also written there
                (`kerastrace.io.atomic_write`).
            class_names: Names of the classes, for the heading.

        Returns:
            The page (a `str`).
        """
        from kerastrace.visualization import explanations_page, write_html

        page = explanations_page(
            [self], class_names=class_names, title=f"kerastrace: {self.method}"
        )
        if path is not None:
            write_html(path, page)
        return str(page)

    def _repr_html_(self) -> str:
        from kerastrace.visualization import explanation_html

        return str(explanation_html(self))

    def plot(self, ax=None):
        """Coloured tokens as a matplotlib figure; returns `(fig, ax)`.

        The title holds the text (up to two lines), the method, the
        explained class and its probability. Words the model read as `[UNK]`
        show as `word (unknown)`, and the title says so.
        """
        import textwrap

        from kerastrace.visualization import plot_token_attributions

        p = self.probabilities[self.target] if self.target < len(self.probabilities) else None
        lines = textwrap.wrap(str(self.text), 90, max_lines=2, placeholder=" …")
        prob = "" if p is None else f", p={p:.2f}"
        lines.append(f"{self.method}: class {self.target}{prob}")
        if (self._unknown_tokens() & np.asarray(self.mask, bool)).any():
            lines += [part.strip() for part in UNKNOWN_NOTE.replace("; ", ";\n").split("\n")]
        title = "\n".join(lines).replace("$", r"\$")  # the user's text, drawn literally
        return plot_token_attributions(
            self.token_scores, self._display_tokens(), ax=ax, mask=self.mask, title=title
        )


def _model_length(model):
    """The fixed token length the model takes, or None when any length works."""
    from kerastrace._utils import instrument

    specs = instrument.input_specs(model)
    if isinstance(specs, dict):
        specs = specs.get("token_ids")
    elif isinstance(specs, (list, tuple)):
        specs = specs[0] if specs else None
    shape = getattr(specs, "shape", None)
    if shape is None or len(shape) < 2:
        return None
    return shape[1]


def explain_text(
    model,
    tokenizer,
    texts,
    method: str = "integrated_gradients",
    target=None,
    n_steps: int = 32,
    outputs: str = "auto",
    **kwargs,
) -> list[TextExplanation]:
    """Tokenize `texts`, score every token with `method`, map scores to words.

    Works with token-id models (`(B, T)` ids in) and keras-hub text models
    (dict inputs `{"token_ids", "padding_mask", ...}`).

    Args:
        model: A token-id classifier `(B, T) -> (B, C)`; a fixed `T` must
            equal `tokenizer.sequence_length`.
        tokenizer: A `kerastrace.text.Tokenizer`.
        texts: One string or a list of strings.
        method: One of `METHODS`.
        target: Class to explain (default: the predicted class).
        n_steps: Path points for Integrated Gradients.
        outputs: `"auto"` (default: detect a final softmax/sigmoid),
            `"logits"` or `"probabilities"`: how to turn the model's outputs
            into the reported probabilities (probabilities are never
            re-softmaxed).
        **kwargs: Passed to `token_attributions` (e.g. `query`, `stack`,
            `internal_batch_size`, and for the perturbation methods
            `n_samples`, `max_evals`, `seed`, `mask_padding`). The
            perturbation methods (`feature_ablation`, `shapley`,
            `kernel_shap`, `lime`) get one feature per word of the text
            (`kerastrace.text.word_feature_mask`) unless `feature_mask` is
            given: every word gets one score, all its pieces removed together.

    Returns:
        One `TextExplanation` per string.

    Raises:
        ValueError: if the tokenizer's length does not fit the model, a text
            has no tokens, a text has no word in the vocabulary (every word
            is `[UNK]`), or for invalid arguments.

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
    >>> [e] = explain_text(model, Tokenizer(vocab, sequence_length=6), "Good film",
    ...                    method="shapley", n_samples=4, seed=0)
    >>> len(e.words), abs(e.delta) < 1e-5  # one Shapley value per word; efficiency
    (2, True)
    """
    from kerastrace.text import aggregate_to_words

    v.check_one_of("outputs", outputs, ("auto", "logits", "probabilities"))
    texts = _check_texts(texts)
    length = _model_length(model)
    if length is not None and length != tokenizer.sequence_length:
        raise ValueError(
            "Received an invalid value for argument `tokenizer`: its sequence_length "
            f"({tokenizer.sequence_length}) does not fit the model's input length ({length}). "
            f"Received: tokenizer.sequence_length={tokenizer.sequence_length}"
        )
    tok = tokenizer.tokenize(list(texts))
    empty = np.flatnonzero(~tok.token_mask.any(axis=1))
    if empty.size:
        raise ValueError(
            "Received an invalid value for argument `texts`: text "
            f"{int(empty[0])} ({_shorten(tok.texts[int(empty[0])])!r}) has no tokens to "
            "explain (it is empty, or only whitespace or control characters)."
        )
    unknown = _unknown_tokens(tokenizer, tok)
    no_known = np.flatnonzero((unknown == tok.token_mask).all(axis=1))
    if no_known.size:
        i = int(no_known[0])
        raise ValueError(
            "Received an invalid value for argument `texts`: text "
            f"{i} ({_shorten(tok.texts[i])!r}) has no word in the tokenizer's vocabulary "
            f"(every word is {getattr(tokenizer, 'unknown_token', '[UNK]')}), so the "
            "explanation could only score the unknown token. Check that the tokenizer's "
            "vocabulary (and lower-casing) is the one the model was trained with."
        )
    raw = np.asarray(model.predict(model_inputs(model, tok.ids, tok.mask), verbose=0))
    if raw.ndim > 2 and target is None:
        raise ValueError(
            "Received an invalid value for argument `target`: the model outputs a sequence "
            f"of shape {raw.shape} (e.g. a language model's (B, T, V) logits), so 'the "
            "predicted class' is not defined. Pass `target=` as an index into the flattened "
            "output (position * V + token), or trace generated tokens with "
            "`kerastrace.generation`. Received: target=None"
        )
    raw = raw.reshape(len(tok), -1)
    kind = output_kind(model, raw) if outputs == "auto" else outputs
    probs = to_probabilities(raw, kind)
    special_ids = [i for i in (tokenizer.cls_id, tokenizer.sep_id) if i is not None and i >= 0]
    if method in PERTURBATION_METHODS and kwargs.get("feature_mask") is None:
        from kerastrace.text import word_feature_mask

        kwargs["feature_mask"] = word_feature_mask(tok)
    scores, targets, delta = token_attributions(
        model, tok.ids, method=method,
        target=raw.argmax(-1).astype("int32") if target is None else target,
        n_steps=n_steps, pad_id=tokenizer.pad_id, mask=tok.mask, special_ids=special_ids,
        **kwargs,
    )
    word_scores = aggregate_to_words(scores, tok)
    special = tok.special_tokens_mask
    out = []
    for i in range(len(tok)):
        unknown_spans = {
            tuple(tok.word_offsets[i][k]) for k in np.unique(tok.word_ids[i][unknown[i]])
        }
        words = list(word_scores[i])
        out.append(TextExplanation(
            text=tok.texts[i],
            method=method,
            target=int(targets[i]),
            probabilities=probs[i],
            tokens=list(tok.tokens[i]),
            token_scores=scores[i],
            mask=tok.mask[i],
            words=words,
            delta=None if delta is None else float(delta[i]),
            special=special[i],
            unknown=unknown[i],
            unknown_words=[tuple(w.span) in unknown_spans for w in words],
            offsets=tok.offsets[i],
        ))
    return out


def _check_texts(texts) -> list:
    """`texts` as a non-empty list of `str` (bytes decoded as UTF-8), else a clear error."""
    given = texts
    if isinstance(texts, (str, bytes)):
        texts = [texts]
    elif isinstance(texts, np.ndarray):
        texts = texts.tolist() if texts.ndim == 1 else None
    elif not isinstance(texts, (list, tuple)):
        texts = None
    if texts is None:
        raise TypeError(
            "Received an invalid value for argument `texts`, expected a string or a list of "
            f"strings. Received: texts={_shorten(repr(given))} of type {type(given).__name__}"
        )
    if not texts:
        raise ValueError(
            "Received an invalid value for argument `texts`, expected at least one string. "
            "Received: texts=[]"
        )
    out = []
    for i, t in enumerate(texts):
        if isinstance(t, bytes):
            try:
                t = t.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(
                    f"Received an invalid value for argument `texts`: text {i} is bytes that "
                    f"are not UTF-8. Received: texts[{i}]={_shorten(repr(t))}"
                ) from None
        if not isinstance(t, str):
            raise TypeError(
                f"Received an invalid value for argument `texts`, expected strings. "
                f"Received: texts[{i}]={_shorten(repr(t))} of type {type(t).__name__}"
            )
        out.append(t)
    return out


def _unknown_tokens(tokenizer, tok) -> np.ndarray:
    """`(B, T)` bool: text tokens that are the tokenizer's unknown token."""
    unk = getattr(tokenizer, "unknown_id", None)
    if unk is None:
        return np.zeros(tok.ids.shape, bool)
    return (tok.ids == unk) & tok.token_mask


def _shorten(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters for error messages."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
