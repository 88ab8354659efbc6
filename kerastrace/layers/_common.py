"""Pieces shared by the layers that return `(outputs, attention_weights)`."""

from __future__ import annotations

import keras


def clone_initializer(initializer):
    """A fresh copy of a Keras initializer, so sublayers/weights do not share its state."""
    return initializer.__class__.from_config(initializer.get_config())


class AttentionOutputs:
    """Mask and symbolic outputs of a layer returning `(outputs, attention_weights)`.

    The layer has a `return_attention_scores` flag and a `compute_output_shape`
    giving `(outputs_shape, weights_shape)` (or only `outputs_shape` when the
    flag is off). Outputs keep the input's Keras mask and have the compute
    dtype; the attention weights carry no mask and are always float32.
    """

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
            keras.KerasTensor(shapes[1], dtype="float32"),
        )
