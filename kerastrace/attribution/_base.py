"""Base classes of the attribution family (Captum's `Attribution` hierarchy)."""

from __future__ import annotations

import numpy as np

from kerastrace._utils import validation as v
from kerastrace.attribution import _core


class Attribution:
    """Base class: a model (or callable) explained by one verb, `attribute`.

    Subclasses follow the same flow: normalize the inputs (an array, a tensor
    or a tuple of them), validate them and the target, compute, and restore
    the caller's structure (a tuple of inputs gives a tuple of numpy arrays
    back).

    Attributes:
        has_convergence_delta: whether `attribute` accepts
            `return_convergence_delta=True`.
        multiplies_by_inputs: whether the attributions are multiplied by
            `inputs - baselines` (global attribution) or not (local).
    """

    has_convergence_delta = False
    multiplies_by_inputs = False

    def __init__(self, model):
        if model is None or not callable(model):
            raise TypeError(
                "Received an invalid value for argument `model`, expected a Keras model or "
                f"a callable. Received: model={model!r}"
            )
        self.model = model
        self._forward = _core.make_forward(model)
        self._names = _core.model_input_names(model)
        self._out_cache = {}
        self._specs = None
        self.forward_engine = _core.ForwardEngine(self._forward)

    # ------------------------------------------------------------ helpers
    def _check_inputs(self, flat, layout, name="inputs"):
        """The model's input structure and shapes, then its token ids (shared checks)."""
        if self._specs is None:
            from kerastrace._utils import instrument

            self._specs = (instrument.input_specs(self.model),)
        _core.check_model_inputs(self._specs[0], flat, layout, name, self._names)
        _core.check_token_inputs(self.model, flat, layout, name, self._names)

    def _prepare(self, inputs, float_inputs=True, additional_forward_args=None):
        """Normalize and validate inputs: `(attributed, pass_through, layout)`.

        `attributed` are float32 arrays (the entries the method explains),
        `pass_through` the model inputs passed on unchanged (integer dict
        entries such as keras-hub's `padding_mask`, and
        `additional_forward_args`), `layout` how to call the model with them.
        """
        flat, layout = _core.normalize_inputs(
            inputs, additional_forward_args=additional_forward_args
        )
        self._check_inputs(flat, layout)
        if float_inputs:
            flat, layout = _core.select_float_inputs(
                flat, layout, self._names, type(self).__name__
            )
        _core.check_finite(flat, names=self._names, layout=layout)
        xs, ctx = layout.split(flat)
        return xs, ctx, layout

    def _output_shapes(self, flat, layout):
        key = (tuple((x.shape[1:], x.dtype.str) for x in flat), layout)
        if key not in self._out_cache:
            specs = [_core.spec_for(x) for x in flat]
            self._out_cache[key] = _core.output_info(self._forward, specs, layout)
        return self._out_cache[key]

    def _target(self, target, flat, layout):
        """A `TargetSpec` for `target` given the full flat model inputs."""
        return _core.normalize_target(target, flat[0].shape[0], self._output_shapes(flat, layout))

    def _scores(self, flat, target: _core.TargetSpec, chunk=None, layout=None, where=None):
        return self.forward_engine.scores(flat, target, chunk, layout, where)

    def attribute(self, inputs, target=None, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError


class GradientAttribution(Attribution):
    """Base class of gradient methods; owns the compiled `GradientEngine`.

    The model is called with `training=False`; gradients are float32 also for
    mixed-precision models.
    """

    def __init__(self, model):
        super().__init__(model)
        #: Run the engine's Python body eagerly instead of the compiled graph
        #: (same numbers, slower; for debugging).
        self.run_eagerly = False
        self.engine = _core.GradientEngine(
            lambda xs, ctx, layout: self._forward(layout.merge(xs, ctx), layout), self._names
        )

    # Subclasses implement `_plan(inputs, target=None, **kwargs) -> (Plan, is_tuple)`:
    # validate and prepare the inputs and describe the work as a `_core.Plan`.
    # `attribute` runs the plan once; `NoiseTunnel` runs it on noisy copies.
    def _plan(self, inputs, target=None, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _batch_size(internal_batch_size):
        """Validated `internal_batch_size` (None: chosen from the engine's memory budget)."""
        if internal_batch_size is None:
            return None
        return v.check_positive_int("internal_batch_size", internal_batch_size)

    def _check_delta_request(self, return_convergence_delta):
        """Validate `return_convergence_delta` (the delta needs `multiply_by_inputs=True`)."""
        v.check_bool("return_convergence_delta", return_convergence_delta)
        if return_convergence_delta and not self.multiplies_by_inputs:
            raise ValueError(
                "Received an invalid value for argument `return_convergence_delta`: the "
                "delta needs `multiply_by_inputs=True`. Received: "
                "return_convergence_delta=True"
            )

    def _execute(self, plan, noise=None, squares=False):
        return self.engine.run(plan, noise=noise, squares=squares, eager=self.run_eagerly)

    def compute_convergence_delta(self, attributions, start, end, target, ctx=(), layout=None):
        """`sum(attributions) - (f(end) - f(start))` per example.

        `start`/`end` are the attributed entries; `ctx` and `layout` give the
        pass-through model inputs (none for plain array inputs).
        """
        total = sum(
            np.asarray(a, np.float64).reshape(a.shape[0], -1).sum(axis=1) for a in attributions
        )
        if layout is None:
            layout = _core.Layout(
                "tuple" if len(end) > 1 else "array", tuple(range(len(end))),
                tuple(range(len(end))),
            )
        f_end = self._scores(
            layout.merge(end, ctx), target, layout=layout, where=lambda b: f"example {b} (inputs)"
        )
        f_start = self._scores(
            layout.merge(start, ctx), target, layout=layout,
            where=lambda b: f"example {b} (baselines)",
        )
        diff = f_end.astype(np.float64) - f_start
        return (total - diff).astype(np.float32)
