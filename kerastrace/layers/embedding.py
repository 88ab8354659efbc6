"""Token + learned position embedding that propagates the padding mask."""

from __future__ import annotations

import keras
from keras import ops

from kerastrace._utils import validation as v


@keras.saving.register_keras_serializable(package="kerastrace")
class TokenAndPositionEmbedding(keras.layers.Layer):
    """Sum of a token embedding and a learned position embedding.

    Token id 0 is padding when `mask_zero=True` (default): the layer then
    emits a Keras mask `(B, T)` that downstream `SelfAttention` and
    `TransformerBlock` layers use, so padded keys get no attention. (Adding
    a position tensor to an `Embedding` output with `+` loses that mask.)

    The token embedding is the sublayer `token_embedding`, a
    `keras.layers.Embedding`, which is the usual layer to attribute to with
    `kerastrace.attribution.LayerIntegratedGradients`.

    Args:
        vocab_size: Number of token ids, a positive integer.
        sequence_length: Maximum sequence length, a positive integer.
        embedding_dim: Output feature size, a positive integer.
        mask_zero: Whether id 0 is padding and is masked.
        embeddings_initializer: Initializer of the token embedding.
        position_initializer: Initializer of the position embedding.
        **kwargs: Base layer keyword arguments.

    Call arguments:
        inputs: int tensor of shape `(B, T)` with `T <= sequence_length`.

    Returns:
        Tensor of shape `(B, T, embedding_dim)`.

    Example:

    >>> import numpy as np
    >>> layer = TokenAndPositionEmbedding(vocab_size=10, sequence_length=4, embedding_dim=3)
    >>> out = layer(np.array([[5, 6, 0, 0]]))
    >>> tuple(out.shape), np.asarray(layer.compute_mask(np.array([[5, 6, 0, 0]]))).tolist()
    ((1, 4, 3), [[True, True, False, False]])
    """

    def __init__(
        self,
        vocab_size,
        sequence_length,
        embedding_dim,
        mask_zero=True,
        embeddings_initializer="uniform",
        position_initializer="uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocab_size = v.check_positive_int("vocab_size", vocab_size)
        self.sequence_length = v.check_positive_int("sequence_length", sequence_length)
        self.embedding_dim = v.check_positive_int("embedding_dim", embedding_dim)
        self.mask_zero = v.check_bool("mask_zero", mask_zero)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.position_initializer = keras.initializers.get(position_initializer)
        self.token_embedding = keras.layers.Embedding(
            self.vocab_size,
            self.embedding_dim,
            embeddings_initializer=self.embeddings_initializer,
            mask_zero=self.mask_zero,
            dtype=self.dtype_policy,
            name="token_embedding",
        )
        self.supports_masking = self.mask_zero

    def build(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(
                "Received an invalid value for argument `inputs`, expected token ids of "
                f"rank 2 (batch, sequence). Received: inputs.shape={tuple(input_shape)}"
            )
        if input_shape[1] is not None and input_shape[1] > self.sequence_length:
            raise ValueError(
                "Received an invalid value for argument `inputs`: the sequence is longer "
                f"than sequence_length={self.sequence_length}. Received: "
                f"inputs.shape={tuple(input_shape)}"
            )
        self.token_embedding.build(input_shape)
        self.position_embeddings = self.add_weight(
            name="position_embeddings",
            shape=(self.sequence_length, self.embedding_dim),
            initializer=self.position_initializer,
        )

    def call(self, inputs):
        length = ops.shape(inputs)[1]
        tokens = self.token_embedding(inputs)
        positions = ops.cast(self.position_embeddings[:length], tokens.dtype)
        return tokens + positions[None]

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero:
            return None
        return ops.not_equal(inputs, 0)

    def compute_output_shape(self, input_shape):
        return (*tuple(input_shape), self.embedding_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocab_size": self.vocab_size,
                "sequence_length": self.sequence_length,
                "embedding_dim": self.embedding_dim,
                "mask_zero": self.mask_zero,
                "embeddings_initializer": keras.initializers.serialize(
                    self.embeddings_initializer
                ),
                "position_initializer": keras.initializers.serialize(self.position_initializer),
            }
        )
        return config
