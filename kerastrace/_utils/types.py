"""Shared type aliases for the public API's type hints."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Union

import numpy as np

#: Anything that converts to a tensor: numpy arrays, tf.Tensors, Python numbers and lists.
TensorLike = Any
#: One input, or a tuple/list of inputs for multi-input models.
Inputs = Union[TensorLike, Sequence[TensorLike]]
#: A target: an int, one int per example, or a callable `f(outputs) -> (B,)` score.
Target = Union[int, Sequence[int], np.ndarray, Callable[[Any], Any], None]
#: A shape with an optional batch dimension.
Shape = Sequence[int | None]
