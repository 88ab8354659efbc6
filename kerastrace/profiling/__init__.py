"""Per-layer compute breakdown of Keras models: parameters, FLOPs, memory, measured time.

`profile_model(model, ...)` returns a `ModelProfile` with one `LayerProfile`
row per layer (nested layers included, named by their path without the model's
name, e.g. `"block_0/attention"`), FLOPs from the TensorFlow profiler over
the frozen forward graph (attention `Einsum` products counted too, loop
bodies once per iteration), multiply-accumulates (`macs`) of the MatMul,
convolution and Einsum ops apart from the element-wise FLOPs, every op
without a FLOP count listed with the reason, and op times from a real
`tf.profiler` trace kept for TensorBoard's profile plugin.

Example:

>>> import keras
>>> from kerastrace.profiling import profile_model
>>> model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8, name="fc")])
>>> profile = profile_model(model, batch_size=2, trace=False)
>>> profile.total_flops  # 2 * 2 * 16 * 8 + 2 * 8
528
>>> profile.total_macs, profile.total_elementwise_flops  # 2 * 16 * 8; the bias adds
(256, 16)
"""

from kerastrace.profiling._trace import ProfilerBusyError
from kerastrace.profiling.core import profile_model
from kerastrace.profiling.loading import (
    build_from_builder,
    import_custom_objects,
    load_model_for_profiling,
)
from kerastrace.profiling.result import FLOPS_CONVENTION, LayerProfile, ModelProfile

__all__ = [
    "FLOPS_CONVENTION",
    "LayerProfile",
    "ModelProfile",
    "ProfilerBusyError",
    "build_from_builder",
    "import_custom_objects",
    "load_model_for_profiling",
    "profile_model",
]
