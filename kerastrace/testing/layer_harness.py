"""A shared harness that checks a Keras layer against the Keras layer contract.

Every kerastrace layer test runs these checks; third-party layers built to
the same contract can reuse them. Each check raises `AssertionError` with a
message that says what differed.

Checks:

- `check_config_round_trip`: `from_config(get_config())` rebuilds an equal
  config and, with the weights copied, the same outputs.
- `check_saved_model_round_trip`: a model containing the layer survives a
  `.keras` save and load with no `custom_objects` and gives identical outputs.
- `check_symbolic_and_eager`: the layer works in the Functional API (every
  output is a `KerasTensor` of the expected shape and dtype) and eagerly,
  with the same shapes.
- `check_training_step`: one `model.fit` step changes the layer's weights and
  gives a finite loss.
- `check_mixed_precision`: under `mixed_float16` / `mixed_bfloat16` the
  weights stay float32, `outputs` take the compute dtype and auxiliary
  outputs keep the dtype the layer promises, and values stay close to float32.
- `check_xla`: a model compiled with `jit_compile=True` predicts what the
  eager model does.

Example:

>>> from kerastrace.layers import SelfAttention
>>> from kerastrace.testing import LayerHarness
>>> harness = LayerHarness(SelfAttention, {"num_heads": 2, "key_dim": 4}, input_shape=(2, 5, 8))
>>> harness.check_config_round_trip()
>>> harness.check_symbolic_and_eager(
...     expected_shapes=[(None, 5, 8), (None, 2, 5, 5)]
... )
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import keras
import numpy as np


def _fail(msg: str):
    raise AssertionError(msg)


def _as_list(x):
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]


class LayerHarness:
    """Run the layer-contract checks for one layer class and configuration.

    Args:
        layer_cls: The layer class under test.
        init_kwargs: Constructor keyword arguments.
        input_shape: Shape of a test input including the batch size, e.g.
            `(2, 5, 8)`.
        input_dtype: dtype of the generated test input.
        aux_dtypes: dtypes the layer promises for its outputs after the first
            one, whatever the dtype policy (e.g. `("float32",)` for attention
            weights). `None` means the compute dtype.
        seed: Seed of the generated inputs.
        atol: Tolerance for comparisons that involve recomputation.
    """

    def __init__(
        self,
        layer_cls,
        init_kwargs: dict,
        input_shape: Sequence[int],
        input_dtype: str = "float32",
        aux_dtypes: Sequence[str | None] | None = ("float32",),
        seed: int = 0,
        atol: float = 1e-6,
    ):
        self.layer_cls = layer_cls
        self.init_kwargs = dict(init_kwargs)
        self.input_shape = tuple(input_shape)
        self.input_dtype = input_dtype
        self.aux_dtypes = tuple(aux_dtypes or ())
        self.seed = seed
        self.atol = atol

    # ----------------------------------------------------------------- helpers
    def make_inputs(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        return rng.normal(size=self.input_shape).astype(self.input_dtype)

    def make_layer(self, **overrides):
        kwargs = {**self.init_kwargs, **overrides}
        return self.layer_cls(**kwargs)

    def make_model(self, layer=None, head: bool = False) -> keras.Model:
        """A functional model `inputs -> layer -> outputs` (plus a Dense head if `head`)."""
        layer = layer or self.make_layer()
        inputs = keras.Input(self.input_shape[1:], dtype=self.input_dtype)
        outputs = _as_list(layer(inputs))
        if head:
            pooled = keras.layers.GlobalAveragePooling1D()(outputs[0])
            logits = keras.layers.Dense(2, dtype="float32")(pooled)
            return keras.Model(inputs, logits)
        return keras.Model(inputs, outputs)

    # ------------------------------------------------------------------ checks
    def check_config_round_trip(self) -> None:
        layer = self.make_layer()
        x = self.make_inputs()
        ref = _as_list(layer(x))
        config = layer.get_config()
        clone = self.layer_cls.from_config(config)
        if clone.get_config() != config:
            _fail(
                f"{self.layer_cls.__name__}.from_config(get_config()) changed the config: "
                f"{config} != {clone.get_config()}"
            )
        clone(x)
        clone.set_weights(layer.get_weights())
        got = _as_list(clone(x))
        for i, (a, b) in enumerate(zip(ref, got)):
            np.testing.assert_allclose(
                np.asarray(a), np.asarray(b), atol=self.atol, err_msg=f"output {i} after from_config"
            )
        # Also through keras.saving's registry (name lookup, no custom_objects).
        serialized = keras.saving.serialize_keras_object(layer)
        revived = keras.saving.deserialize_keras_object(serialized)
        if type(revived) is not self.layer_cls:
            _fail(f"deserialize_keras_object returned {type(revived).__name__}")

    def check_saved_model_round_trip(self, directory: str | None = None) -> None:
        model = self.make_model()
        x = self.make_inputs()
        ref = _as_list(model(x))
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(directory or tmp, "harness_model.keras")
            model.save(path)
            loaded = keras.saving.load_model(path)  # no custom_objects
        got = _as_list(loaded(x))
        if len(got) != len(ref):
            _fail(f"reloaded model has {len(got)} outputs, expected {len(ref)}")
        for i, (a, b) in enumerate(zip(ref, got)):
            np.testing.assert_array_equal(
                np.asarray(a), np.asarray(b), err_msg=f"output {i} after .keras reload"
            )

    def check_symbolic_and_eager(self, expected_shapes: Sequence[tuple]) -> None:
        layer = self.make_layer()
        sym_in = keras.Input(self.input_shape[1:], dtype=self.input_dtype)
        sym_out = _as_list(layer(sym_in))
        if len(sym_out) != len(expected_shapes):
            _fail(f"symbolic call returned {len(sym_out)} outputs, expected {len(expected_shapes)}")
        for i, (t, shape) in enumerate(zip(sym_out, expected_shapes)):
            if not isinstance(t, keras.KerasTensor):
                _fail(f"symbolic output {i} is {type(t).__name__}, not a KerasTensor")
            if tuple(t.shape) != tuple(shape):
                _fail(f"symbolic output {i} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        declared = _as_list(layer.compute_output_shape((None, *self.input_shape[1:])))
        if isinstance(declared[0], int) or declared[0] is None:
            declared = [tuple(declared)]
        for i, (d, shape) in enumerate(zip(declared, expected_shapes)):
            if tuple(d) != tuple(shape):
                _fail(f"compute_output_shape output {i} is {tuple(d)}, expected {tuple(shape)}")
        eager = _as_list(layer(self.make_inputs()))
        batch = self.input_shape[0]
        for i, (t, shape) in enumerate(zip(eager, expected_shapes)):
            want = (batch, *tuple(shape)[1:])
            if tuple(t.shape) != want:
                _fail(f"eager output {i} has shape {tuple(t.shape)}, expected {want}")
            sym_dtype = str(sym_out[i].dtype)
            if keras.backend.standardize_dtype(t.dtype) != sym_dtype:
                _fail(f"eager output {i} dtype {t.dtype} differs from symbolic {sym_dtype}")

    def check_training_step(self, epochs: int = 1) -> None:
        layer = self.make_layer()
        model = self.make_model(layer, head=True)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-2),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        x = self.make_inputs()
        y = (np.arange(len(x)) % 2).astype("int32")
        before = [np.array(w) for w in layer.get_weights()]
        history = model.fit(x, y, epochs=epochs, batch_size=len(x), verbose=0)
        loss = history.history["loss"][-1]
        if not np.isfinite(loss):
            _fail(f"training loss is not finite: {loss}")
        after = layer.get_weights()
        if all(np.array_equal(a, b) for a, b in zip(before, after)):
            _fail("one training step left every weight of the layer unchanged")

    def check_mixed_precision(self, policy: str = "mixed_float16", rtol: float = 5e-2) -> None:
        ref_layer = self.make_layer()
        x = self.make_inputs()
        ref = _as_list(ref_layer(x))
        layer = self.make_layer(dtype=policy)
        out = _as_list(layer(x))
        layer.set_weights(ref_layer.get_weights())
        out = _as_list(layer(x))
        compute = keras.dtype_policies.get(policy).compute_dtype
        for w in layer.weights:
            if w.dtype != "float32":
                _fail(f"weight {w.path} is {w.dtype} under {policy}, expected float32")
        if keras.backend.standardize_dtype(out[0].dtype) != compute:
            _fail(f"outputs are {out[0].dtype} under {policy}, expected {compute}")
        for i, want in enumerate(self.aux_dtypes, start=1):
            want = want or compute
            if keras.backend.standardize_dtype(out[i].dtype) != want:
                _fail(f"output {i} is {out[i].dtype} under {policy}, expected {want}")
        for i, (a, b) in enumerate(zip(ref, out)):
            a = np.asarray(a, dtype="float32")
            b = np.asarray(keras.ops.cast(b, "float32"))
            if not np.all(np.isfinite(b)):
                _fail(f"output {i} has non-finite values under {policy}")
            scale = max(1.0, float(np.abs(a).max()))
            err = float(np.abs(a - b).max()) / scale
            if err > rtol:
                _fail(f"output {i} under {policy} differs from float32 by {err:.3g} (> {rtol})")

    def check_xla(self, atol: float = 1e-5) -> None:
        model = self.make_model()
        x = self.make_inputs()
        eager = _as_list(model(x))
        model.jit_compile = True
        compiled = _as_list(model.predict(x, verbose=0, batch_size=len(x)))
        for i, (a, b) in enumerate(zip(eager, compiled)):
            np.testing.assert_allclose(
                np.asarray(a), np.asarray(b), atol=atol, err_msg=f"output {i} under XLA"
            )
        # And a training step under XLA.
        model = self.make_model(head=True)
        model.compile(
            optimizer="adam",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=True,
        )
        y = (np.arange(len(x)) % 2).astype("int32")
        loss = model.train_on_batch(x, y)
        if not np.all(np.isfinite(loss)):
            _fail(f"XLA training loss is not finite: {loss}")

    def run_all(
        self, expected_shapes: Sequence[tuple], directory: str | None = None, xla: bool = True
    ) -> None:
        """Run every check (mixed precision with both float16 and bfloat16).

        Args:
            expected_shapes: Output shapes with a `None` batch size, as for
                `check_symbolic_and_eager`.
            directory: Where the `.keras` round trip writes its file (e.g.
                pytest's `tmp_path`); a temporary directory when None.
            xla: Whether to run `check_xla` (compiled predict and training
                step). The checks use only `keras` APIs, so they run under
                every Keras backend; under torch `jit_compile=True` means
                `torch.compile`, which is slow to start.
        """
        self.check_config_round_trip()
        self.check_saved_model_round_trip(directory)
        self.check_symbolic_and_eager(expected_shapes)
        self.check_training_step()
        self.check_mixed_precision("mixed_float16")
        self.check_mixed_precision("mixed_bfloat16", rtol=1e-1)
        if xla:
            self.check_xla()
