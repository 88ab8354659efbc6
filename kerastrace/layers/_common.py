"""Pieces shared by the layers that return `(outputs, attention_weights)`."""

from __future__ import annotations

import functools

import keras

from kerastrace._utils import validation as v

# Values of the `attention_weights_dtype` constructor argument.
WEIGHTS_DTYPES = ("float32", "compute")


def clone_initializer(initializer):
    """A fresh copy of a Keras initializer, so sublayers/weights do not share its state."""
    return initializer.__class__.from_config(initializer.get_config())


def check_weights_dtype(value) -> str:
    """Validate the `attention_weights_dtype` constructor argument."""
    if not isinstance(value, str) or value not in WEIGHTS_DTYPES:
        raise v.invalid(
            "attention_weights_dtype",
            'one of "float32" (the default) or "compute" (the layer\'s compute dtype)',
            value,
        )
    return value


def flash_attention_setting():
    """The `flash_attention` argument for `keras.ops.dot_product_attention`.

    `False` when the user turned flash attention off with
    `keras.config.disable_flash_attention()`, else `None` (the backend picks
    its fastest kernel for the inputs and device).
    """
    return False if keras.config.is_flash_attention_enabled() is False else None


@functools.cache
def _fused_kernel_platform(backend: str) -> bool:
    if backend == "jax":
        import jax

        return jax.devices()[0].platform == "gpu"
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def fused_attention_kernel_available(dtype) -> bool:
    """Whether `keras.ops.dot_product_attention` runs a fused kernel here for `dtype`.

    True for float16/bfloat16 under the JAX backend on a GPU (cuDNN flash
    attention) and under the torch backend with CUDA (PyTorch's fused SDPA
    kernels), unless flash attention was disabled globally. TensorFlow has no
    fused kernel: Keras computes the same einsum/softmax graph as the
    explicit path there. The fused kernels compute `Q K^T` with float32
    accumulation on chip and never write the `(B, H, T, T)` scores.
    """
    if keras.backend.standardize_dtype(dtype) not in ("float16", "bfloat16"):
        return False
    if keras.config.is_flash_attention_enabled() is False:
        return False
    return _fused_kernel_platform(keras.backend.backend())


class AttentionOutputs:
    """Mask and symbolic outputs of a layer returning `(outputs, attention_weights)`.

    The layer has a `return_attention_scores` flag, an `attention_weights_dtype`
    (`"float32"` or `"compute"`) and a `compute_output_shape` giving
    `(outputs_shape, weights_shape)` (or only `outputs_shape` when the flag is
    off). Outputs keep the input's Keras mask and have the compute dtype; the
    attention weights carry no mask and are float32 unless
    `attention_weights_dtype="compute"`.
    """

    @property
    def _returned_weights_dtype(self) -> str:
        """The dtype of the returned attention weights (resolved from the policy)."""
        if getattr(self, "attention_weights_dtype", "float32") == "compute":
            return keras.backend.standardize_dtype(self.compute_dtype)
        return "float32"

    def compute_mask(self, inputs, mask=None):
        if self.return_attention_scores:
            return [mask, None]
        return mask

    def compute_output_spec(self, inputs, *args, **kwargs):
        shapes = self.compute_output_shape(inputs.shape)
        if not self.return_attention_scores:
            return keras.KerasTensor(shapes, dtype=self.compute_dtype)
        return (
            keras.KerasTensor(shapes[0], dtype=self.compute_dtype),
            keras.KerasTensor(shapes[1], dtype=self._returned_weights_dtype),
        )
