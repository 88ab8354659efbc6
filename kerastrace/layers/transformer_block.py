"""A Transformer encoder block that returns its attention weights."""

from __future__ import annotations

import keras

from kerastrace._utils import validation as v
from kerastrace.layers._common import AttentionOutputs, check_weights_dtype, clone_initializer
from kerastrace.layers.self_attention import SelfAttention


@keras.saving.register_keras_serializable(package="kerastrace")
class TransformerBlock(AttentionOutputs, keras.layers.Layer):
    """Self-attention + feed-forward with residuals and layer normalization.

    Post-norm (`norm_first=False`, the original Transformer and BERT):

        x = LN(x + Dropout(Attention(x)))
        y = LN(x + Dropout(FFN(x)))

    Pre-norm (`norm_first=True`, GPT-2 style):

        x = x + Dropout(Attention(LN(x)))
        y = x + Dropout(FFN(LN(x)))

    with `FFN(x) = Dense(dim)(activation(Dense(ff_dim)(x)))`. The attention is
    a `kerastrace.layers.SelfAttention`, available as `block.attention`, and
    its weights are returned with the outputs.

    Args:
        num_heads: Number of attention heads, a positive integer.
        ff_dim: Hidden size of the feed-forward network, a positive integer.
        key_dim: Size of each attention head. Defaults to `dim // num_heads`
            (the input feature size must then be divisible by `num_heads`).
        value_dim: Size of each value head. Defaults to `key_dim`.
        dropout: Dropout rate after the attention and the feed-forward
            network, in `[0, 1)`.
        attention_dropout: Dropout rate on the attention weights, in `[0, 1)`.
        activation: Activation of the feed-forward hidden layer.
        norm_first: Pre-norm when True, post-norm (default) when False.
        layer_norm_epsilon: Epsilon of the layer normalizations.
        use_bias: Whether the attention projections have biases.
        return_attention_scores: When True (default) the call returns
            `(outputs, attention_weights)`, else only `outputs`; the
            attention then runs on the fused path of `SelfAttention`
            (`keras.ops.dot_product_attention`, flash attention where the
            backend offers it) unless an analysis reads its weights.
        kernel_initializer: Initializer of every kernel.
        bias_initializer: Initializer of every bias.
        seed: Optional integer seed for the dropouts.
        attention_weights_dtype: `"float32"` (default) or `"compute"`: the
            dtype of the returned weights, see `SelfAttention`.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Tensor of shape `(B, T, dim)`.
        attention_mask: Optional boolean mask, see `SelfAttention`.
        use_causal_mask: If True, position `i` only attends to `j <= i`.
        training: Whether dropout is active.
        mask: Keras mask of shape `(B, T)`, set automatically when the input
            carries one (e.g. from `Embedding(mask_zero=True)`); it is
            propagated to the outputs.

    Returns:
        `(outputs, attention_weights)`: outputs of shape `(B, T, dim)` in the
        compute dtype and weights of shape `(B, num_heads, T, T)` (float32
        unless `attention_weights_dtype="compute"`); only `outputs` when
        `return_attention_scores=False`.

    Raises:
        ValueError: for invalid arguments or inputs that are not of rank 3.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> from kerastrace.layers import TransformerBlock
    >>> tokens = keras.Input((6,), dtype="int32")
    >>> x = keras.layers.Embedding(50, 16, mask_zero=True)(tokens)
    >>> x, weights = TransformerBlock(num_heads=2, ff_dim=32)(x)
    >>> model = keras.Model(tokens, [x, weights])
    >>> out, w = model(np.array([[5, 7, 9, 0, 0, 0]]))
    >>> tuple(w.shape)
    (1, 2, 6, 6)
    >>> np.asarray(w)[0, 0, 0].round(3).tolist()[3:]  # padded keys get no weight
    [0.0, 0.0, 0.0]

    References:
        - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762)
        - [Xiong et al., 2020, On Layer Normalization in the Transformer
          Architecture](https://arxiv.org/abs/2002.04745)
    """

    def __init__(
        self,
        num_heads,
        ff_dim,
        key_dim=None,
        value_dim=None,
        dropout=0.0,
        attention_dropout=0.0,
        activation="relu",
        norm_first=False,
        layer_norm_epsilon=1e-5,
        use_bias=True,
        return_attention_scores=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        seed=None,
        attention_weights_dtype="float32",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = v.check_positive_int("num_heads", num_heads)
        self.ff_dim = v.check_positive_int("ff_dim", ff_dim)
        self.key_dim = v.check_optional_positive_int("key_dim", key_dim)
        self.value_dim = v.check_optional_positive_int("value_dim", value_dim)
        self.dropout = v.check_probability("dropout", dropout)
        self.attention_dropout = v.check_probability("attention_dropout", attention_dropout)
        self.activation = keras.activations.get(activation)
        self.norm_first = v.check_bool("norm_first", norm_first)
        self.layer_norm_epsilon = v.check_non_negative_float(
            "layer_norm_epsilon", layer_norm_epsilon
        )
        self.use_bias = v.check_bool("use_bias", use_bias)
        self.return_attention_scores = v.check_bool(
            "return_attention_scores", return_attention_scores
        )
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.seed = seed
        self.attention_weights_dtype = check_weights_dtype(attention_weights_dtype)
        self.supports_masking = True

    def build(self, input_shape):
        if input_shape is None or len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(
                "Received an invalid value for argument `inputs`, expected a tensor of "
                "rank 3 (batch, sequence, features) with known features. Received: "
                f"inputs.shape={tuple(input_shape) if input_shape is not None else None}"
            )
        dim = int(input_shape[-1])
        key_dim = self.key_dim
        if key_dim is None:
            if dim % self.num_heads:
                raise ValueError(
                    "Received an invalid value for argument `num_heads`: with key_dim=None "
                    f"the input feature size ({dim}) must be divisible by num_heads. "
                    f"Received: num_heads={self.num_heads}"
                )
            key_dim = dim // self.num_heads
        seed = self.seed
        policy = self.dtype_policy
        self.attention = SelfAttention(
            num_heads=self.num_heads,
            key_dim=key_dim,
            value_dim=self.value_dim,
            dropout=self.attention_dropout,
            use_bias=self.use_bias,
            output_dim=dim,
            return_attention_scores=self.return_attention_scores,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            bias_initializer=clone_initializer(self.bias_initializer),
            seed=seed,
            attention_weights_dtype=self.attention_weights_dtype,
            dtype=policy,
            name="attention",
        )
        self.attention.build(input_shape)
        self.attention_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=policy, name="attention_norm"
        )
        self.attention_norm.build(input_shape)
        self.attention_dropout_layer = keras.layers.Dropout(
            self.dropout, seed=seed, dtype=policy, name="attention_output_dropout"
        )
        self.ffn_inner = keras.layers.Dense(
            self.ff_dim,
            activation=self.activation,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            bias_initializer=clone_initializer(self.bias_initializer),
            dtype=policy,
            name="ffn_inner",
        )
        self.ffn_inner.build(input_shape)
        self.ffn_outer = keras.layers.Dense(
            dim,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            bias_initializer=clone_initializer(self.bias_initializer),
            dtype=policy,
            name="ffn_outer",
        )
        self.ffn_outer.build((*tuple(input_shape[:-1]), self.ff_dim))
        self.ffn_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=policy, name="ffn_norm"
        )
        self.ffn_norm.build(input_shape)
        self.ffn_dropout = keras.layers.Dropout(
            self.dropout, seed=seed, dtype=policy, name="ffn_dropout"
        )

    def call(self, inputs, attention_mask=None, use_causal_mask=False, training=None, mask=None):
        x = inputs
        h = self.attention_norm(x) if self.norm_first else x
        attended = self.attention(
            h,
            attention_mask=attention_mask,
            use_causal_mask=use_causal_mask,
            training=training,
            mask=mask,
        )
        weights = None
        if self.return_attention_scores:
            attended, weights = attended
        x = x + self.attention_dropout_layer(attended, training=training)
        if not self.norm_first:
            x = self.attention_norm(x)
        h = self.ffn_norm(x) if self.norm_first else x
        h = self.ffn_outer(self.ffn_inner(h))
        x = x + self.ffn_dropout(h, training=training)
        if not self.norm_first:
            x = self.ffn_norm(x)
        if self.return_attention_scores:
            return x, weights
        return x

    def compute_output_shape(self, input_shape):
        if input_shape is None or len(input_shape) != 3:
            raise ValueError(
                "Received an invalid value for argument `inputs`, expected a tensor of "
                f"rank 3. Received: inputs.shape={input_shape}"
            )
        out = tuple(input_shape)
        if not self.return_attention_scores:
            return out
        return out, (input_shape[0], self.num_heads, input_shape[1], input_shape[1])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "ff_dim": self.ff_dim,
                "key_dim": self.key_dim,
                "value_dim": self.value_dim,
                "dropout": self.dropout,
                "attention_dropout": self.attention_dropout,
                "activation": keras.activations.serialize(self.activation),
                "norm_first": self.norm_first,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "use_bias": self.use_bias,
                "return_attention_scores": self.return_attention_scores,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "seed": self.seed,
                "attention_weights_dtype": self.attention_weights_dtype,
            }
        )
        return config
