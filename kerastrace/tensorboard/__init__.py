"""TensorBoard views: `tf.summary` writers, Keras callbacks and the kerastrace dashboard.

Writers (`write_attention`, `write_token_attributions`, `write_head_statistics`,
`write_profile`) take a log directory (or a `tf.summary.SummaryWriter`) and
plain result objects. Callbacks (`AttentionMonitor`, `AttributionMonitor`,
`GradientFlow`, `ProfileCallback`) log during `model.fit` and accept
keras-hub dict inputs. Each checks what it needs when training starts; with
`strict=True` a failure raises out of `fit`, otherwise it is logged once with
`logging.error` (what failed and what to do), counted in `.failures`, and
what cannot work is turned off. Open the results with
`tensorboard --logdir <logdir>`.

The kerastrace dashboard (the TensorBoard plugin `kerastrace`, installed with
the package, tab "KERASTRACE") shows interactive attention, attribution,
generation, profile and gradient-flow views of what the data writers
(`write_attention_data`, `write_attribution_data`, `write_explanations`,
`write_generation_data`, `write_profile_data`, `write_gradient_flow_data`)
and the monitors log. `write_model_graph` writes a model's op graph for the
Graphs tab.

Names are imported on first use, so that TensorBoard can load the plugin
(`kerastrace.tensorboard.plugin`) without importing TensorFlow or Keras.
"""

import importlib

_EXPORTS = {
    "AttentionMonitor": "_callbacks",
    "AttributionMonitor": "_callbacks",
    "GradientFlow": "_callbacks",
    "ProfileCallback": "_callbacks",
    "gradient_x_embedding": "_callbacks",
    "jaccard_top_k": "_callbacks",
    "attention_grid_image": "_writers",
    "figure_to_image": "_writers",
    "get_writer": "_writers",
    "write_attention": "_writers",
    "write_head_statistics": "_writers",
    "write_profile": "_writers",
    "write_token_attributions": "_writers",
    "model_probabilities": "_plugin_data",
    "write_attention_data": "_plugin_data",
    "write_attribution_data": "_plugin_data",
    "write_explanations": "_plugin_data",
    "write_generation_data": "_plugin_data",
    "write_gradient_flow_data": "_plugin_data",
    "write_model_graph": "_plugin_data",
    "write_profile_data": "_plugin_data",
    "dashboard_html": "plugin._standalone",
    "dashboard_data": "plugin._standalone",
    "open_command": "_command",
    "tensorboard_command": "_command",
}

__all__ = sorted(_EXPORTS, key=str.lower)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
