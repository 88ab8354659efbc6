"""Small versions of the models users bring, for tests, benchmarks and docs.

Three follow the keras.io examples line by line, at toy sizes, with their own
custom layers (not registered for serialization, as on keras.io):

- `keras_io_text_classifier`: "Text classification with Transformer"
  (`MultiHeadAttention` block, mean pooling, softmax output).
- `keras_io_mini_gpt`: "Text generation with a miniature GPT" (causal
  `MultiHeadAttention`, logits over the vocabulary at every position).
- `keras_io_translator`: "English-to-Spanish translation with a
  sequence-to-sequence Transformer" (dict inputs `encoder_inputs` /
  `decoder_inputs`, encoder self-attention, causal decoder self-attention,
  cross-attention, softmax output).

The `hub_*` builders make keras-hub models from a tiny configuration
(`BertTextClassifier`, `GPT2CausalLM`, `ViTImageClassifier`, `LlamaCausalLM`);
nothing is downloaded. keras-hub is imported only when they are called.

Example:

>>> import numpy as np
>>> from kerastrace.testing import model_zoo
>>> model = model_zoo.keras_io_text_classifier(vocab_size=20, maxlen=6)
>>> tuple(model(np.ones((2, 6), "int32")).shape)
(2, 2)
"""

from __future__ import annotations

import keras
from keras import layers, ops

# ------------------------------------------------------------------ keras.io


class KerasIOTransformerBlock(layers.Layer):
    """`TransformerBlock` of keras.io "Text classification with Transformer"."""

    def __init__(self, embed_dim, num_heads, ff_dim, rate=0.1, **kwargs):
        super().__init__(**kwargs)
        self.att = layers.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim)
        self.ffn = keras.Sequential(
            [layers.Dense(ff_dim, activation="relu"), layers.Dense(embed_dim)]
        )
        self.layernorm1 = layers.LayerNormalization(epsilon=1e-6)
        self.layernorm2 = layers.LayerNormalization(epsilon=1e-6)
        self.dropout1 = layers.Dropout(rate)
        self.dropout2 = layers.Dropout(rate)

    def call(self, inputs, training=None):
        attn_output = self.att(inputs, inputs)
        attn_output = self.dropout1(attn_output, training=training)
        out1 = self.layernorm1(inputs + attn_output)
        ffn_output = self.ffn(out1)
        ffn_output = self.dropout2(ffn_output, training=training)
        return self.layernorm2(out1 + ffn_output)


class KerasIOTokenAndPositionEmbedding(layers.Layer):
    """`TokenAndPositionEmbedding` of keras.io (position ids made inside the layer)."""

    def __init__(self, maxlen, vocab_size, embed_dim, **kwargs):
        super().__init__(**kwargs)
        self.token_emb = layers.Embedding(input_dim=vocab_size, output_dim=embed_dim)
        self.pos_emb = layers.Embedding(input_dim=maxlen, output_dim=embed_dim)

    def call(self, x):
        maxlen = ops.shape(x)[-1]
        positions = ops.arange(start=0, stop=maxlen, step=1)
        positions = self.pos_emb(positions)
        x = self.token_emb(x)
        return x + positions


def keras_io_text_classifier(vocab_size=200, maxlen=16, embed_dim=16, num_heads=2, ff_dim=16,
                             num_classes=2, seed=0):
    """keras.io text classifier: MHA block, mean pooling, Dense, softmax output."""
    keras.utils.set_random_seed(seed)
    inputs = layers.Input(shape=(maxlen,), dtype="int32")
    x = KerasIOTokenAndPositionEmbedding(maxlen, vocab_size, embed_dim)(inputs)
    x = KerasIOTransformerBlock(embed_dim, num_heads, ff_dim)(x)
    x = layers.GlobalAveragePooling1D()(x)
    x = layers.Dropout(0.1)(x)
    x = layers.Dense(20, activation="relu")(x)
    x = layers.Dropout(0.1)(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs=inputs, outputs=outputs, name="keras_io_text_classifier")


def _causal_attention_mask(batch_size, n_dest, n_src, dtype):
    """keras.io mini-GPT's mask: True in the lower triangle, (B, n_dest, n_src)."""
    i = ops.arange(n_dest)[:, None]
    j = ops.arange(n_src)
    m = i >= j - n_src + n_dest
    mask = ops.cast(m, dtype)
    mask = ops.reshape(mask, [1, n_dest, n_src])
    # keras.io tiles the mask over the batch; broadcasting is the same and traces
    # symbolically on every backend.
    return ops.broadcast_to(mask, (batch_size, n_dest, n_src))


class KerasIOGPTBlock(layers.Layer):
    """`TransformerBlock` of keras.io "Text generation with a miniature GPT"."""

    def __init__(self, embed_dim, num_heads, ff_dim, rate=0.1, **kwargs):
        super().__init__(**kwargs)
        self.att = layers.MultiHeadAttention(num_heads, embed_dim)
        self.ffn = keras.Sequential(
            [layers.Dense(ff_dim, activation="relu"), layers.Dense(embed_dim)]
        )
        self.layernorm1 = layers.LayerNormalization(epsilon=1e-6)
        self.layernorm2 = layers.LayerNormalization(epsilon=1e-6)
        self.dropout1 = layers.Dropout(rate)
        self.dropout2 = layers.Dropout(rate)

    def call(self, inputs, training=None):
        input_shape = ops.shape(inputs)
        batch_size, seq_len = input_shape[0], input_shape[1]
        causal_mask = _causal_attention_mask(batch_size, seq_len, seq_len, "bool")
        attention_output = self.att(inputs, inputs, attention_mask=causal_mask)
        attention_output = self.dropout1(attention_output, training=training)
        out1 = self.layernorm1(inputs + attention_output)
        ffn_output = self.ffn(out1)
        ffn_output = self.dropout2(ffn_output, training=training)
        return self.layernorm2(out1 + ffn_output)


def keras_io_mini_gpt(vocab_size=50, maxlen=12, embed_dim=16, num_heads=2, ff_dim=16,
                      num_layers=2, seed=0):
    """keras.io mini-GPT: causal MHA blocks, logits `(B, T, vocab_size)`."""
    keras.utils.set_random_seed(seed)
    inputs = layers.Input(shape=(maxlen,), dtype="int32")
    x = KerasIOTokenAndPositionEmbedding(maxlen, vocab_size, embed_dim)(inputs)
    for _ in range(num_layers):
        x = KerasIOGPTBlock(embed_dim, num_heads, ff_dim)(x)
    outputs = layers.Dense(vocab_size)(x)
    return keras.Model(inputs=inputs, outputs=outputs, name="keras_io_mini_gpt")


class KerasIOTransformerEncoder(layers.Layer):
    """`TransformerEncoder` of keras.io's English-to-Spanish translator."""

    def __init__(self, embed_dim, dense_dim, num_heads, **kwargs):
        super().__init__(**kwargs)
        self.attention = layers.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim)
        self.dense_proj = keras.Sequential(
            [layers.Dense(dense_dim, activation="relu"), layers.Dense(embed_dim)]
        )
        self.layernorm_1 = layers.LayerNormalization()
        self.layernorm_2 = layers.LayerNormalization()
        self.supports_masking = True

    def call(self, inputs, mask=None):
        padding_mask = None
        if mask is not None:
            padding_mask = ops.cast(mask[:, None, :], dtype="int32")
        attention_output = self.attention(
            query=inputs, value=inputs, key=inputs, attention_mask=padding_mask
        )
        proj_input = self.layernorm_1(inputs + attention_output)
        proj_output = self.dense_proj(proj_input)
        return self.layernorm_2(proj_input + proj_output)


class KerasIOPositionalEmbedding(layers.Layer):
    """`PositionalEmbedding` of keras.io's translator (mask_zero token embedding)."""

    def __init__(self, sequence_length, vocab_size, embed_dim, **kwargs):
        super().__init__(**kwargs)
        self.token_embeddings = layers.Embedding(input_dim=vocab_size, output_dim=embed_dim)
        self.position_embeddings = layers.Embedding(
            input_dim=sequence_length, output_dim=embed_dim
        )

    def call(self, inputs):
        length = ops.shape(inputs)[-1]
        positions = ops.arange(0, length, 1)
        return self.token_embeddings(inputs) + self.position_embeddings(positions)

    def compute_mask(self, inputs, mask=None):
        return ops.not_equal(inputs, 0)


class KerasIOTransformerDecoder(layers.Layer):
    """`TransformerDecoder` of keras.io's translator (causal self- and cross-attention)."""

    def __init__(self, embed_dim, latent_dim, num_heads, **kwargs):
        super().__init__(**kwargs)
        self.attention_1 = layers.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim)
        self.attention_2 = layers.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim)
        self.dense_proj = keras.Sequential(
            [layers.Dense(latent_dim, activation="relu"), layers.Dense(embed_dim)]
        )
        self.layernorm_1 = layers.LayerNormalization()
        self.layernorm_2 = layers.LayerNormalization()
        self.layernorm_3 = layers.LayerNormalization()
        self.supports_masking = True

    def call(self, inputs, mask=None):
        inputs, encoder_outputs = inputs
        causal_mask = self.get_causal_attention_mask(inputs)
        if mask is None:
            inputs_padding_mask, encoder_outputs_padding_mask = None, None
        else:
            inputs_padding_mask, encoder_outputs_padding_mask = mask
        attention_output_1 = self.attention_1(
            query=inputs, value=inputs, key=inputs, attention_mask=causal_mask,
            query_mask=inputs_padding_mask,
        )
        out_1 = self.layernorm_1(inputs + attention_output_1)
        attention_output_2 = self.attention_2(
            query=out_1, value=encoder_outputs, key=encoder_outputs,
            query_mask=inputs_padding_mask, key_mask=encoder_outputs_padding_mask,
        )
        out_2 = self.layernorm_2(out_1 + attention_output_2)
        proj_output = self.dense_proj(out_2)
        return self.layernorm_3(out_2 + proj_output)

    def get_causal_attention_mask(self, inputs):
        input_shape = ops.shape(inputs)
        batch_size, sequence_length = input_shape[0], input_shape[1]
        i = ops.arange(sequence_length)[:, None]
        j = ops.arange(sequence_length)
        mask = ops.cast(i >= j, dtype="int32")
        mask = ops.reshape(mask, (1, input_shape[1], input_shape[1]))
        return ops.broadcast_to(mask, (batch_size, sequence_length, sequence_length))


def keras_io_translator(vocab_size=40, sequence_length=10, embed_dim=16, latent_dim=16,
                        num_heads=2, seed=0):
    """keras.io seq2seq translator with dict inputs and a softmax over the vocabulary."""
    keras.utils.set_random_seed(seed)
    encoder_inputs = keras.Input(shape=(None,), dtype="int64", name="encoder_inputs")
    x = KerasIOPositionalEmbedding(sequence_length, vocab_size, embed_dim)(encoder_inputs)
    encoder_outputs = KerasIOTransformerEncoder(embed_dim, latent_dim, num_heads)(x)
    decoder_inputs = keras.Input(shape=(None,), dtype="int64", name="decoder_inputs")
    x = KerasIOPositionalEmbedding(sequence_length, vocab_size, embed_dim)(decoder_inputs)
    x = KerasIOTransformerDecoder(embed_dim, latent_dim, num_heads)([x, encoder_outputs])
    x = layers.Dropout(0.5)(x)
    decoder_outputs = layers.Dense(vocab_size, activation="softmax")(x)
    return keras.Model(
        {"encoder_inputs": encoder_inputs, "decoder_inputs": decoder_inputs},
        decoder_outputs,
        name="keras_io_translator",
    )


#: The keras.io custom layers, for `custom_objects=` when loading a saved model.
KERAS_IO_CUSTOM_OBJECTS = {
    cls.__name__: cls
    for cls in (
        KerasIOTransformerBlock, KerasIOTokenAndPositionEmbedding, KerasIOGPTBlock,
        KerasIOTransformerEncoder, KerasIOPositionalEmbedding, KerasIOTransformerDecoder,
    )
}

# ----------------------------------------------------------------- keras-hub


def _hub():
    try:
        import keras_hub
    except ImportError as exc:  # pragma: no cover - in the test extra
        raise ImportError(
            "The hub_* builders need keras-hub: pip install 'kerastrace[test]'."
        ) from exc
    return keras_hub


def hub_bert_classifier(vocabulary_size=64, num_classes=2, num_layers=2, hidden_dim=16,
                        num_heads=2, max_sequence_length=32, seed=0):
    """keras-hub `BertTextClassifier` from a tiny config (dict inputs)."""
    hub = _hub()
    keras.utils.set_random_seed(seed)
    backbone = hub.models.BertBackbone(
        name="bert_backbone",
        vocabulary_size=vocabulary_size, num_layers=num_layers, num_heads=num_heads,
        hidden_dim=hidden_dim, intermediate_dim=2 * hidden_dim,
        max_sequence_length=max_sequence_length,
    )
    return hub.models.BertTextClassifier(backbone, num_classes=num_classes, preprocessor=None)


def hub_gpt2_lm(vocabulary_size=64, num_layers=2, hidden_dim=16, num_heads=2,
                max_sequence_length=32, seed=0):
    """keras-hub `GPT2CausalLM` from a tiny config (tied input/output embedding)."""
    hub = _hub()
    keras.utils.set_random_seed(seed)
    backbone = hub.models.GPT2Backbone(
        name="gpt2_backbone",
        vocabulary_size=vocabulary_size, num_layers=num_layers, num_heads=num_heads,
        hidden_dim=hidden_dim, intermediate_dim=2 * hidden_dim,
        max_sequence_length=max_sequence_length,
    )
    return hub.models.GPT2CausalLM(backbone, preprocessor=None)


def hub_llama_lm(vocabulary_size=64, num_layers=2, hidden_dim=16, num_query_heads=4,
                 num_key_value_heads=2, seed=0):
    """keras-hub `LlamaCausalLM` from a tiny config (grouped-query attention, RoPE)."""
    hub = _hub()
    keras.utils.set_random_seed(seed)
    backbone = hub.models.LlamaBackbone(
        name="llama_backbone",
        vocabulary_size=vocabulary_size, num_layers=num_layers,
        num_query_heads=num_query_heads, num_key_value_heads=num_key_value_heads,
        hidden_dim=hidden_dim, intermediate_dim=2 * hidden_dim,
    )
    return hub.models.LlamaCausalLM(backbone, preprocessor=None)


def hub_vit_classifier(image_size=16, patch_size=4, num_classes=3, num_layers=2,
                       hidden_dim=16, num_heads=2, seed=0):
    """keras-hub `ViTImageClassifier` from a tiny config (float image inputs)."""
    hub = _hub()
    keras.utils.set_random_seed(seed)
    backbone = hub.models.ViTBackbone(
        name="vit_backbone",
        image_shape=(image_size, image_size, 3), patch_size=patch_size,
        num_layers=num_layers, num_heads=num_heads, hidden_dim=hidden_dim,
        mlp_dim=2 * hidden_dim,
    )
    return hub.models.ViTImageClassifier(backbone, num_classes=num_classes, preprocessor=None)
