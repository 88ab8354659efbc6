"""Attention-aware attribution for models with kerastrace attention layers."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from kerastrace._utils import validation as v
from kerastrace._utils.types import Inputs, Target
from kerastrace.attribution import _core
from kerastrace.attribution._base import Attribution
from kerastrace.layers import SelfAttention


def _walk(layer, seen):
    children = getattr(layer, "_layers", None) or []
    try:
        children = list(layer._flatten_layers(include_self=False, recursive=False))
    except Exception:  # noqa: BLE001 - not a Keras layer with sublayers
        pass
    for child in children:
        if id(child) in seen:
            continue
        seen.add(id(child))
        yield child
        yield from _walk(child, seen)


def find_attention_layers(model) -> list:
    """All `kerastrace.layers.SelfAttention` layers inside `model` (recursively)."""
    if isinstance(model, SelfAttention):
        return [model]
    return [layer for layer in _walk(model, set()) if isinstance(layer, SelfAttention)]


def _path(layer):
    return getattr(layer, "path", None) or layer.name


class AttentionXGradient(Attribution):
    """Attention weights times the gradient of the target with respect to them.

    For every `kerastrace.layers.SelfAttention` in the model (including the
    ones inside `TransformerBlock`s) returns `A * dS/dA` of shape
    `(B, num_heads, T, T)`, per layer and head. The gradient with respect to
    the weights is taken by adding a zero "probe" tensor `P` to the weights
    inside the layer (`context = (A + P) V`) while the compiled function is
    traced, and differentiating at `P = 0`; the layers are restored right
    after, so the model is unchanged.

    Args:
        model: A Keras model containing `SelfAttention`/`TransformerBlock` layers.
        layers: Optional list of the attention layers to use (default: all).

    Example:

    >>> import numpy as np, keras
    >>> from kerastrace.layers import TransformerBlock
    >>> from kerastrace.attribution import AttentionXGradient
    >>> keras.utils.set_random_seed(0)
    >>> x_in = keras.Input((5, 8))
    >>> h, _ = TransformerBlock(num_heads=2, ff_dim=8, name="block")(x_in)
    >>> model = keras.Model(x_in, keras.layers.Dense(1)(keras.layers.Flatten()(h)))
    >>> maps = AttentionXGradient(model).attribute(np.ones((3, 5, 8), "float32"))
    >>> {k: v.shape for k, v in maps.items()}
    {'block/attention': (3, 2, 5, 5)}

    References:
        - [Chefer et al., 2021, Generic Attention-model Explainability for
          Interpreting Bi-Modal and Encoder-Decoder Transformers](https://arxiv.org/abs/2103.15679)
    """

    def __init__(self, model, layers=None):
        super().__init__(model)
        found = find_attention_layers(model) if layers is None else list(layers)
        if not found or not all(isinstance(layer, SelfAttention) for layer in found):
            raise ValueError(
                "Received an invalid value for argument `layers`: expected kerastrace "
                "SelfAttention layers (e.g. inside TransformerBlocks), found none. "
                f"Received: layers={layers!r}"
            )
        self.layers = found
        self.trace_count = 0
        self._fns = {}
        self._names_for = {}

    def _get(self, xs, target_fn):
        key = (tuple((x.shape[1:], x.dtype.str) for x in xs), id(target_fn))
        fn = self._fns.get(key)
        if fn is not None:
            return fn

        def body(xs_t, target):
            self.trace_count += 1
            probes, weights, owners = [], [], []
            originals = {}
            with tf.GradientTape() as tape:
                for layer in self.layers:
                    original = layer._attend
                    originals[id(layer)] = (layer, "_attend" in layer.__dict__, original)

                    def patched(q, k, val, attn_mask, training, _orig=original, _layer=layer):
                        context, w = _orig(q, k, val, attn_mask, training)
                        probe = tf.zeros_like(w)
                        tape.watch(probe)
                        probes.append(probe)
                        weights.append(w)
                        owners.append(_layer)
                        return context + tf.matmul(tf.cast(probe, val.dtype), val), w + probe

                    object.__setattr__(layer, "_attend", patched)
                try:
                    outputs = self._forward(tuple(xs_t))
                    score = _core.select_scores(outputs, target, target_fn)
                finally:
                    for layer, had, original in originals.values():
                        if had:
                            object.__setattr__(layer, "_attend", original)
                        else:
                            del layer.__dict__["_attend"]
            if not probes:
                raise ValueError(
                    "Received an invalid value for argument `model`: none of its attention "
                    "layers was called in the forward pass."
                )
            grads = tape.gradient(score, probes)
            grads = [tf.zeros_like(p) if g is None else g for g, p in zip(grads, probes)]
            names = []
            for layer in owners:
                name = _path(layer)
                while name in names:
                    name += "#2"
                names.append(name)
            self._names_for[key] = names
            return tuple(weights), tuple(grads)

        fn = tf.function(
            body,
            input_signature=(
                tuple(_core.spec_for(x) for x in xs),
                tf.TensorSpec((None,), tf.int32),
            ),
        )
        self._fns[key] = fn
        return fn

    def weights_and_gradients(
        self, inputs: Inputs, target: Target = None, internal_batch_size: int | None = None
    ) -> dict:
        """Return `{layer_path: (weights, gradients)}`, each `(B, H, T, T)` float32.

        Args:
            inputs: Model inputs (token ids allowed), `(B, ...)` or a tuple.
            target: int, one int per example, or a callable score.
            internal_batch_size: Examples per model call (default: all).
        """
        xs, _ = _core.normalize_inputs(inputs)
        _core.check_finite(xs, names=self._names)
        tgt = self._target(target, xs)
        batch = xs[0].shape[0]
        chunk = v.check_optional_positive_int("internal_batch_size", internal_batch_size) or batch
        fn = self._get(xs, tgt.fn)
        parts_w, parts_g = [], []
        for start in range(0, batch, chunk):
            idx = np.minimum(np.arange(start, start + chunk), batch - 1)  # padded chunk
            n_valid = min(chunk, batch - start)
            w, g = fn(tuple(x[idx] for x in xs), tgt.indices[idx])
            parts_w.append([t.numpy()[:n_valid] for t in w])
            parts_g.append([t.numpy()[:n_valid] for t in g])
        key = (tuple((x.shape[1:], x.dtype.str) for x in xs), id(tgt.fn))
        names = self._names_for[key]
        return {
            name: (
                np.concatenate([p[i] for p in parts_w], axis=0),
                np.concatenate([p[i] for p in parts_g], axis=0),
            )
            for i, name in enumerate(names)
        }

    def attribute(
        self, inputs: Inputs, target: Target = None, internal_batch_size: int | None = None
    ) -> dict:
        """Return `{layer_path: A * dS/dA}` with arrays of shape `(B, H, T, T)`.

        Args:
            inputs: Model inputs (token ids allowed).
            target: int, one int per example, or a callable score; required
                when the output has more than one element per example.
            internal_batch_size: Examples per model call.

        Returns:
            A dict in forward order, one `(B, num_heads, T, T)` array per layer call.
        """
        wg = self.weights_and_gradients(inputs, target, internal_batch_size)
        return {name: w * g for name, (w, g) in wg.items()}


class GradientWeightedRollout(AttentionXGradient):
    """Gradient-weighted attention rollout (Chefer et al., 2021).

    With `Abar_l = mean_heads(relu(dS/dA_l * A_l))` for each attention layer
    in forward order, the relevance matrix is `R = I` updated by
    `R <- R + Abar_l @ R`; `R[b, i, j]` is the relevance of token `j` for
    the representation of token `i`.

    Example:

    >>> import numpy as np, keras
    >>> from kerastrace.layers import TransformerBlock
    >>> from kerastrace.attribution import GradientWeightedRollout
    >>> keras.utils.set_random_seed(0)
    >>> x_in = keras.Input((5, 8))
    >>> h, _ = TransformerBlock(num_heads=2, ff_dim=8)(x_in)
    >>> h, _ = TransformerBlock(num_heads=2, ff_dim=8)(h)
    >>> model = keras.Model(x_in, keras.layers.Dense(1)(keras.layers.Flatten()(h)))
    >>> rollout = GradientWeightedRollout(model)
    >>> rollout.attribute_matrix(np.ones((2, 5, 8), "float32")).shape
    (2, 5, 5)
    >>> rollout.attribute(np.ones((2, 5, 8), "float32"), query_index=0).shape
    (2, 5)

    References:
        - [Chefer et al., 2021](https://arxiv.org/abs/2103.15679)
        - [Abnar & Zuidema, 2020, Quantifying Attention Flow in
          Transformers](https://arxiv.org/abs/2005.00928)
    """

    def attribute_matrix(
        self, inputs: Inputs, target: Target = None, internal_batch_size: int | None = None
    ) -> np.ndarray:
        """Return the relevance matrix `R` of shape `(B, T, T)`."""
        wg = self.weights_and_gradients(inputs, target, internal_batch_size)
        rel = None
        for w, g in wg.values():
            abar = np.maximum(w * g, 0.0).mean(axis=1)  # (B, T, T)
            if rel is None:
                rel = np.broadcast_to(np.eye(abar.shape[-1], dtype=np.float32), abar.shape)
            rel = rel + abar @ rel
        return rel.astype(np.float32)

    def attribute(
        self,
        inputs: Inputs,
        target: Target = None,
        query_index: int | None = None,
        internal_batch_size: int | None = None,
    ) -> np.ndarray:
        """Per-token relevance `(B, T)`.

        Args:
            inputs: Model inputs (token ids allowed).
            target: As in `AttentionXGradient.attribute`.
            query_index: Row of `R` to return (e.g. 0 for a `[CLS]` token);
                default: the mean over all query rows (mean-pooling models).
            internal_batch_size: Examples per model call.

        Returns:
            Array `(B, T)`.
        """
        rel = self.attribute_matrix(inputs, target, internal_batch_size)
        if query_index is None:
            return rel.mean(axis=1)
        if not isinstance(query_index, int) or not -rel.shape[1] <= query_index < rel.shape[1]:
            raise v.invalid("query_index", f"an int in [0, {rel.shape[1]})", query_index)
        return rel[:, query_index]


__all__ = ["AttentionXGradient", "GradientWeightedRollout", "find_attention_layers"]
