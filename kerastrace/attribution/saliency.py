"""Saliency and InputXGradient."""

from __future__ import annotations

from kerastrace._utils import validation as v
from kerastrace._utils.types import Inputs, Target
from kerastrace.attribution import _core
from kerastrace.attribution._base import GradientAttribution


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
        additional_forward_args=None,
    ):
        """Compute the saliency map.

        Args:
            inputs: Array/tensor `(B, ...)` or a tuple of them (multi-input model).
            target: int, one int per example, or a callable `f(outputs) -> (B,)`.
                Required when the output has more than one element per example.
            abs: Return `|gradient|` (default) or the signed gradient.
            internal_batch_size: Examples per model call (default: all at once).
            additional_forward_args: Model inputs passed through unchanged
                and not attributed (Captum's argument): a dict merged into
                dict inputs, or arrays appended to array/tuple inputs.

        Returns:
            Numpy array(s) of the input's shape (a tuple for tuple inputs).

        Raises:
            TypeError: for integer inputs.
            ValueError: for a missing/out-of-range target, non-finite inputs,
                or a model output or gradient that is NaN or inf (e.g. at a
                kink such as `sqrt` at 0); the error names the example.
        """
        plan, layout = self._plan(
            inputs, target, abs=abs, internal_batch_size=internal_batch_size,
            additional_forward_args=additional_forward_args,
        )
        return _core.restore(self._execute(plan), layout)

    def _plan(
        self, inputs, target=None, abs=True, internal_batch_size=None,  # noqa: A002
        additional_forward_args=None,
    ):
        v.check_bool("abs", abs)
        chunk = self._batch_size(internal_batch_size)
        xs, ctx, layout = self._prepare(inputs, additional_forward_args=additional_forward_args)
        tgt = self._target(target, layout.merge(xs, ctx), layout)
        modes = (_core.MODE_GRAD,) * len(xs)
        plan = _core.gradient_plan(
            xs, tgt, modes, use_abs=abs, internal_batch_size=chunk, ctx=ctx, layout=layout
        )
        return plan, layout


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
        self,
        inputs: Inputs,
        target: Target = None,
        internal_batch_size: int | None = None,
        additional_forward_args=None,
    ):
        """Compute `inputs * gradient`. Arguments as in `Saliency.attribute`.

        Returns:
            Numpy array(s) of the input's shape.
        """
        plan, layout = self._plan(
            inputs, target, internal_batch_size=internal_batch_size,
            additional_forward_args=additional_forward_args,
        )
        return _core.restore(self._execute(plan), layout)

    def _plan(self, inputs, target=None, internal_batch_size=None, additional_forward_args=None):
        chunk = self._batch_size(internal_batch_size)
        xs, ctx, layout = self._prepare(inputs, additional_forward_args=additional_forward_args)
        tgt = self._target(target, layout.merge(xs, ctx), layout)
        modes = (_core.MODE_X,) * len(xs)
        plan = _core.gradient_plan(
            xs, tgt, modes, internal_batch_size=chunk, ctx=ctx, layout=layout
        )
        return plan, layout
