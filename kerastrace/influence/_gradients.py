"""Per-example loss gradients of chosen layers' weights, vectorized in one `tf.function`.

Two engines compute the same `(B, D)` matrix (one flattened gradient per
example, the chosen weights in order):

- `"dense"` (Captum's `TracInCPFast` idea, generalized): for plain
  `keras.layers.Dense` layers the gradient of the kernel is a sum of outer
  products of the layer's input and the gradient of the loss with respect to
  the layer's pre-activation output, so one forward and one backward pass of
  the batch give every example's gradient (`einsum`). The Dense call is
  intercepted (`kerastrace._utils.instrument.intercept`) to keep its
  pre-activation output; every call of the layer counts (a shared layer's
  gradient is the sum over its calls).
- `"vectorized"`: any layers; `tf.vectorized_map` over pairs of examples,
  each step running the model on its two examples and taking each one's
  gradient (see `make_vectorized_fn` for why two).

A Python loop over examples is what both replace (see
`benchmarks/bench_influence.py`).
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import tensorflow as tf

from kerastrace._utils import instrument, tf_compat
from kerastrace._utils import validation as v

METHODS = ("auto", "dense", "vectorized")
#: Largest projection matrix kept in memory (float32 entries).
MAX_PROJECTION_ENTRIES = 1 << 26


# ------------------------------------------------------------------- layers
def default_layer(model):
    """The last layer (in walk order) that owns trainable weights: usually the output head."""
    owners = [n for n in instrument.walk(model) if instrument.own_weights(n.layer, True)]
    if not owners:
        raise ValueError(
            "Received an invalid value for argument `layers`: the model has no layer with "
            "trainable weights, so there is no gradient to compare. Pass `layers=` or use a "
            "model with trainable weights."
        )
    return owners[-1].path, owners[-1].layer


def resolve_layers(model, layers) -> list[tuple[str, keras.layers.Layer]]:
    """`[(path, layer)]` for `layers` (None: the default last layer)."""
    if layers is None:
        return [default_layer(model)]
    if isinstance(layers, (str, keras.layers.Layer)):
        layers = [layers]
    if not isinstance(layers, (list, tuple)) or not layers:
        raise v.invalid("layers", "a layer, a layer path or name, or a non-empty list", layers)
    out, seen = [], set()
    for item in layers:
        path, layer = instrument.resolve_layer(model, item, "layers")
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if not layer.trainable_weights:
            raise ValueError(
                f"Received an invalid value for argument `layers`: layer {path!r} has no "
                f"trainable weights (frozen or weightless). Received: layers={layers!r}"
            )
        out.append((path, layer))
    return out


def layer_variables(chosen) -> list:
    """The trainable weights of the chosen layers, each once, in order."""
    variables, seen = [], set()
    for _, layer in chosen:
        for w in layer.trainable_weights:
            if id(w) not in seen:
                seen.add(id(w))
                variables.append(w)
    return variables


def _is_plain_dense(layer) -> bool:
    if type(layer).call is not keras.layers.Dense.call:
        return False
    if getattr(layer, "quantization_mode", None) is not None or getattr(layer, "lora_enabled", False):
        return False
    expected = [layer.kernel] + ([layer.bias] if layer.bias is not None else [])
    got = layer.trainable_weights
    return len(got) == len(expected) and all(a is b for a, b in zip(got, expected))


def choose_method(chosen, method: str) -> str:
    v.check_one_of("gradient_method", method, METHODS)
    dense = all(_is_plain_dense(layer) for _, layer in chosen)
    if method == "dense" and not dense:
        bad = [p for p, layer in chosen if not _is_plain_dense(layer)]
        raise ValueError(
            "Received an invalid value for argument `gradient_method`: 'dense' needs plain "
            f"keras.layers.Dense layers with trainable kernel and bias; {bad} are not. Use "
            "gradient_method='vectorized' (or 'auto'). Received: gradient_method='dense'"
        )
    if method == "auto":
        return "dense" if dense else "vectorized"
    return method


# --------------------------------------------------------------------- loss
def resolve_loss(model, loss_fn):
    """A `loss(y_true, y_pred) -> (B, ...)` function without batch reduction."""
    if loss_fn is not None:
        if not callable(loss_fn):
            raise v.invalid("loss_fn", "a callable loss_fn(y_true, y_pred) -> (B,)", loss_fn)
        return _unreduced(loss_fn, "loss_fn")
    loss = getattr(model, "loss", None)
    if loss is None:
        raise ValueError(
            "Received an invalid value for argument `loss_fn`: the model is not compiled with "
            "a loss, so there is no training loss to differentiate. Pass loss_fn= (e.g. "
            "keras.losses.SparseCategoricalCrossentropy(from_logits=True)) or compile the "
            "model. Received: loss_fn=None"
        )
    if isinstance(loss, (list, tuple, dict)):
        raise ValueError(
            "Received an invalid value for argument `loss_fn`: the model is compiled with one "
            f"loss per output ({loss!r}); pass one loss_fn(y_true, y_pred) -> (B,) that "
            "combines them. Received: loss_fn=None"
        )
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    return _unreduced(loss, "loss_fn")


def _unreduced(loss, name):
    """A Keras `Loss` object with `reduction=None`; functions are kept as they are."""
    if not isinstance(loss, keras.losses.Loss) or loss.reduction is None:
        return loss
    try:
        return type(loss).from_config({**loss.get_config(), "reduction": None})
    except (TypeError, ValueError, KeyError):
        return loss.call  # Loss.call computes the unreduced per-example values


def per_example_loss(loss_fn, labels, outputs):
    """`(B,)` float32: the loss of each example (trailing axes averaged)."""
    if (
        tf.is_tensor(labels)
        and tf.is_tensor(outputs)
        and labels.dtype.is_floating
        and outputs.dtype.is_floating
    ):
        labels = tf.cast(labels, outputs.dtype)  # as Keras' compiled losses do
    values = tf.convert_to_tensor(loss_fn(labels, outputs))
    if values.shape.rank == 0:
        raise ValueError(
            "Received an invalid value for argument `loss_fn`: it returned one scalar for the "
            "whole batch; TracIn needs one loss per example, shape (B,). Use a Keras loss "
            "with reduction=None, or a function without batch reduction."
        )
    values = tf.cast(values, tf.float32)
    if values.shape.rank > 1:
        values = tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))
    return values


# -------------------------------------------------------------- projection
def projection_matrix(dim: int, projection_dim: int, seed: int) -> np.ndarray:
    """`(dim, projection_dim)` Gaussian matrix scaled by `1/sqrt(projection_dim)`.

    Johnson-Lindenstrauss: dot products of projected vectors are unbiased
    estimates of the original ones. Drawn with a stateless generator, so the
    same seed gives the same matrix on every machine and run.
    """
    if dim * projection_dim > MAX_PROJECTION_ENTRIES:
        raise ValueError(
            "Received an invalid value for argument `projection_dim`: the projection matrix "
            f"would have {dim} x {projection_dim} entries (the chosen layers have {dim} "
            f"weights); at most {MAX_PROJECTION_ENTRIES} are kept in memory. Choose a smaller "
            f"projection_dim or fewer/smaller layers. Received: projection_dim={projection_dim}"
        )
    m = tf.random.stateless_normal((dim, projection_dim), seed=[int(seed), 0x7ACE])
    return (m.numpy() / np.sqrt(projection_dim)).astype(np.float32)


# ---------------------------------------------------------------- engines
def _call_model(model, inputs):
    if isinstance(inputs, tuple):
        inputs = list(inputs)
    return model(inputs, training=False)


def _flat_grads(grads, variables, paths):
    out = []
    for g, w in zip(grads, variables):
        if g is None:
            raise ValueError(
                f"Received an invalid value for argument `layers`: the loss does not depend on "
                f"the weight {w.path!r} (of the chosen layers {paths}), so its gradient is "
                "undefined. Choose layers the model's output depends on."
            )
        out.append(tf.reshape(tf.cast(g, tf.float32), [-1]))
    return tf.concat(out, axis=0)


def _dense_records(layer, records):
    """Replacement of `Dense.call` that keeps `(inputs, pre-activation)` of every call."""

    def fn(original, *args, **kwargs):
        x = args[0] if args else kwargs["inputs"]
        z = keras.ops.matmul(x, layer.kernel)  # what Dense.call computes
        if layer.bias is not None:
            z = z + layer.bias
        records.append((x, z))
        return layer.activation(z) if layer.activation is not None else z

    return fn


def _outer_product_grads(layer, calls, dzs, path, paths):
    """`[kernel (B, in*out), bias (B, out)]` per-example gradients of one Dense layer.

    Summed over the layer's calls; inputs `(B, ..., in)` may have any number of
    position axes (a Dense on a sequence sums over the positions).
    """
    n_in, n_out = layer.kernel.shape
    kernel, bias = None, None
    for (x, _), dz in zip(calls, dzs):
        if dz is None:
            raise ValueError(
                f"Received an invalid value for argument `layers`: the loss does not depend "
                f"on the output of layer {path!r} (chosen: {paths})."
            )
        b = tf.shape(x)[0]
        x3 = tf.reshape(tf.cast(x, tf.float32), [b, -1, n_in])
        d3 = tf.reshape(tf.cast(dz, tf.float32), [b, -1, n_out])
        k = tf.reshape(tf.einsum("bti,btj->bij", x3, d3), [b, -1])
        kernel = k if kernel is None else kernel + k
        if layer.bias is not None:
            s = tf.reduce_sum(d3, axis=1)
            bias = s if bias is None else bias + s
    return [kernel] if bias is None else [kernel, bias]


def make_dense_fn(model, chosen, loss_fn):
    """`fn(inputs, labels) -> (grads (B, D), losses (B,))` with the Dense outer-product trick."""
    paths = [p for p, _ in chosen]

    def compute(inputs, labels):
        records = [[] for _ in chosen]
        with contextlib.ExitStack() as stack:
            states = [
                stack.enter_context(instrument.intercept(layer, _dense_records(layer, rec), None))
                for (_, layer), rec in zip(chosen, records)
            ]
            with tf.GradientTape() as tape:
                losses = per_example_loss(loss_fn, labels, _call_model(model, inputs))
                total = tf.reduce_sum(losses)
        for (path, _), state in zip(chosen, states):
            state.check(path, "layers")
        dzs = iter(tape.gradient(total, [z for rec in records for _, z in rec]))
        parts = []
        for (path, layer), rec in zip(chosen, records):
            parts += _outer_product_grads(layer, rec, [next(dzs) for _ in rec], path, paths)
        return tf.concat(parts, axis=1), losses

    return compute


def _halves(t, pad, half):
    t = tf.concat([t, t[:pad]], axis=0)  # an odd batch repeats its first example
    return t[:half], t[half:]


def make_vectorized_fn(model, chosen, variables, loss_fn):
    """`fn(inputs, labels) -> (grads (B, D), losses (B,))` with `tf.vectorized_map`.

    Each vectorized step runs the model on two examples, one from each half
    of the batch, and takes the gradient of each one's loss. Two, not one:
    `tf.vectorized_map` turns a step's `(1, T, D)` tensors into `(B, 1, T,
    D)`, and TensorFlow 2.21's oneDNN CPU kernel for a batched matmul of
    such a rank-4 tensor with a `(D, E)` matrix crashes the process (a
    segmentation fault in `BatchMatMulV2`, hit by every Dense layer applied
    to a sequence); `(B/2, 2, T, D)` takes another kernel path. Running two
    examples per step also halves the forward passes of running one example
    twice.
    """
    paths = [p for p, _ in chosen]

    def compute(inputs, labels):
        flat_x, flat_y = tf.nest.flatten(inputs), tf.nest.flatten(labels)
        b = tf.shape(flat_x[0])[0]
        pad = b % 2
        half = (b + pad) // 2
        xs = [_halves(t, pad, half) for t in flat_x]
        ys = [_halves(t, pad, half) for t in flat_y]

        def one(args):
            xa, xb, ya, yb = args
            x2 = tf.nest.pack_sequence_as(inputs, [tf.stack(p) for p in zip(xa, xb)])
            y2 = tf.nest.pack_sequence_as(labels, [tf.stack(p) for p in zip(ya, yb)])
            with tf.GradientTape(persistent=True) as tape:
                losses = per_example_loss(loss_fn, y2, _call_model(model, x2))
                first, second = losses[0], losses[1]
            ws = [w.value for w in variables]
            g0 = _flat_grads(tape.gradient(first, ws), variables, paths)
            g1 = _flat_grads(tape.gradient(second, ws), variables, paths)
            return g0, g1, losses

        elems = ([a for a, _ in xs], [b_ for _, b_ in xs], [a for a, _ in ys], [b_ for _, b_ in ys])
        g0, g1, losses = tf.vectorized_map(one, elems, fallback_to_while_loop=True)
        grads = tf.concat([g0, g1], axis=0)[:b]
        return grads, tf.concat([losses[:, 0], losses[:, 1]], axis=0)[:b]

    return compute


class GradientEngine:
    """Compiled per-example gradients (optionally projected) of the chosen layers.

    Args:
        model: The Keras model.
        chosen: `[(path, layer)]` from `resolve_layers`.
        loss_fn: An unreduced loss from `resolve_loss`.
        method: `"dense"` or `"vectorized"` (see `choose_method`).
        projection: Optional `(D, d)` matrix applied to every gradient.
    """

    def __init__(self, model, chosen, loss_fn, method, projection=None):
        self.model = model
        self.chosen = chosen
        self.variables = layer_variables(chosen)
        self.method = method
        self.dim = int(sum(int(np.prod(w.shape)) for w in self.variables))
        self.projection = None if projection is None else tf.constant(projection)
        if method == "dense":
            raw = make_dense_fn(model, chosen, loss_fn)
        else:
            raw = make_vectorized_fn(model, chosen, self.variables, loss_fn)
        proj = self.projection

        def compute(inputs, labels):
            grads, losses = raw(inputs, labels)
            if proj is not None:
                grads = tf.matmul(grads, proj)
            return grads, losses

        self._fn = tf_compat.function(compute, reduce_retracing=True)

    @property
    def out_dim(self) -> int:
        return self.dim if self.projection is None else int(self.projection.shape[1])

    def __call__(self, inputs, labels) -> tuple[np.ndarray, np.ndarray]:
        """`(grads (B, out_dim), losses (B,))` as numpy arrays."""
        x = tf.nest.map_structure(tf.convert_to_tensor, inputs)
        y = tf.nest.map_structure(tf.convert_to_tensor, labels)
        grads, losses = self._fn(x, y)
        return grads.numpy(), losses.numpy()
