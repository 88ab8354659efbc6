"""Multi-head self-attention that returns its attention weights."""

from __future__ import annotations

import math

import keras
from keras import ops

from kerastrace._utils import validation as v
from kerastrace.layers._common import AttentionOutputs, clone_initializer

_MASK_RANKS = (2, 3, 4)


def _as_bool(mask):
    return mask if mask.dtype == "bool" else ops.cast(mask, "bool")


@keras.saving.register_keras_serializable(package="kerastrace")
class SelfAttention(AttentionOutputs, keras.layers.Layer):
    """Multi-head scaled dot-product self-attention with its weights as an output.

    Computes `softmax(Q K^T / sqrt(key_dim)) V` for `num_heads` heads over one
    sequence `inputs` of shape `(B, T, dim)` and projects the concatenated
    heads to `output_dim` (default: `dim`). Unlike
    `keras.layers.MultiHeadAttention`, the attention weights are returned on
    every call (no extra argument to thread through a model), so a model built
    with this layer exposes them as ordinary outputs for analysis.

    The query, key and value projections are stored as one fused kernel of
    shape `(dim, num_heads * (2 * key_dim + value_dim))` and computed with a
    single matrix multiply. `SelfAttention.from_keras()` converts a built
    `keras.layers.MultiHeadAttention` into this layer with its weights copied.

    Masking: keys masked out by a Keras mask (e.g. from
    `Embedding(mask_zero=True)`), by `attention_mask` or by `use_causal_mask`
    get exactly zero weight and every other row sums to 1. A query whose keys
    are all masked (a padded query position, whose own mask is False) gets an
    all-zero row of weights; its output is then the output projection's bias
    (zero when `use_bias=False`), finite and independent of the inputs.

    The softmax is computed in float32 also under mixed precision, and the
    weights are returned as float32; `outputs` have the layer's compute dtype.

    Args:
        num_heads: Number of attention heads, a positive integer.
        key_dim: Size of each head for query and key, a positive integer.
        value_dim: Size of each head for value. Defaults to `key_dim`.
        dropout: Dropout rate on the attention weights during training, in
            `[0, 1)`. The returned weights are the ones before dropout.
        use_bias: Whether the projections have biases.
        output_dim: Size of the output features. Defaults to the input's last
            dimension.
        return_attention_scores: When True (default) calling the layer returns
            `(outputs, attention_weights)`. Set it to False for plain drop-in
            use, e.g. in a `keras.Sequential` model, where the call returns
            only `outputs`.
        kernel_initializer: Initializer for the projection kernels.
        bias_initializer: Initializer for the projection biases.
        kernel_regularizer: Regularizer for the projection kernels.
        bias_regularizer: Regularizer for the projection biases.
        kernel_constraint: Constraint for the projection kernels.
        bias_constraint: Constraint for the projection biases.
        seed: Optional integer seed for the dropout.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Tensor of shape `(B, T, dim)`.
        attention_mask: Optional boolean mask, True where attention is
            allowed: `(B, T)` (a key padding mask), `(B, T, T)` (the Keras
            `MultiHeadAttention` form) or `(B, 1 or num_heads, T, T)`.
        use_causal_mask: If True, position `i` only attends to `j <= i`.
        training: Whether dropout is active.
        mask: Keras mask of shape `(B, T)`, set automatically when the input
            carries one. Masks both queries and keys, as Keras'
            `MultiHeadAttention` does.

    Returns:
        `(outputs, attention_weights)` with `outputs` of shape
        `(B, T, output_dim)` and `attention_weights` of shape
        `(B, num_heads, T, T)`; only `outputs` when
        `return_attention_scores=False`.

    Raises:
        ValueError: for invalid constructor arguments, inputs that are not of
            rank 3, or an `attention_mask` whose shape does not fit.

    Example:

    >>> import numpy as np
    >>> import kerastrace
    >>> layer = kerastrace.layers.SelfAttention(num_heads=2, key_dim=4)
    >>> x = np.random.default_rng(0).normal(size=(3, 5, 8)).astype("float32")
    >>> outputs, weights = layer(x)
    >>> tuple(outputs.shape), tuple(weights.shape)
    ((3, 5, 8), (3, 2, 5, 5))
    >>> bool(np.allclose(np.asarray(weights).sum(-1), 1.0, atol=1e-6))
    True

    References:
        - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762)
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        value_dim=None,
        dropout=0.0,
        use_bias=True,
        output_dim=None,
        return_attention_scores=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = v.check_positive_int("num_heads", num_heads)
        self.key_dim = v.check_positive_int("key_dim", key_dim)
        self.value_dim = (
            self.key_dim if value_dim is None else v.check_positive_int("value_dim", value_dim)
        )
        self.dropout = v.check_probability("dropout", dropout)
        self.use_bias = v.check_bool("use_bias", use_bias)
        self.output_dim = v.check_optional_positive_int("output_dim", output_dim)
        self.return_attention_scores = v.check_bool(
            "return_attention_scores", return_attention_scores
        )
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.seed = seed
        self.supports_masking = True
        self._dropout_layer = keras.layers.Dropout(
            self.dropout, seed=seed, dtype=self.dtype_policy, name="attention_dropout"
        )
        self._scale = 1.0 / math.sqrt(float(self.key_dim))

    # ------------------------------------------------------------------ build
    def _check_input_shape(self, input_shape):
        if input_shape is None or len(input_shape) != 3:
            raise ValueError(
                "Received an invalid value for argument `inputs`, expected a tensor of "
                "rank 3 with shape (batch, sequence, features). Received: "
                f"inputs.shape={tuple(input_shape) if input_shape is not None else None}"
            )
        if input_shape[-1] is None:
            raise ValueError(
                "Received an invalid value for argument `inputs`: the last dimension "
                f"(features) must be known. Received: inputs.shape={tuple(input_shape)}"
            )

    def build(self, input_shape):
        self._check_input_shape(input_shape)
        dim = int(input_shape[-1])
        self._input_dim = dim
        out_dim = self.output_dim or dim
        qkv = self.num_heads * (2 * self.key_dim + self.value_dim)
        self.qkv_kernel = self.add_weight(
            name="qkv_kernel",
            shape=(dim, qkv),
            initializer=self._fused_initializer(dim),
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self.output_kernel = self.add_weight(
            name="output_kernel",
            shape=(self.num_heads * self.value_dim, out_dim),
            initializer=clone_initializer(self.kernel_initializer),
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        if self.use_bias:
            self.qkv_bias = self.add_weight(
                name="qkv_bias",
                shape=(qkv,),
                initializer=clone_initializer(self.bias_initializer),
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
            self.output_bias = self.add_weight(
                name="output_bias",
                shape=(out_dim,),
                initializer=clone_initializer(self.bias_initializer),
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        else:
            self.qkv_bias = None
            self.output_bias = None
        self._dropout_layer.build((None, self.num_heads, input_shape[1], input_shape[1]))

    def _fused_initializer(self, dim):
        """Initialize Q, K and V blocks separately, as three Keras projections would.

        Fan-based initializers (Glorot, He, ...) must see the fan of each
        `(dim, num_heads * head_dim)` projection, not of the fused kernel.
        """
        base = self.kernel_initializer
        sizes = (
            self.num_heads * self.key_dim,
            self.num_heads * self.key_dim,
            self.num_heads * self.value_dim,
        )

        def init(shape, dtype=None):
            parts = [clone_initializer(base)((dim, s), dtype=dtype) for s in sizes]
            return ops.concatenate(parts, axis=-1)

        return init

    # ------------------------------------------------------------------- call
    def _attention_mask(self, inputs, mask, attention_mask, use_causal_mask):
        """Combine the Keras mask, `attention_mask` and causal mask to (B, 1|H, T, T)."""
        combined = None
        length = ops.shape(inputs)[1]
        if mask is not None:
            mask = _as_bool(mask)
            combined = ops.logical_and(mask[:, None, :, None], mask[:, None, None, :])
        if attention_mask is not None:
            am = _as_bool(ops.convert_to_tensor(attention_mask))
            rank = len(am.shape)
            if rank not in _MASK_RANKS:
                raise ValueError(
                    "Received an invalid value for argument `attention_mask`, expected a "
                    "mask of shape (B, T), (B, T, T) or (B, 1 or num_heads, T, T). "
                    f"Received: attention_mask.shape={tuple(am.shape)}"
                )
            self._check_mask_shape(am, inputs)
            if rank == 2:
                am = am[:, None, None, :]
            elif rank == 3:
                am = am[:, None, :, :]
            combined = am if combined is None else ops.logical_and(combined, am)
        if use_causal_mask:
            idx = ops.arange(length)
            causal = ops.greater_equal(idx[:, None], idx[None, :])[None, None]
            combined = causal if combined is None else ops.logical_and(combined, causal)
        return combined

    def _check_mask_shape(self, am, inputs):
        rank = len(am.shape)
        t = inputs.shape[1]
        b = inputs.shape[0]
        expected = {2: (b, t), 3: (b, t, t), 4: (b, None, t, t)}[rank]
        for i, (got, want) in enumerate(zip(am.shape, expected)):
            if got is None or want is None:
                continue
            if rank == 4 and i == 1:
                continue
            if got != want and not (i == 0 and got == 1):
                raise ValueError(
                    "Received an invalid value for argument `attention_mask`: its shape "
                    f"does not fit inputs of shape {tuple(inputs.shape)}; expected "
                    f"{tuple(expected)}. Received: attention_mask.shape={tuple(am.shape)}"
                )
        if rank == 4 and am.shape[1] not in (None, 1, self.num_heads):
            raise ValueError(
                "Received an invalid value for argument `attention_mask`: axis 1 must be 1 "
                f"or num_heads={self.num_heads}. Received: attention_mask.shape="
                f"{tuple(am.shape)}"
            )

    def _project_qkv(self, inputs):
        """Fused projection -> q, k, v of shape (B, H, T, key_dim|value_dim)."""
        b, t = ops.shape(inputs)[0], ops.shape(inputs)[1]
        h, kd, vd = self.num_heads, self.key_dim, self.value_dim
        qkv = ops.matmul(inputs, self.qkv_kernel)
        if self.use_bias:
            qkv = qkv + self.qkv_bias
        if kd == vd:
            # One transpose for all three; the gradient is a single stack.
            qkv = ops.transpose(ops.reshape(qkv, (b, t, 3, h, kd)), (2, 0, 3, 1, 4))
            q, k, val = ops.unstack(qkv, 3, axis=0)
            return q, k, val
        q, k, val = ops.split(qkv, [h * kd, 2 * h * kd], axis=-1)
        q = ops.transpose(ops.reshape(q, (b, t, h, kd)), (0, 2, 1, 3))
        k = ops.transpose(ops.reshape(k, (b, t, h, kd)), (0, 2, 1, 3))
        val = ops.transpose(ops.reshape(val, (b, t, h, vd)), (0, 2, 1, 3))
        return q, k, val

    def _compute_attention(self, query, key, value, attention_mask=None, training=None):
        """Scaled dot-product attention on projected heads -> `(context, weights)`.

        This is the layer's documented seam, like Keras
        `MultiHeadAttention._compute_attention`: override it in a subclass (or
        wrap it, as `kerastrace.attention.collect` and the attention-gradient
        methods do) to read or change the attention weights.

        Args:
            query: `(B, H, T, key_dim)` projected queries.
            key: `(B, H, T, key_dim)` projected keys.
            value: `(B, H, T, value_dim)` projected values.
            attention_mask: None or a boolean mask broadcastable to
                `(B, H, T, T)`, True where attention is allowed.
            training: Whether dropout is active.

        Returns:
            `(context, weights)`: `context = dropout(weights) @ value` of shape
            `(B, H, T, value_dim)` in the compute dtype, and the float32
            weights `(B, H, T, T)` (before dropout).
        """
        q, k, val, attn_mask = query, key, value, attention_mask
        scores = ops.einsum("bhqd,bhkd->bhqk", q * ops.cast(self._scale, q.dtype), k)
        if scores.dtype != "float32":
            scores = ops.cast(scores, "float32")
        if attn_mask is None:
            weights = ops.softmax(scores, axis=-1)
        else:
            scores = ops.where(attn_mask, scores, ops.cast(-1e9, "float32"))
            weights = ops.where(attn_mask, ops.softmax(scores, axis=-1), 0.0)
        probs = ops.cast(weights, val.dtype)
        if self.dropout > 0.0:
            probs = self._dropout_layer(probs, training=training)
        context = ops.matmul(probs, val)
        return context, weights

    def call(self, inputs, attention_mask=None, use_causal_mask=False, training=None, mask=None):
        if len(inputs.shape) != 3:
            self._check_input_shape(inputs.shape)
        b, t = ops.shape(inputs)[0], ops.shape(inputs)[1]
        attn_mask = self._attention_mask(inputs, mask, attention_mask, use_causal_mask)
        q, k, val = self._project_qkv(inputs)
        context, weights = self._compute_attention(q, k, val, attn_mask, training)
        context = ops.reshape(
            ops.transpose(context, (0, 2, 1, 3)), (b, t, self.num_heads * self.value_dim)
        )
        outputs = ops.matmul(context, self.output_kernel)
        if self.use_bias:
            outputs = outputs + self.output_bias
        if self.return_attention_scores:
            return outputs, weights
        return outputs

    # ---------------------------------------------------------------- shapes
    def compute_output_shape(self, input_shape):
        self._check_input_shape(input_shape)
        out = (*tuple(input_shape[:-1]), self.output_dim or int(input_shape[-1]))
        if not self.return_attention_scores:
            return out
        t = input_shape[1]
        return out, (input_shape[0], self.num_heads, t, t)

    # ---------------------------------------------------------------- config
    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "value_dim": self.value_dim,
                "dropout": self.dropout,
                "use_bias": self.use_bias,
                "output_dim": self.output_dim,
                "return_attention_scores": self.return_attention_scores,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
                "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
                "bias_constraint": keras.constraints.serialize(self.bias_constraint),
                "seed": self.seed,
            }
        )
        return config

    # ------------------------------------------------------------ from_keras
    @classmethod
    def from_keras(cls, layer, return_attention_scores=True, name=None):
        """Build a `SelfAttention` equivalent to a built `keras.layers.MultiHeadAttention`.

        The Keras layer must be used as self-attention (query, key and value
        of the same feature size), with the default attention axes and no
        gate or sliding window. Its projection weights are copied into the
        fused layout, so for the same inputs and masks both layers give the
        same outputs and attention weights (within float rounding), except
        for query rows whose keys are all masked: Keras gives those a uniform
        row, this layer an all-zero row.

        Args:
            layer: A built `keras.layers.MultiHeadAttention`.
            return_attention_scores: Passed to the new layer.
            name: Name of the new layer; defaults to the Keras layer's name.

        Returns:
            A built `SelfAttention` with the weights copied.

        Raises:
            TypeError: if `layer` is not a `keras.layers.MultiHeadAttention`.
            ValueError: if it is not built or not usable as self-attention.

        Example:

        >>> import numpy as np, keras
        >>> from kerastrace.layers import SelfAttention
        >>> mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
        >>> x = np.random.default_rng(1).normal(size=(2, 6, 8)).astype("float32")
        >>> ref_out, ref_w = mha(x, x, return_attention_scores=True)
        >>> out, w = SelfAttention.from_keras(mha)(x)
        >>> bool(np.allclose(out, ref_out, atol=1e-5)), bool(np.allclose(w, ref_w, atol=1e-6))
        (True, True)
        """
        import numpy as np

        if not isinstance(layer, keras.layers.MultiHeadAttention):
            raise TypeError(
                "Received an invalid value for argument `layer`, expected a "
                f"keras.layers.MultiHeadAttention. Received: layer={type(layer).__name__}"
            )
        if not layer.built:
            raise ValueError(
                "Received an invalid value for argument `layer`: the "
                "MultiHeadAttention layer is not built. Call it once on inputs (or "
                f"build the model) first. Received: layer={layer.name!r} (not built)"
            )
        cfg = layer.get_config()
        if cfg.get("attention_axes") not in (None, (1,), [1]):
            raise ValueError(
                "Received an invalid value for argument `layer`: only the default "
                f"attention_axes is supported. Received: attention_axes={cfg['attention_axes']}"
            )
        if cfg.get("use_gate") or cfg.get("sliding_window") is not None:
            raise ValueError(
                "Received an invalid value for argument `layer`: gated or sliding-window "
                "MultiHeadAttention has no SelfAttention equivalent. Received: "
                f"use_gate={cfg.get('use_gate')}, sliding_window={cfg.get('sliding_window')}"
            )
        qk = layer.query_dense.kernel
        kk = layer.key_dense.kernel
        vk = layer.value_dense.kernel
        ok = layer.output_dense.kernel
        if not (qk.shape[0] == kk.shape[0] == vk.shape[0]):
            raise ValueError(
                "Received an invalid value for argument `layer`: it is not used as "
                "self-attention (query, key and value feature sizes differ). Received: "
                f"query/key/value dims={(qk.shape[0], kk.shape[0], vk.shape[0])}"
            )
        if len(ok.shape) != 3:
            raise ValueError(
                "Received an invalid value for argument `layer`: only a single output "
                f"feature axis is supported. Received: output kernel shape={tuple(ok.shape)}"
            )
        dim = int(qk.shape[0])
        h, kd, vd = int(qk.shape[1]), int(qk.shape[2]), int(vk.shape[2])
        out_dim = int(ok.shape[-1])
        new = cls(
            num_heads=h,
            key_dim=kd,
            value_dim=vd,
            dropout=cfg.get("dropout", 0.0),
            use_bias=cfg.get("use_bias", True),
            output_dim=out_dim,
            return_attention_scores=return_attention_scores,
            kernel_initializer=cfg.get("kernel_initializer", "glorot_uniform"),
            bias_initializer=cfg.get("bias_initializer", "zeros"),
            kernel_regularizer=cfg.get("kernel_regularizer"),
            bias_regularizer=cfg.get("bias_regularizer"),
            kernel_constraint=cfg.get("kernel_constraint"),
            bias_constraint=cfg.get("bias_constraint"),
            seed=cfg.get("seed"),
            name=name or layer.name,
            dtype=layer.dtype_policy,
        )
        new.build((None, None, dim))
        flat = [np.asarray(w.numpy()).reshape(dim, -1) for w in (qk, kk, vk)]
        new.qkv_kernel.assign(np.concatenate(flat, axis=-1))
        new.output_kernel.assign(np.asarray(ok.numpy()).reshape(h * vd, out_dim))
        if new.use_bias:
            biases = [
                np.asarray(d.bias.numpy()).reshape(-1)
                for d in (layer.query_dense, layer.key_dense, layer.value_dense)
            ]
            new.qkv_bias.assign(np.concatenate(biases))
            new.output_bias.assign(np.asarray(layer.output_dense.bias.numpy()))
        return new
