"""Keras 3 layers that expose what they compute.

- `SelfAttention`: multi-head self-attention returning `(outputs, weights)`.
- `TransformerBlock`: attention + feed-forward + residuals + layer norm,
  returning `(outputs, weights)`.
- `TokenAndPositionEmbedding`: token + position embedding that keeps the
  padding mask for the attention layers downstream.

They are written with `keras.ops` only and run on every Keras 3 backend
(TensorFlow, JAX, torch). With `return_attention_scores=False` the attention
layers compute through `keras.ops.dot_product_attention` (flash attention
where the backend and device offer it), unless an analysis such as
`kerastrace.attention.collect` reads their weights.

They are registered as serializable under the package name "kerastrace", so
`.keras` files that contain them load without `custom_objects`.
"""

from kerastrace.layers.embedding import TokenAndPositionEmbedding
from kerastrace.layers.self_attention import SelfAttention
from kerastrace.layers.transformer_block import TransformerBlock

__all__ = ["SelfAttention", "TokenAndPositionEmbedding", "TransformerBlock"]
