"""Explain at scale: attributions and attention statistics over whole datasets.

`attribute_dataset` streams a batched `tf.data.Dataset` through any attribution
method (optionally across the replicas of a `tf.distribute` strategy), writing
resumable `.npz` shards; `summarize` turns the results into dataset-level
aggregates; `attention_statistics_dataset` averages attention head statistics
over a dataset; `NeighborIndex` finds the training examples nearest to a
query in a layer's representation (`representation_fn`).

Dataset elements are what Keras `fit` takes: `x`, `(x,)`, `(x, y)` or
`(x, y, sample_weight)`, with features `x` an array, a tuple of arrays, or a
dict of arrays such as keras-hub's `{"token_ids", "padding_mask",
"segment_ids"}`.

Example:

>>> import numpy as np, keras, tensorflow as tf
>>> from kerastrace.attribution import Saliency
>>> from kerastrace.scale import attribute_dataset, summarize
>>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, use_bias=False)])
>>> model.layers[0].set_weights([np.array([[1.0, 0.0], [0.0, -2.0], [0.0, 0.0]])])
>>> ds = tf.data.Dataset.from_tensor_slices(
...     (np.ones((4, 3), "float32"), np.array([0, 1, 1, 1]))).batch(2)
>>> summary = summarize(attribute_dataset(Saliency(model), ds, progress=False))
>>> summary.feature_mean_abs.tolist(), summary.class_counts.tolist()
([0.25, 1.5, 0.0], [1, 3])
"""

from kerastrace.scale._attribute import attribute_dataset
from kerastrace.scale._neighbors import (
    NeighborIndex,
    NeighborResult,
    neighbors_for_texts,
    representation_fn,
)
from kerastrace.scale._store import AttributionStore
from kerastrace.scale._summary import (
    DatasetSummary,
    attention_statistics_dataset,
    summarize,
)

__all__ = [
    "AttributionStore",
    "DatasetSummary",
    "NeighborIndex",
    "NeighborResult",
    "attention_statistics_dataset",
    "attribute_dataset",
    "neighbors_for_texts",
    "representation_fn",
    "summarize",
]
