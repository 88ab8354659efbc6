"""Layer attribution: attribute to the output (or input) of an inner layer."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from kerastrace._utils import instrument, tf_compat
from kerastrace._utils import validation as v
from kerastrace._utils.types import Inputs, Target
from kerastrace.attribution import _core
from kerastrace.attribution._base import GradientAttribution
from kerastrace.attribution.integrated_gradients import path_parameters


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


#: Layer attributions come back as one array (the layer activation's shape).
_ARRAY = _core.Layout("array", (0,), (0,))


class _LayerAttribution(GradientAttribution):
    """Attribution to one call of an inner layer (see `LayerIntegratedGradients`).

    The layer's output (or input) of call `layer_call` in the forward pass is
    read and replaced through `kerastrace._utils.instrument`; its other calls
    (e.g. a tied embedding used again as the output head, keras-hub's
    `ReversibleEmbedding(reverse=True)`) run unchanged.
    """

    def __init__(self, model, layer, multiply_by_inputs=True, layer_call=0):
        super().__init__(model)
        if isinstance(layer, str) and not hasattr(model, "layers"):
            raise TypeError(
                "Received an invalid value for argument `layer`: a layer name needs a "
                f"Keras model. Received: layer={layer!r}"
            )
        if not isinstance(layer, str) and not hasattr(layer, "call"):
            raise TypeError(
                "Received an invalid value for argument `layer`, expected a Keras layer of the "
                f"model, its path or its name. Received: layer={layer!r}"
            )
        self.layer_path, self.layer = instrument.resolve_layer(model, layer)
        self.layer_call = v.check_non_negative_int("layer_call", layer_call)
        self.multiplies_by_inputs = v.check_bool("multiply_by_inputs", multiply_by_inputs)
        self._to_input = False
        self._captures = {}
        site = instrument.site_name(self.layer_path, self.layer_call)
        label = f"the {{}} of layer {site!r}"
        # One pair of compiled engines per mode (layer output / layer input).
        self._engines = {
            mode: (
                _core.GradientEngine(
                    self._injected_forward, [label.format("input" if mode else "output")]
                ),
                _core.ForwardEngine(
                    lambda flat, layout: self._injected_forward(flat[:1], flat[1:], layout)
                ),
            )
            for mode in (False, True)
        }
        self.engine, self.injected_engine = self._engines[False]

    @property
    def _what(self):
        return "input" if self._to_input else "output"

    # -- forward with the layer's output (or input) replaced by a given tensor
    def _injected_forward(self, diff, ctx, layout):
        with instrument.replace(self.layer, diff[0], self.layer_call, self._what) as state:
            outputs = self._forward(layout.merge((), ctx), layout)
        state.check(self.layer_path)
        return outputs

    def _capture(self, flat, layout, chunk):
        key = (tuple((x.shape[1:], x.dtype.str) for x in flat), layout, self._to_input)
        fn = self._captures.get(key)
        if fn is None:
            what = self._what

            def body(*inputs):
                with instrument.capture(self.layer, self.layer_call, what) as state:
                    self._forward(inputs, layout)
                state.check(self.layer_path)
                return tf.cast(state.values[0], tf.float32)

            fn = tf_compat.function(body, input_signature=[_core.spec_for(x) for x in flat])
            self._captures[key] = fn
        n = flat[0].shape[0]
        parts = [fn(*(x[i : i + chunk] for x in flat)).numpy() for i in range(0, n, chunk)]
        return np.concatenate(parts, axis=0)

    def _baseline_inputs(self, baselines, flat, layout):
        """Baseline model inputs: the same structure as the inputs.

        For dict inputs, a dict replaces the given entries (the others keep
        their input values, e.g. keras-hub's `padding_mask`), and a scalar or
        array is the baseline of the `token_ids` entry.
        """
        if layout.kind == "dict":
            if not isinstance(baselines, dict):
                if "token_ids" not in layout.keys:
                    raise ValueError(
                        "Received an invalid value for argument `baselines`: with dict "
                        "inputs, give a dict of baselines by key (entries left out keep "
                        f"their input values); keys: {list(layout.keys)}. "
                        f"Received: baselines={baselines!r}"
                    )
                baselines = {"token_ids": 0 if baselines is None else baselines}
            full = layout.with_diff(range(len(layout.keys)))
            bases = _core.broadcast_baselines(baselines, flat, dtype=None, layout=full)
        else:
            bases = _core.broadcast_baselines(baselines, flat, dtype=None)
        return tuple(np.asarray(b).astype(x.dtype) for b, x in zip(bases, flat))

    def _setup(self, inputs, baselines, target, attribute_to_layer_input):
        self._to_input = v.check_bool("attribute_to_layer_input", attribute_to_layer_input)
        self.engine, self.injected_engine = self._engines[self._to_input]
        flat, layout = _core.normalize_inputs(inputs)
        _core.check_finite(flat, names=self._names, layout=layout)
        self._check_inputs(flat, layout)
        layout = layout.with_diff(())  # every model input passes through unchanged
        tgt = self._target(target, flat, layout)
        bases = None
        if baselines is not False:
            bases = self._baseline_inputs(baselines, flat, layout)
            _core.check_token_inputs(self.model, bases, layout, "baselines", self._names)
        return flat, layout, tgt, bases

    def _check_activation(self, act, which):
        """Refuse a NaN/inf layer activation (the path would start or end there)."""
        finite = np.isfinite(act)
        if finite.all():
            return
        b = int(np.argwhere(~finite)[0][0])
        site = instrument.site_name(self.layer_path, self.layer_call)
        raise ValueError(
            f"The {self._what} of layer {site!r} is NaN or inf for the {which} at example "
            f"{b}, so attributions to it are undefined. {_core.SCORE_HINT}"
        )


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
        layer: The layer, its path (e.g. `"gpt2_backbone/token_embedding"`) or
            its name.
        multiply_by_inputs: Multiply by `activation - baseline_activation`.
        layer_call: Which call of the layer in the forward pass (0-based;
            default 0, the first, which for an embedding is the call on the
            model's token ids). A layer called again later, such as a tied
            embedding used as the output head (keras-hub's
            `ReversibleEmbedding(reverse=True)` in `GPT2CausalLM`), keeps its
            other calls untouched: only this call's activation is replaced.

    Inputs may be an array, a tuple or a dict (keras-hub models:
    `{"token_ids", "padding_mask", ...}`); every entry reaches the model
    unchanged, only the layer's activation follows the path. For dict inputs,
    `baselines` is a dict by key (entries left out keep their input values)
    or a value for `token_ids`.

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
            internal_batch_size: Path points per model call (default: from
                a memory budget, as in `IntegratedGradients`).
            return_convergence_delta: Also return
                `sum(attr) - (F(act) - F(baseline_act))` per example, where
                `F` is the model with the layer's activation replaced.
            attribute_to_layer_input: Attribute to the layer's (first) input
                instead of its output.

        Returns:
            Array of the layer activation's shape (e.g. `(B, T, hidden)`),
            or `(attributions, delta)`.

        Raises:
            ValueError: for invalid arguments, token ids outside the token
                embedding's vocabulary (in `inputs` or `baselines`),
                non-integral baselines of integer inputs, NaN/inf outputs or
                gradients (naming the example and path step), or if the
                layer is not used.
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
        (act_x,), (act_b,), flat, tgt = plan.xs, plan.bases, plan.ctx, plan.target
        f_x = self.injected_engine.scores(
            (act_x, *flat), tgt, layout=plan.layout, where=lambda b: f"example {b} (inputs)"
        )
        f_b = self.injected_engine.scores(
            (act_b, *flat), tgt, layout=plan.layout, where=lambda b: f"example {b} (baselines)"
        )
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
        flat, layout, tgt, bases = self._setup(
            inputs, baselines, target, attribute_to_layer_input
        )
        cap = chunk or flat[0].shape[0]
        act_x = self._capture(flat, layout, cap)
        act_b = self._capture(bases, layout, cap)
        self._check_activation(act_x, "inputs")
        self._check_activation(act_b, "baselines")
        mode = _core.MODE_X_MINUS_BASE if self.multiplies_by_inputs else _core.MODE_GRAD
        plan = _core.Plan(
            (act_x,), (act_b,), tgt, alphas, weights, (mode,),
            internal_batch_size=chunk, ctx=flat, layout=layout,
        )
        return plan, _ARRAY


class LayerGradientXActivation(_LayerAttribution):
    """Gradient of the target times the activation of an inner layer.

    Args:
        model: A Keras model.
        layer: The layer, its path or its name.
        multiply_by_inputs: If False, return the layer gradient only.
        layer_call: Which call of the layer (see `LayerIntegratedGradients`).

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
        flat, layout, tgt, _ = self._setup(inputs, False, target, attribute_to_layer_input)
        act = self._capture(flat, layout, chunk or flat[0].shape[0])
        self._check_activation(act, "inputs")
        mode = _core.MODE_X if self.multiplies_by_inputs else _core.MODE_GRAD
        plan = _core.gradient_plan(
            (act,), tgt, (mode,), internal_batch_size=chunk, ctx=flat, layout=layout
        )
        return plan, _ARRAY
