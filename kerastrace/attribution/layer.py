"""Layer attribution: attribute to the output (or input) of an inner layer."""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import tensorflow as tf

from kerastrace._utils import validation as v
from kerastrace._utils.types import Inputs, Target
from kerastrace.attribution import _core
from kerastrace.attribution._base import GradientAttribution
from kerastrace.attribution.integrated_gradients import path_parameters


@contextlib.contextmanager
def patch_call(layer, fn):
    """Temporarily replace `layer.call` by `fn(original_call, *args, **kwargs)`.

    The patch lives on the instance only and is removed on exit, so the
    model is unchanged afterwards. Used while tracing, so the compiled graph
    keeps the replaced computation without patching at run time.
    """
    had = "call" in layer.__dict__
    original = layer.call

    def patched(*args, **kwargs):
        return fn(original, *args, **kwargs)

    object.__setattr__(layer, "call", patched)
    try:
        yield
    finally:
        if had:
            object.__setattr__(layer, "call", original)
        else:
            del layer.__dict__["call"]


def _first(value):
    return value[0] if isinstance(value, (tuple, list)) else value


def _replace_first(value, new):
    if isinstance(value, (tuple, list)):
        return type(value)([new, *value[1:]])
    return new


def token_scores(attributions, reduce: str = "sum", axis: int = -1) -> np.ndarray:
    """Per-token scores from `(B, T, hidden)` layer attributions.

    Args:
        attributions: Array of shape `(B, T, hidden)`.
        reduce: `"sum"` (signed, keeps completeness) or `"norm"` (L2 norm).
        axis: The hidden axis.

    Returns:
        Array `(B, T)`.

    Example:

    >>> import numpy as np
    >>> from kerastrace.attribution import token_scores
    >>> a = np.array([[[3.0, -4.0], [1.0, 1.0]]])
    >>> token_scores(a).tolist(), token_scores(a, "norm").round(3).tolist()
    ([[-1.0, 2.0]], [[5.0, 1.414]])
    """
    v.check_one_of("reduce", reduce, ("sum", "norm"))
    a = np.asarray(attributions)
    return a.sum(axis=axis) if reduce == "sum" else np.sqrt((a * a).sum(axis=axis))


class _LayerAttribution(GradientAttribution):
    def __init__(self, model, layer, multiply_by_inputs=True):
        super().__init__(model)
        if isinstance(layer, str):
            if not isinstance(model, keras.Model):
                raise TypeError(
                    "Received an invalid value for argument `layer`: a layer name needs a "
                    f"Keras model. Received: layer={layer!r}"
                )
            layer = model.get_layer(layer)
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(
                "Received an invalid value for argument `layer`, expected a Keras layer of the "
                f"model or its name. Received: layer={layer!r}"
            )
        self.layer = layer
        self.multiplies_by_inputs = v.check_bool("multiply_by_inputs", multiply_by_inputs)
        self._to_input = False
        self._captures = {}
        label = f"the {{}} of layer {layer.name!r}"
        self._label = label
        # One pair of compiled engines per mode (layer output / layer input).
        self._engines = {
            mode: (
                _core.GradientEngine(
                    self._injected_forward, [label.format("input" if mode else "output")]
                ),
                _core.ForwardEngine(lambda xs: self._injected_forward(xs[:1], xs[1:])),
            )
            for mode in (False, True)
        }
        self.engine, self.injected_engine = self._engines[False]

    # -- forward with the layer's output (or input) replaced by a given tensor
    def _injected_forward(self, diff, ctx):
        value = diff[0]
        to_input = self._to_input

        def fn(original, *args, **kwargs):
            if to_input:
                new = tf.cast(value, _first(args).dtype) if args else value
                return original(new, *args[1:], **kwargs)
            out = original(*args, **kwargs)
            return _replace_first(out, tf.cast(value, _first(out).dtype))

        with patch_call(self.layer, fn):
            return self._forward(tuple(ctx))

    def _capture(self, xs, chunk):
        key = (tuple((x.shape[1:], x.dtype.str) for x in xs), self._to_input)
        fn = self._captures.get(key)
        if fn is None:
            to_input = self._to_input

            def body(*inputs):
                seen = []

                def record(original, *args, **kwargs):
                    out = original(*args, **kwargs)
                    seen.append(_first(args) if to_input else _first(out))
                    return out

                with patch_call(self.layer, record):
                    self._forward(tuple(inputs))
                if not seen:
                    raise ValueError(
                        f"Received an invalid value for argument `layer`: layer "
                        f"{self.layer.name!r} is not called by the model's forward pass."
                    )
                return tf.cast(seen[0], tf.float32)

            fn = tf.function(body, input_signature=[_core.spec_for(x) for x in xs])
            self._captures[key] = fn
        n = xs[0].shape[0]
        parts = [fn(*(x[i : i + chunk] for x in xs)).numpy() for i in range(0, n, chunk)]
        return np.concatenate(parts, axis=0)

    def _setup(self, inputs, baselines, target, attribute_to_layer_input):
        self._to_input = v.check_bool("attribute_to_layer_input", attribute_to_layer_input)
        self.engine, self.injected_engine = self._engines[self._to_input]
        xs, is_tuple = _core.normalize_inputs(inputs)
        _core.check_finite(xs, names=self._names)
        tgt = self._target(target, xs)
        bases = None
        if baselines is not False:
            bases = tuple(
                b.astype(x.dtype)
                for b, x in zip(_core.broadcast_baselines(baselines, xs, dtype=None), xs)
            )
        return xs, is_tuple, tgt, bases


class LayerIntegratedGradients(_LayerAttribution):
    """Integrated Gradients with respect to an inner layer's output (or input).

    The straight path runs between the layer's activation for the baselines
    and for the inputs; the rest of the model sees the real inputs (so Keras
    masks, e.g. from `Embedding(mask_zero=True)`, still come from the real
    token ids). This is how token-id models are explained: attribute to the
    embedding layer and sum (or take the norm) over the hidden axis with
    `token_scores`. The layer's `call` is replaced on the instance while the
    compiled function is traced and restored right after, so the model is
    unchanged. If the layer returns a tuple (e.g. `TransformerBlock`), its
    first element is used.

    Args:
        model: A Keras model (functional, Sequential or subclassed).
        layer: The layer, or its name.
        multiply_by_inputs: Multiply by `activation - baseline_activation`.

    Example:

    >>> import numpy as np, keras
    >>> from kerastrace.attribution import LayerIntegratedGradients, token_scores
    >>> keras.utils.set_random_seed(0)
    >>> tokens = keras.Input((4,), dtype="int32")
    >>> emb = keras.layers.Embedding(10, 3, mask_zero=True, name="emb")
    >>> h = keras.layers.GlobalAveragePooling1D()(emb(tokens))
    >>> model = keras.Model(tokens, keras.layers.Dense(1, activation="tanh")(h))
    >>> lig = LayerIntegratedGradients(model, "emb")
    >>> attr, delta = lig.attribute(np.array([[4, 2, 7, 0]]), baselines=0,
    ...                             return_convergence_delta=True)
    >>> attr.shape, token_scores(attr).shape, bool(abs(delta[0]) < 1e-4)
    ((1, 4, 3), (1, 4), True)

    References:
        - [Sundararajan et al., 2017](https://arxiv.org/abs/1703.01365)
        - [Captum LayerIntegratedGradients](https://captum.ai/api/layer.html)
    """

    has_convergence_delta = True

    def attribute(
        self,
        inputs: Inputs,
        baselines=None,
        target: Target = None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
    ):
        """Compute layer Integrated Gradients.

        Args:
            inputs: Model inputs (token ids allowed), `(B, ...)` or a tuple.
            baselines: Baseline model inputs (e.g. `0`, the pad id), broadcast
                like in `IntegratedGradients`; default zeros.
            target: As in `IntegratedGradients.attribute`.
            n_steps: Path points.
            method: Integration rule, as in `IntegratedGradients`.
            internal_batch_size: Path points per model call.
            return_convergence_delta: Also return
                `sum(attr) - (F(act) - F(baseline_act))` per example, where
                `F` is the model with the layer's activation replaced.
            attribute_to_layer_input: Attribute to the layer's (first) input
                instead of its output.

        Returns:
            Array of the layer activation's shape (e.g. `(B, T, hidden)`),
            or `(attributions, delta)`.

        Raises:
            ValueError: for invalid arguments, or if the layer is not used.
        """
        self._check_delta_request(return_convergence_delta)
        plan, _ = self._plan(
            inputs,
            baselines=baselines,
            target=target,
            n_steps=n_steps,
            method=method,
            internal_batch_size=internal_batch_size,
            attribute_to_layer_input=attribute_to_layer_input,
        )
        (attr,) = self._execute(plan)
        if not return_convergence_delta:
            return attr
        (act_x,), (act_b,), xs, tgt = plan.xs, plan.bases, plan.ctx, plan.target
        f_x = self.injected_engine.scores((act_x, *xs), tgt)
        f_b = self.injected_engine.scores((act_b, *xs), tgt)
        total = attr.reshape(attr.shape[0], -1).astype(np.float64).sum(axis=1)
        return attr, (total - (f_x.astype(np.float64) - f_b)).astype(np.float32)

    def _plan(
        self,
        inputs,
        baselines=None,
        target=None,
        n_steps=50,
        method="gausslegendre",
        internal_batch_size=None,
        attribute_to_layer_input=False,
    ):
        alphas, weights = path_parameters(method, n_steps)
        chunk = self._batch_size(internal_batch_size)
        xs, is_tuple, tgt, bases = self._setup(inputs, baselines, target, attribute_to_layer_input)
        cap = chunk or xs[0].shape[0]
        act_x = self._capture(xs, cap)
        act_b = self._capture(bases, cap)
        mode = _core.MODE_X_MINUS_BASE if self.multiplies_by_inputs else _core.MODE_GRAD
        plan = _core.Plan(
            (act_x,), (act_b,), tgt, alphas, weights, (mode,),
            internal_batch_size=chunk, ctx=xs,
        )
        return plan, is_tuple


class LayerGradientXActivation(_LayerAttribution):
    """Gradient of the target times the activation of an inner layer.

    Args:
        model: A Keras model.
        layer: The layer, or its name.
        multiply_by_inputs: If False, return the layer gradient only.

    Example:

    >>> import numpy as np, keras
    >>> from kerastrace.attribution import LayerGradientXActivation
    >>> model = keras.Sequential([keras.Input((2,)),
    ...     keras.layers.Dense(2, use_bias=False, name="hidden"),
    ...     keras.layers.Dense(1, use_bias=False, name="out")])
    >>> model.get_layer("hidden").set_weights([np.eye(2)])
    >>> model.get_layer("out").set_weights([np.array([[2.0], [-1.0]])])
    >>> LayerGradientXActivation(model, "hidden").attribute(np.array([[1.0, 3.0]]))
    array([[ 2., -3.]], dtype=float32)

    References:
        - [Captum LayerGradientXActivation](https://captum.ai/api/layer.html)
    """

    def attribute(
        self,
        inputs: Inputs,
        target: Target = None,
        internal_batch_size: int | None = None,
        attribute_to_layer_input: bool = False,
    ):
        """Compute `activation * d target / d activation` for the layer.

        Args:
            inputs: Model inputs (token ids allowed).
            target: As in `Saliency.attribute`.
            internal_batch_size: Examples per model call.
            attribute_to_layer_input: Use the layer's input instead of its output.

        Returns:
            Array of the layer activation's shape.
        """
        plan, _ = self._plan(
            inputs,
            target=target,
            internal_batch_size=internal_batch_size,
            attribute_to_layer_input=attribute_to_layer_input,
        )
        return self._execute(plan)[0]

    def _plan(self, inputs, target=None, internal_batch_size=None, attribute_to_layer_input=False):
        chunk = self._batch_size(internal_batch_size)
        xs, is_tuple, tgt, _ = self._setup(inputs, False, target, attribute_to_layer_input)
        act = self._capture(xs, chunk or xs[0].shape[0])
        mode = _core.MODE_X if self.multiplies_by_inputs else _core.MODE_GRAD
        return _core.gradient_plan((act,), tgt, (mode,), internal_batch_size=chunk, ctx=xs), is_tuple
