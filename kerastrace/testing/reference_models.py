"""Small reference models shared by tests, notebooks and the demo."""

from __future__ import annotations

import keras

from kerastrace._utils import validation as v
from kerastrace.layers import TokenAndPositionEmbedding, TransformerBlock


def build_text_classifier(
    vocab_size: int,
    sequence_length: int,
    num_classes: int = 2,
    dim: int = 32,
    num_heads: int = 2,
    ff_dim: int = 64,
    num_layers: int = 2,
    dropout: float = 0.0,
    norm_first: bool = False,
    return_attention: bool = False,
    seed: int | None = 0,
    name: str = "text_classifier",
) -> keras.Model:
    """A token-id classifier: token+position embedding, TransformerBlocks, a head.

    Token id 0 is padding (masked). The embedding layer is named "embedding"
    and its token table is `model.get_layer("embedding").token_embedding`. The model pools the first token's state (the
    [CLS] position when the tokenizer adds one) and outputs logits.

    Args:
        vocab_size: Vocabulary size.
        sequence_length: Padded sequence length `T`.
        num_classes: Number of output logits.
        dim: Model width.
        num_heads: Heads per block.
        ff_dim: Feed-forward hidden size.
        num_layers: Number of `TransformerBlock`s.
        dropout: Dropout rate inside the blocks.
        norm_first: Pre-norm blocks when True.
        return_attention: When True the model has one extra output per block:
            its attention weights `(B, num_heads, T, T)`.
        seed: Seed of the weight initializers.
        name: Model name.

    Returns:
        A functional `keras.Model` from `(B, T)` int32 ids to `(B, num_classes)`
        logits (and the attention weights when `return_attention`).

    Example:

    >>> import numpy as np
    >>> model = build_text_classifier(vocab_size=30, sequence_length=8, num_layers=1)
    >>> tuple(model(np.ones((2, 8), "int32")).shape)
    (2, 2)
    """
    for arg in ("vocab_size", "sequence_length", "num_classes", "dim", "num_heads", "ff_dim"):
        v.check_positive_int(arg, locals()[arg])
    v.check_non_negative_int("num_layers", num_layers)

    def init():
        return keras.initializers.GlorotUniform(seed=None if seed is None else seed + len(made))

    made: list = []
    ids = keras.Input((sequence_length,), dtype="int32", name="token_ids")
    embed = TokenAndPositionEmbedding(
        vocab_size, sequence_length, dim, mask_zero=True, name="embedding",
        embeddings_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=seed),
        position_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=seed),
    )
    x = embed(ids)
    made.append(embed)
    attention = []
    for i in range(num_layers):
        block = TransformerBlock(
            num_heads, ff_dim, dropout=dropout, norm_first=norm_first,
            kernel_initializer=init(), seed=seed, name=f"block_{i}",
        )
        made.append(block)
        x, w = block(x)
        attention.append(w)
    cls = x[:, 0, :]
    logits = keras.layers.Dense(num_classes, kernel_initializer=init(), name="classifier")(cls)
    outputs = [logits, *attention] if return_attention else logits
    return keras.Model(ids, outputs, name=name)


def build_causal_lm(
    vocab_size: int,
    sequence_length: int,
    dim: int = 64,
    num_heads: int = 4,
    ff_dim: int = 128,
    num_layers: int = 2,
    seed: int | None = 0,
    name: str = "causal_lm",
) -> keras.Model:
    """A small causal language model: token+position embedding, causal pre-norm blocks.

    `TokenAndPositionEmbedding`, `num_layers` `TransformerBlock`s called with
    `use_causal_mask=True` (named `block_0`, ...), a final `LayerNormalization`
    and a `Dense` head: `(B, T)` int32 ids to `(B, T, vocab_size)` logits.

    Example:

    >>> import numpy as np
    >>> lm = build_causal_lm(vocab_size=12, sequence_length=6, dim=8, num_heads=2, ff_dim=8)
    >>> tuple(lm(np.ones((2, 6), "int32")).shape)
    (2, 6, 12)
    """
    for arg in ("vocab_size", "sequence_length", "dim", "num_heads", "ff_dim", "num_layers"):
        v.check_positive_int(arg, locals()[arg])
    if seed is not None:
        keras.utils.set_random_seed(seed)
    ids = keras.Input((sequence_length,), dtype="int32", name="token_ids")
    # No padding mask: a causal model never reads the padding at the end of a sequence.
    x = TokenAndPositionEmbedding(vocab_size, sequence_length, dim, mask_zero=False,
                                  name="embedding")(ids)
    for i in range(num_layers):
        x, _ = TransformerBlock(num_heads, ff_dim, norm_first=True, name=f"block_{i}")(
            x, use_causal_mask=True
        )
    x = keras.layers.LayerNormalization(name="final_norm")(x)
    logits = keras.layers.Dense(vocab_size, name="lm_head")(x)
    return keras.Model(ids, logits, name=name)
