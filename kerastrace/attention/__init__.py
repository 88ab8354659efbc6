"""Attention analysis: collect weights from any model, rollout, flow, head statistics.

Example:

>>> import numpy as np
>>> import keras
>>> from kerastrace import attention
>>> from kerastrace.layers import TransformerBlock
>>> inp = keras.Input((5, 8))
>>> x, _ = TransformerBlock(2, 16, name="block")(inp)
>>> model = keras.Model(inp, x)
>>> w = attention.collect(model, np.ones((1, 5, 8), "float32"))
>>> list(w), attention.attention_rollout(w).shape
(['block/attention'], (1, 5, 5))
"""

from kerastrace.attention._analysis import (
    HeadStatistics,
    attention_flow,
    attention_rollout,
    duplicate_heads,
    head_similarity,
    head_statistics,
    query_scores,
)
from kerastrace.attention._collect import AttentionMaps, attention_layers, collect

__all__ = [
    "AttentionMaps",
    "HeadStatistics",
    "attention_flow",
    "attention_layers",
    "attention_rollout",
    "collect",
    "duplicate_heads",
    "head_similarity",
    "head_statistics",
    "query_scores",
]
