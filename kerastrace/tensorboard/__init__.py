"""TensorBoard views: `tf.summary` writers and Keras callbacks.

Writers (`write_attention`, `write_token_attributions`, `write_head_statistics`,
`write_profile`) take a log directory (or a `tf.summary.SummaryWriter`) and
plain result objects. Callbacks (`AttentionMonitor`, `AttributionMonitor`,
`GradientFlow`, `ProfileCallback`) log during `model.fit` and accept
keras-hub dict inputs. Each checks what it needs when training starts; with
`strict=True` a failure raises out of `fit`, otherwise it is logged once with
`logging.error` (what failed and what to do), counted in `.failures`, and
what cannot work is turned off. Open the results with
`tensorboard --logdir <logdir>`.
"""

from kerastrace.tensorboard._callbacks import (
    AttentionMonitor,
    AttributionMonitor,
    GradientFlow,
    ProfileCallback,
    gradient_x_embedding,
    jaccard_top_k,
)
from kerastrace.tensorboard._writers import (
    attention_grid_image,
    figure_to_image,
    get_writer,
    write_attention,
    write_head_statistics,
    write_profile,
    write_token_attributions,
)

__all__ = [
    "AttentionMonitor",
    "AttributionMonitor",
    "attention_grid_image",
    "GradientFlow",
    "ProfileCallback",
    "figure_to_image",
    "get_writer",
    "gradient_x_embedding",
    "jaccard_top_k",
    "write_attention",
    "write_head_statistics",
    "write_profile",
    "write_token_attributions",
]
