"""Saliency and InputXGradient."""

from __future__ import annotations

import numpy as np

from kerastrace._utils import validation as v
from kerastrace._utils.types import Inputs, Target
from kerastrace.attribution._base import GradientAttribution
from kerastrace.attribution._core import restore


class Saliency(GradientAttribution):
    """Gradient of the target with respect to the inputs (absolute by default).

    Args:
        model: A Keras model or a callable `f(*inputs) -> outputs`.

    Example:

    >>> import numpy as np, keras
    >>> from kerastrace.attribution import Saliency
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    >>> model.layers[0].set_weights([np.array([[2.0], [-1.0], [0.5]])])
    >>> Saliency(model).attribute(np.ones((1, 3), "float32"))
    array([[2. , 1. , 0.5]], dtype=float32)
    >>> Saliency(model).attribute(np.ones((1, 3), "float32"), abs=False)
    array([[ 2. , -1. ,  0.5]], dtype=float32)

    References:
        - [Simonyan et al., 2013, Deep Inside Convolutional Networks](https://arxiv.org/abs/1312.6034)
    """

    def attribute(
        self,
        inputs: Inputs,
        target: Target = None,
        abs: bool = True,  # noqa: A002 - Captum's argument name
        internal_batch_size: int | None = None,
    ):
        """Compute the saliency map.

        Args:
            inputs: Array/tensor `(B, ...)` or a tuple of them (multi-input model).
            target: int, one int per example, or a callable `f(outputs) -> (B,)`.
                Required when the output has more than one element per example.
            abs: Return `|gradient|` (default) or the signed gradient.
            internal_batch_size: Examples per model call (default: all at once).

        Returns:
            Numpy array(s) of the input's shape (a tuple for tuple inputs).

        Raises:
            TypeError: for integer inputs.
            ValueError: for a missing/out-of-range target or non-finite inputs.
        """
        v.check_bool("abs", abs)
        xs, is_tuple = self._prepare(inputs)
        tgt = self._target(target, xs)
        grads = self._gradients(xs, tgt, internal_batch_size)
        return restore(self._post(xs, grads, abs=abs), is_tuple)

    def _post(self, xs, grads, abs=True, **_):
        return tuple(np.abs(g) if abs else g for g in grads)

    def _compute(self, xs, target, abs=True, internal_batch_size=None):  # noqa: A002
        return self._post(xs, self._gradients(xs, target, internal_batch_size), abs=abs)


class InputXGradient(GradientAttribution):
    """Input times the gradient of the target with respect to the input.

    Example:

    >>> import numpy as np, keras
    >>> from kerastrace.attribution import InputXGradient
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    >>> model.layers[0].set_weights([np.array([[3.0], [-1.0]])])
    >>> InputXGradient(model).attribute(np.array([[2.0, 4.0]], "float32"))
    array([[ 6., -4.]], dtype=float32)

    References:
        - [Shrikumar et al., 2016, Not Just a Black Box](https://arxiv.org/abs/1605.01713)
    """

    multiplies_by_inputs = True

    def attribute(
        self, inputs: Inputs, target: Target = None, internal_batch_size: int | None = None
    ):
        """Compute `inputs * gradient`. Arguments as in `Saliency.attribute`.

        Returns:
            Numpy array(s) of the input's shape.
        """
        xs, is_tuple = self._prepare(inputs)
        tgt = self._target(target, xs)
        return restore(self._compute(xs, tgt, internal_batch_size=internal_batch_size), is_tuple)

    def _compute(self, xs, target, internal_batch_size=None):
        grads = self._gradients(xs, target, internal_batch_size)
        return tuple(x * g for x, g in zip(xs, grads))
