"""Multi-head self-attention that returns its attention weights."""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from kerastrace._utils import validation as v
from kerastrace.layers._common import (
    AttentionOutputs,
    check_weights_dtype,
    clone_initializer,
    flash_attention_setting,
    fused_attention_kernel_available,
)

_MASK_RANKS = (2, 3, 4)


def _as_bool(mask):
    return mask if mask.dtype == "bool" else ops.cast(mask, "bool")


def _not_zero_one_error(values):
    shown = np.unique(values[(values != 0) & (values != 1)])[:4].tolist()
    return ValueError(
        "Received an invalid value for argument `attention_mask`: a mask that is not "
        "boolean must hold only 0 (blocked) and 1 (attend), but it holds other values, "
        f"e.g. {shown}. An additive mask (0 = attend, a large negative number = blocked) "
        "would be read the wrong way round. Pass a boolean mask, True where attention is "
        "allowed; from an additive mask `m`, pass `attention_mask=(m == 0)`. Received: "
        f"attention_mask of dtype {values.dtype} with values {shown}"
    )


def _check_mask_values(am):
    """Check that a non-boolean `attention_mask` holds only 0 and 1.

    Concrete values (eager calls) are checked here: `ValueError` otherwise.
    Traced values (inside `tf.function`, `jax.jit`, `model.predict`) cannot
    be read while tracing; the returned scalar boolean tensor (True when all
    values are 0 or 1) then poisons the outputs with NaN when it is False.

    Returns:
        None (boolean mask, or values checked), or the traced check.
    """
    if am is None or am.dtype == "bool":
        return None
    valid = ops.all(ops.logical_or(ops.equal(am, 0), ops.equal(am, 1)))
    try:
        ok = bool(ops.convert_to_numpy(valid))
    except (TypeError, ValueError, RuntimeError):  # traced: no values to read yet
        return valid
    if not ok:
        raise _not_zero_one_error(np.asarray(ops.convert_to_numpy(am)))
    return None


def _poison(x, valid):
    """`x`, or NaN everywhere when the traced mask check `valid` is False."""
    if valid is None or x is None:
        return x
    return ops.where(valid, x, ops.cast(float("nan"), x.dtype))


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

    Mixed precision: the softmax is computed in float32, and the weights are
    returned as float32 (`attention_weights_dtype="compute"` returns them in
    the compute dtype instead, e.g. bfloat16, halving their memory);
    `outputs` have the layer's compute dtype. Under float16 the scores
    `Q K^T` are formed in float32 as well, since they overflow float16 for
    activations of magnitude ~100 and more.

    Two computation paths, with the same results up to rounding:

    - Weights returned (the default), or read by an analysis: the explicit
      path, `_compute_attention`, the documented seam that
      `kerastrace.attention.collect` and the attention-gradient methods wrap
      (a subclass may override it). Where the backend has a fused attention
      kernel for the compute dtype (JAX on a GPU, torch with CUDA), the
      context is computed by that kernel next to the float32 weights.
    - Weights not returned (`return_attention_scores=False`) and
      `_compute_attention` neither overridden nor wrapped: the fused path,
      `keras.ops.dot_product_attention` (flash attention where the backend
      and device offer it), which never materializes the `(B, H, T, T)`
      weights. It falls back to the explicit path while attention dropout
      is active (training with `dropout > 0`), when `value_dim != key_dim`
      (JAX's kernels need equal head sizes) and, under float16, on
      backends whose kernel would form the scores in float16 (TensorFlow).
      `keras.config.disable_flash_attention()` is respected.

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
        attention_weights_dtype: `"float32"` (default): the returned weights
            are float32 whatever the dtype policy. `"compute"`: they have the
            layer's compute dtype (bfloat16 under `mixed_bfloat16`), which
            halves their memory under mixed precision; the softmax is still
            computed in float32.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Tensor of shape `(B, T, dim)`.
        attention_mask: Optional boolean mask, True where attention is
            allowed: `(B, T)` (a key padding mask), `(B, T, T)` (the Keras
            `MultiHeadAttention` form) or `(B, 1 or num_heads, T, T)`. An
            integer or float mask must hold only 1 (attend) and 0 (blocked).
            An additive mask (0 = attend, -1e9 = blocked, as some libraries
            take) is refused with a `ValueError` rather than read the wrong
            way round: pass `mask == 0`. Inside a compiled function
            (`model.predict`, `tf.function`, `jax.jit`) the values are not
            known when the layer is traced; there such a mask makes the
            outputs and weights NaN.
        use_causal_mask: If True, position `i` only attends to `j <= i`.
        training: Whether dropout is active.
        mask: Keras mask of shape `(B, T)`, set automatically when the input
            carries one. Masks both queries and keys, as Keras'
            `MultiHeadAttention` does.

    Returns:
        `(outputs, attention_weights)` with `outputs` of shape
        `(B, T, output_dim)` and `attention_weights` of shape
        `(B, num_heads, T, T)` (float32 unless
        `attention_weights_dtype="compute"`); only `outputs` when
        `return_attention_scores=False`.

    Raises:
        ValueError: for invalid constructor arguments, inputs that are not of
            rank 3, an `attention_mask` whose shape does not fit, or a
            non-boolean `attention_mask` with values other than 0 and 1.

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
        attention_weights_dtype="float32",
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
        self.attention_weights_dtype = check_weights_dtype(attention_weights_dtype)
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
            causal = self._causal_mask(length)
            combined = causal if combined is None else ops.logical_and(combined, causal)
        return combined

    @staticmethod
    def _causal_mask(length):
        """`(1, 1, T, T)` boolean mask, True where the key index `j <= i`, the query's."""
        idx = ops.arange(length)
        return ops.greater_equal(idx[:, None], idx[None, :])[None, None]

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

    def _project_qkv(self, inputs, heads_first=True):
        """Fused projection -> q, k, v.

        Shapes are `(B, H, T, key_dim|value_dim)` when `heads_first` (the
        layout of `_compute_attention`), else `(B, T, H, key_dim|value_dim)`
        (the layout of `keras.ops.dot_product_attention`, which needs no
        transpose here nor on the output).
        """
        b, t = ops.shape(inputs)[0], ops.shape(inputs)[1]
        h, kd, vd = self.num_heads, self.key_dim, self.value_dim
        qkv = ops.matmul(inputs, self.qkv_kernel)
        if self.use_bias:
            qkv = qkv + self.qkv_bias
        if kd == vd:
            qkv = ops.reshape(qkv, (b, t, 3, h, kd))
            if not heads_first:
                q, k, val = ops.unstack(qkv, 3, axis=2)
                return q, k, val
            # One transpose for all three; the gradient is a single stack.
            qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))
            q, k, val = ops.unstack(qkv, 3, axis=0)
            return q, k, val
        q, k, val = ops.split(qkv, [h * kd, 2 * h * kd], axis=-1)
        q = ops.reshape(q, (b, t, h, kd))
        k = ops.reshape(k, (b, t, h, kd))
        val = ops.reshape(val, (b, t, h, vd))
        if not heads_first:
            return q, k, val
        return tuple(ops.transpose(z, (0, 2, 1, 3)) for z in (q, k, val))

    # ------------------------------------------------------- attention paths
    def _dropout_active(self, training):
        return self.dropout > 0.0 and training is not None and training is not False

    def _seam_in_use(self):
        """Whether `_compute_attention` is wrapped on the instance or overridden."""
        return (
            "_compute_attention" in vars(self)
            or type(self)._compute_attention is not SelfAttention._compute_attention
        )

    def _uses_fused_path(self, training):
        """Whether this call computes attention without materializing its weights.

        Only when the weights are not returned, nothing reads them through
        the `_compute_attention` seam, no attention dropout is active, the
        value heads have the size of the key heads (JAX's kernels require
        it) and, under float16, the backend keeps the scores out of float16
        (the TensorFlow graph of `dot_product_attention` forms `Q K^T` in
        float16, which overflows for large activations).
        """
        if self.return_attention_scores or self._seam_in_use():
            return False
        if self._dropout_active(training) or self.key_dim != self.value_dim:
            return False
        if keras.backend.standardize_dtype(self.compute_dtype) == "float16":
            return keras.backend.backend() == "jax" or fused_attention_kernel_available("float16")
        return True

    def _attention_weights(self, query, key, attention_mask=None):
        """Masked softmax of the scaled scores, in float32 -> `(B, H, T, T)`.

        The scores are formed in float32 under float16 (`Q K^T` of large
        activations overflows float16), in the compute dtype otherwise
        (bfloat16 has float32's range), and normalized in float32.
        """
        q, k = query, key
        if keras.backend.standardize_dtype(q.dtype) == "float16":
            q, k = ops.cast(q, "float32"), ops.cast(k, "float32")
        scores = ops.einsum("bhqd,bhkd->bhqk", q * ops.cast(self._scale, q.dtype), k)
        if scores.dtype != "float32":
            scores = ops.cast(scores, "float32")
        if attention_mask is None:
            return ops.softmax(scores, axis=-1)
        scores = ops.where(attention_mask, scores, ops.cast(-1e9, "float32"))
        return ops.where(attention_mask, ops.softmax(scores, axis=-1), 0.0)

    def _compute_attention(self, query, key, value, attention_mask=None, training=None):
        """Scaled dot-product attention on projected heads -> `(context, weights)`.

        This is the layer's documented seam, like Keras
        `MultiHeadAttention._compute_attention`: override it in a subclass (or
        wrap it, as `kerastrace.attention.collect` and the attention-gradient
        methods do) to read or change the attention weights. Every call whose
        weights are returned, or whose layer has this method overridden or
        wrapped, goes through it; only a layer whose weights nobody reads
        takes the fused path (`_compute_fused_attention`).

        The weights are a float32 softmax (cast once to the compute dtype
        when `attention_weights_dtype="compute"`). Where the backend has a
        fused attention kernel for the compute dtype (JAX on a GPU, torch
        with CUDA) and no dropout is active, the context comes from that
        kernel and the weights are computed beside it, so no second
        `(B, H, T, T)` copy in the compute dtype is written and read back.
        Elsewhere `context = dropout(weights) @ value` in the compute dtype.

        Args:
            query: `(B, H, T, key_dim)` projected queries.
            key: `(B, H, T, key_dim)` projected keys.
            value: `(B, H, T, value_dim)` projected values.
            attention_mask: None or a boolean mask broadcastable to
                `(B, H, T, T)`, True where attention is allowed.
            training: Whether dropout is active.

        Returns:
            `(context, weights)`: the context `(B, H, T, value_dim)` in the
            compute dtype and the weights `(B, H, T, T)` (before dropout),
            float32 unless `attention_weights_dtype="compute"`.
        """
        weights = self._attention_weights(query, key, attention_mask)
        out_dtype = self._returned_weights_dtype
        if out_dtype != "float32":
            weights = ops.cast(weights, out_dtype)
        if (
            out_dtype == "float32"
            and self.key_dim == self.value_dim
            and not self._dropout_active(training)
            and fused_attention_kernel_available(value.dtype)
        ):
            to_bthd = (0, 2, 1, 3)
            context = self._compute_fused_attention(
                ops.transpose(query, to_bthd),
                ops.transpose(key, to_bthd),
                ops.transpose(value, to_bthd),
                attention_mask,
            )
            return ops.transpose(context, to_bthd), weights
        probs = weights if weights.dtype == value.dtype else ops.cast(weights, value.dtype)
        if self.dropout > 0.0:
            probs = self._dropout_layer(probs, training=training)
        return ops.matmul(probs, value), weights

    def _compute_fused_attention(self, query, key, value, attention_mask=None, is_causal=False):
        """Attention through `keras.ops.dot_product_attention` -> context only.

        Used when the weights are not needed (see `_compute_attention`):
        the backend runs its fused (flash) kernel where the device and dtype
        allow, else its own einsum/softmax graph. Semantics match the
        explicit path: a query with no allowed key gets a zero context.

        Args:
            query: `(B, T, H, key_dim)` projected queries.
            key: `(B, T, H, key_dim)` projected keys.
            value: `(B, T, H, value_dim)` projected values.
            attention_mask: None or a boolean mask broadcastable to
                `(B, H, T, T)`, True where attention is allowed. It must
                already contain the causal constraint when `is_causal`.
            is_causal: Whether position `i` only attends to `j <= i` (lets
                the kernel skip the masked blocks).

        Returns:
            The context `(B, T, H, value_dim)` in the compute dtype.
        """
        mask = attention_mask
        if mask is not None and mask.shape[2] == 1:
            # Fused kernels take a mask over (query, key): broadcast a key mask.
            b, t = ops.shape(query)[0], ops.shape(query)[1]
            mask = ops.broadcast_to(mask, (b, mask.shape[1], t, ops.shape(key)[1]))
        context = ops.dot_product_attention(
            query,
            key,
            value,
            mask=mask,
            scale=self._scale,
            is_causal=is_causal,
            flash_attention=flash_attention_setting(),
        )
        if mask is None:
            return context
        # Rows with no allowed key: the kernels give them uniform weights,
        # the explicit path all-zero weights (a zero context).
        has_key = ops.transpose(ops.any(mask, axis=-1), (0, 2, 1))[..., None]
        return ops.where(has_key, context, ops.zeros_like(context))

    def call(self, inputs, attention_mask=None, use_causal_mask=False, training=None, mask=None):
        if len(inputs.shape) != 3:
            self._check_input_shape(inputs.shape)
        b, t = ops.shape(inputs)[0], ops.shape(inputs)[1]
        width = self.num_heads * self.value_dim
        if attention_mask is not None:
            attention_mask = ops.convert_to_tensor(attention_mask)
        valid = _check_mask_values(attention_mask)
        if self._uses_fused_path(training):
            attn_mask = self._attention_mask(inputs, mask, attention_mask, False)
            if attn_mask is not None and use_causal_mask:
                attn_mask = ops.logical_and(attn_mask, self._causal_mask(t))
            q, k, val = self._project_qkv(inputs, heads_first=False)
            context = self._compute_fused_attention(q, k, val, attn_mask, use_causal_mask)
            context = ops.reshape(context, (b, t, width))
            weights = None
        else:
            attn_mask = self._attention_mask(inputs, mask, attention_mask, use_causal_mask)
            q, k, val = self._project_qkv(inputs)
            context, weights = self._compute_attention(q, k, val, attn_mask, training)
            context = ops.reshape(ops.transpose(context, (0, 2, 1, 3)), (b, t, width))
        outputs = ops.matmul(context, self.output_kernel)
        if self.use_bias:
            outputs = outputs + self.output_bias
        outputs, weights = _poison(outputs, valid), _poison(weights, valid)
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
                "attention_weights_dtype": self.attention_weights_dtype,
            }
        )
        return config

    # ------------------------------------------------------------ from_keras
    @classmethod
    def from_keras(
        cls, layer, return_attention_scores=True, name=None, attention_weights_dtype="float32"
    ):
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
            attention_weights_dtype: Passed to the new layer.

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
            attention_weights_dtype=attention_weights_dtype,
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
