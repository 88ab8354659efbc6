"""Attention-aware attribution: attention x gradient and gradient-weighted rollout."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from kerastrace._utils import instrument, tf_compat
from kerastrace._utils import validation as v
from kerastrace._utils.types import Inputs, Target
from kerastrace.attribution import _core
from kerastrace.attribution._base import Attribution


def find_attention_layers(model) -> list:
    """All attention layers inside `model` that kerastrace can read, depth first.

    `kerastrace.layers.SelfAttention` (also inside `TransformerBlock`),
    `keras.layers.MultiHeadAttention` and its subclasses, and keras-hub's
    attention layers.
    """
    return list(instrument.attention_layers(model).values())


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
        found = instrument.attention_layers(model)
        if layers is not None:
            chosen = {}
            for spec in (layers if isinstance(layers, (list, tuple)) else [layers]):
                path, layer = instrument.resolve_layer(model, spec, "layers")
                if instrument.attention_family(layer) is None:
                    raise ValueError(
                        "Received an invalid value for argument `layers`: "
                        f"{path!r} ({type(layer).__name__}) is not an attention layer. "
                        f"Attention layers: {list(found)}. Received: layers={layers!r}"
                    )
                chosen[path] = layer
            found = chosen
        if not found:
            raise ValueError(
                "Received an invalid value for argument `model`: it has no attention layer "
                "kerastrace can read (kerastrace SelfAttention/TransformerBlock, "
                "keras.layers.MultiHeadAttention or a keras-hub attention layer). Received: "
                f"model={getattr(model, 'name', model)!r}"
            )
        self.layers = found
        self.trace_count = 0
        self._fns = {}
        self._sites_for = {}

    def _get(self, flat, target_spec, layout):
        key = (tuple((x.shape[1:], x.dtype.str) for x in flat), target_spec.key, layout)
        fn = self._fns.get(key)
        if fn is not None:
            return fn, key
        target_fn, space = target_spec.fn, target_spec.space

        def body(flat_t, target, contrast):
            self.trace_count += 1
            probes, weights = [], []
            with tf.GradientTape() as tape:

                def hook(site, w):
                    probe = tf.zeros_like(w)
                    tape.watch(probe)
                    probes.append(probe)
                    weights.append(w)
                    return probe

                with instrument.attention_seams(self.layers, hook) as sites:
                    outputs = self._forward(tuple(flat_t), layout)
                    score = _core.select_scores(outputs, target, target_fn, contrast, space)
            if not probes:
                raise ValueError(
                    "Received an invalid value for argument `model`: none of its attention "
                    f"layers ({list(self.layers)}) was called in the forward pass."
                )
            grads = tape.gradient(score, probes)
            grads = [tf.zeros_like(p) if g is None else g for g, p in zip(grads, probes)]
            self._sites_for[key] = list(sites)
            return tuple(weights), tuple(grads), _status(score, weights, grads)

        fn = tf_compat.function(
            body,
            input_signature=(
                tuple(_core.spec_for(x) for x in flat),
                tf.TensorSpec((None,), tf.int32),
                tf.TensorSpec((None,), tf.int32),
            ),
        )
        self._fns[key] = fn
        return fn, key

    def _check_status(self, codes, start, key):
        """Raise for the first example whose score, weights or gradients are NaN/inf."""
        bad = np.flatnonzero(codes)
        if not bad.size:
            return
        b, code = int(bad[0]), int(codes[bad[0]])
        where = f"example {start + b}"
        if code == 1:
            raise _core.nonfinite_score_error(where)
        site = self._sites_for[key][(code - 2) // 2].name
        if code % 2 == 0:
            raise ValueError(
                f"The attention weights of {site!r} are NaN or inf at {where}, so attention "
                f"x gradient is undefined. {_core.SCORE_HINT}"
            )
        raise _core.nonfinite_gradient_error(f"the attention weights of {site!r}", where)

    def weights_and_gradients(
        self, inputs: Inputs, target: Target = None, internal_batch_size: int | None = None
    ) -> dict:
        """Return `{site: (weights, gradients)}`, each `(B, H, T_query, T_key)` float32.

        Keys are layer paths (`"path:1"` for a layer's second call), in call
        order; the returned dict's `.sites` (see `kerastrace.attention.AttentionMaps`)
        says which are self- or cross-attention.

        Args:
            inputs: Model inputs (token ids allowed): an array, a tuple or a
                dict (keras-hub models).
            target: int, one int per example, or a callable score.
            internal_batch_size: Examples per model call (default: all).
        """
        from kerastrace.attention import AttentionMaps

        flat, layout = _core.normalize_inputs(inputs)
        _core.check_finite(flat, names=self._names, layout=layout)
        self._check_inputs(flat, layout)
        layout = layout.with_diff(())
        tgt = self._target(target, flat, layout)
        batch = flat[0].shape[0]
        chunk = v.check_optional_positive_int("internal_batch_size", internal_batch_size) or batch
        fn, key = self._get(flat, tgt, layout)
        parts_w, parts_g = [], []
        for start in range(0, batch, chunk):
            idx = np.minimum(np.arange(start, start + chunk), batch - 1)  # padded chunk
            n_valid = min(chunk, batch - start)
            w, g, code = fn(tuple(x[idx] for x in flat), tgt.indices[idx], tgt.contrast[idx])
            self._check_status(code.numpy()[:n_valid], start, key)
            parts_w.append([t.numpy()[:n_valid] for t in w])
            parts_g.append([t.numpy()[:n_valid] for t in g])
        sites = self._sites_for[key]
        out = AttentionMaps()
        for i, site in enumerate(sites):
            out[site.name] = (
                np.concatenate([p[i] for p in parts_w], axis=0),
                np.concatenate([p[i] for p in parts_g], axis=0),
            )
            out.sites[site.name] = site
        return out

    def attribute(
        self, inputs: Inputs, target: Target = None, internal_batch_size: int | None = None
    ) -> dict:
        """Return `{site: A * dS/dA}` with arrays of shape `(B, H, T_query, T_key)`.

        Args:
            inputs: Model inputs (token ids allowed; dicts for keras-hub models).
            target: int, one int per example, or a callable score; required
                when the output has more than one element per example.
            internal_batch_size: Examples per model call.

        Returns:
            An `AttentionMaps` dict in forward order, one array per layer call.

        Raises:
            ValueError: for token ids outside the model's vocabulary, or a
                target score, attention weights or gradients that are NaN or
                inf (the error names the example and the attention layer).
        """
        from kerastrace.attention import AttentionMaps

        wg = self.weights_and_gradients(inputs, target, internal_batch_size)
        return AttentionMaps({name: w * g for name, (w, g) in wg.items()}, wg.sites)


def _status(score, weights, grads):
    """`(B,)` int32 per example: 0 finite; 1 score, `2 + 2k` weights, `3 + 2k` gradient of site k NaN/inf."""

    def finite(t):
        return tf.reduce_all(tf.math.is_finite(tf.reshape(t, [tf.shape(t)[0], -1])), axis=1)

    code = tf.zeros(tf.shape(score), tf.int32)
    for k in reversed(range(len(weights))):
        code = tf.where(finite(grads[k]), code, 3 + 2 * k)
        code = tf.where(finite(weights[k]), code, 2 + 2 * k)
    return tf.where(tf.math.is_finite(score), code, 1)


def default_mask(inputs):
    """`(B, T)` real-token mask from keras-hub dict inputs (`padding_mask`), else None."""
    if isinstance(inputs, dict) and "padding_mask" in inputs:
        m = inputs["padding_mask"]
        return np.asarray(m.numpy() if hasattr(m, "numpy") else m).astype(bool)
    return None


class GradientWeightedRollout(AttentionXGradient):
    """Gradient-weighted attention rollout (Chefer et al., 2021).

    With `Abar_l = mean_heads(relu(dS/dA_l * A_l))` for each self-attention
    layer of one stack in forward order, the relevance matrix is `R = I`
    updated by `R <- R + Abar_l @ R`; `R[b, i, j]` is the relevance of token
    `j` for the representation of token `i`. Works on kerastrace layers,
    `keras.layers.MultiHeadAttention` and keras-hub models. Encoder-decoder
    models have several stacks (`"encoder"`, `"decoder"`); choose one with
    `stack=` (cross-attention is never chained).

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
    >>> rollout.attribute(np.ones((2, 5, 8), "float32"), query=0).shape
    (2, 5)

    References:
        - [Chefer et al., 2021](https://arxiv.org/abs/2103.15679)
        - [Abnar & Zuidema, 2020, Quantifying Attention Flow in
          Transformers](https://arxiv.org/abs/2005.00928)
    """

    def _chain(self, inputs, target, internal_batch_size, stack):
        wg = self.weights_and_gradients(inputs, target, internal_batch_size)
        stacks = wg.stacks
        if stack is None:
            if len(stacks) > 1:
                raise ValueError(
                    "Received an invalid value for argument `stack`: the model has several "
                    f"attention stacks ({ {k: len(x) for k, x in stacks.items()} }); "
                    "rollout chains self-attention over one token axis. Pass "
                    "stack='encoder' or stack='decoder'. Received: stack=None"
                )
            stack = next(iter(stacks))
        if stack not in stacks or stack == "cross":
            raise v.invalid("stack", f"one of {sorted(k for k in stacks if k != 'cross')}", stack)
        return [wg[k] for k in stacks[stack]]

    def attribute_matrix(
        self,
        inputs: Inputs,
        target: Target = None,
        internal_batch_size: int | None = None,
        stack: str | None = None,
    ) -> np.ndarray:
        """Return the relevance matrix `R` of shape `(B, T, T)` of one attention stack."""
        rel = None
        for w, g in self._chain(inputs, target, internal_batch_size, stack):
            abar = np.maximum(w * g, 0.0).mean(axis=1)  # (B, T, T)
            if rel is None:
                rel = np.broadcast_to(np.eye(abar.shape[-1], dtype=np.float32), abar.shape)
            rel = rel + abar @ rel
        return rel.astype(np.float32)

    def attribute(
        self,
        inputs: Inputs,
        target: Target = None,
        query="auto",
        internal_batch_size: int | None = None,
        *,
        mask=None,
        stack: str | None = None,
        query_index: int | None = None,
    ) -> np.ndarray:
        """Per-token relevance `(B, T)`: the row of `R` of the position the model reads.

        Args:
            inputs: Model inputs (token ids allowed; dicts for keras-hub models).
            target: As in `AttentionXGradient.attribute`.
            query: Which row of `R` (see `kerastrace.attention.query_scores`):
                `"cls"` (first real token), `"last"` (last real token),
                `"mean"` (mean over real tokens), an int, or `"auto"`
                (default): `"last"` when the attention is causal, `"mean"`
                when the model mean-pools (`GlobalAveragePooling1D`), else
                `"cls"`.
            internal_batch_size: Examples per model call.
            mask: `(B, T)` boolean array, True on real tokens; default: the
                `padding_mask` of keras-hub dict inputs, else all real.
            stack: The attention stack for encoder-decoder models.
            query_index: Deprecated alias of an int `query`.

        Returns:
            Array `(B, T)`, 0 on masked positions.
        """
        from kerastrace.attention._analysis import query_scores, resolve_query

        if query_index is not None:
            query = query_index
        chain = self._chain(inputs, target, internal_batch_size, stack)
        rel = None
        for w, g in chain:
            abar = np.maximum(w * g, 0.0).mean(axis=1)
            if rel is None:
                rel = np.broadcast_to(np.eye(abar.shape[-1], dtype=np.float32), abar.shape)
            rel = rel + abar @ rel
        causal = all(np.abs(np.triu(w, 1)).max() == 0 for w, _ in chain) and rel.shape[-1] > 1
        query = resolve_query(query, causal, instrument.has_mean_pooling(self.model))
        return query_scores(rel, query, default_mask(inputs) if mask is None else mask)


__all__ = ["AttentionXGradient", "GradientWeightedRollout", "find_attention_layers"]
