"""Input/target normalization and the batched, compiled gradient engine.

Private module. Everything that runs many passes (integration steps, noise
samples, random baselines) goes through `GradientEngine`: the passes are laid
out as *rows* ``(segment g, point m)``, where a segment is one (possibly
noisy or repeated) example and a point is one position on the straight path
``base_g + alpha[g, m] * (x_g - base_g)``. The rows are processed inside one
`tf.function` by a `tf.while_loop` over fixed-size chunks of
`internal_batch_size` rows (the last chunk is padded, so every chunk has the
same shape), and the weighted gradients are summed per segment. The scaled
inputs are built inside the loop, so memory grows with the chunk size, not
with the number of steps. The function has an `input_signature` with a free
batch axis and takes the chunk size as a scalar tensor: new values, targets,
batch sizes, step counts or chunk sizes do not retrace.
"""

from __future__ import annotations

import numbers
import weakref

import keras
import numpy as np
import tensorflow as tf

F32 = tf.float32
#: Chunks the while loop may run concurrently: overlapping two small chunks uses
#: the CPU better; peak memory stays bounded by this many chunks.
PARALLEL_CHUNKS = 2


# ----------------------------------------------------------------- inputs
def normalize_inputs(inputs, name: str = "inputs"):
    """Return `(tuple_of_numpy_arrays, was_tuple)`."""
    if isinstance(inputs, dict):
        raise TypeError(
            f"Received an invalid value for argument `{name}`, expected an array, a "
            "tensor or a tuple of them. Dict inputs are not supported; pass a tuple in "
            f"the model's input order. Received: {name} of type dict"
        )
    is_tuple = isinstance(inputs, tuple) or (
        isinstance(inputs, list) and len(inputs) > 0 and all(hasattr(t, "shape") for t in inputs)
    )
    items = tuple(inputs) if is_tuple else (inputs,)
    if not items:
        raise ValueError(f"Received an invalid value for argument `{name}`: it is empty.")
    out = []
    for t in items:
        arr = np.asarray(t.numpy() if hasattr(t, "numpy") else t)
        if arr.ndim == 0:
            raise ValueError(
                f"Received an invalid value for argument `{name}`, expected arrays with a "
                f"leading batch axis. Received: {name} with shape ()"
            )
        out.append(arr)
    batch = {a.shape[0] for a in out}
    if len(batch) != 1:
        raise ValueError(
            f"Received an invalid value for argument `{name}`: all inputs must have the "
            f"same batch size. Received: batch sizes {[a.shape[0] for a in out]}"
        )
    return tuple(out), is_tuple


def restore(values, is_tuple):
    return tuple(values) if is_tuple else values[0]


def input_label(i: int, n: int, names=None) -> str:
    if names and i < len(names) and names[i]:
        return f"input {i} ({names[i]!r})"
    return f"input {i}" if n > 1 else "the input"


def check_float_inputs(xs, names=None, method="this gradient method"):
    """Cast floating inputs to float32; reject integer/bool inputs with a pointer."""
    out = []
    for i, x in enumerate(xs):
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(
                f"{input_label(i, len(xs), names)} has dtype {x.dtype}: {method} needs "
                "floating-point inputs, because gradients with respect to integer inputs "
                "(e.g. token ids) do not exist. To explain a token-id model, attribute to "
                "its embedding layer with `LayerIntegratedGradients(model, embedding_layer)` "
                "(or `LayerGradientXActivation`)."
            )
        out.append(x.astype(np.float32, copy=False))
    return tuple(out)


def check_finite(xs, name="inputs", names=None):
    for i, x in enumerate(xs):
        if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
            bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
            raise ValueError(
                f"Received an invalid value for argument `{name}`: "
                f"{input_label(i, len(xs), names)} contains {bad} NaN or inf value(s). "
                "Attributions of non-finite inputs are undefined."
            )


def broadcast_baselines(baselines, xs, name="baselines", dtype=np.float32):
    """Broadcast `baselines` (None, scalar, array or tuple) to each input's shape."""
    if baselines is None:
        baselines = tuple(0.0 for _ in xs)
    elif not isinstance(baselines, (tuple, list)) or (
        len(xs) == 1 and not (isinstance(baselines, tuple) and len(baselines) == 1)
    ):
        baselines = (baselines,)
    if len(baselines) != len(xs):
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected one baseline per "
            f"input ({len(xs)}). Received: {len(baselines)} baselines"
        )
    out = []
    for i, (b, x) in enumerate(zip(baselines, xs)):
        arr = np.asarray(b.numpy() if hasattr(b, "numpy") else b)
        try:
            arr = np.broadcast_to(arr, x.shape)
        except ValueError:
            raise ValueError(
                f"Received an invalid value for argument `{name}`: the baseline for "
                f"{input_label(i, len(xs))} cannot be broadcast to the input shape "
                f"{x.shape}. Use a scalar, an array of the per-example shape {x.shape[1:]} "
                f"or of the full shape. Received: {name} with shape {arr.shape}"
            ) from None
        arr = np.array(arr, dtype=dtype if dtype is not None else x.dtype)
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            raise ValueError(
                f"Received an invalid value for argument `{name}`: it contains NaN or inf."
            )
        out.append(arr)
    return tuple(out)


# ---------------------------------------------------------------- forward
def model_input_names(model):
    try:
        return [getattr(t, "name", None) for t in model.inputs]
    except Exception:  # noqa: BLE001 - not a functional model
        return None


def make_forward(model):
    """`forward(tuple_of_tensors) -> outputs` calling the model with `training=False`."""
    if isinstance(model, keras.layers.Layer):

        def forward(xs):
            return model(xs[0] if len(xs) == 1 else list(xs), training=False)

    elif callable(model):

        def forward(xs):
            return model(*xs)

    else:
        raise TypeError(
            "Received an invalid value for argument `model`, expected a Keras model or a "
            f"callable. Received: model of type {type(model).__name__}"
        )
    return forward


def _flat_outputs(outputs):
    if isinstance(outputs, dict):
        return list(outputs.values())
    if isinstance(outputs, (list, tuple)):
        return list(outputs)
    return [outputs]


def select_scores(outputs, target, target_fn):
    """Reduce model outputs to a float32 `(N,)` score per row."""
    if target_fn is not None:
        score = target_fn(outputs)
        score = tf.cast(tf.convert_to_tensor(score), F32)
        if score.shape.rank != 1:
            score = tf.reshape(score, [tf.shape(score)[0], -1])
            if score.shape[-1] != 1:
                raise ValueError(
                    "Received an invalid value for argument `target`: a callable target must "
                    f"return one score per example, shape (B,). Received shape {score.shape}"
                )
            score = score[:, 0]
        return score
    out = _flat_outputs(outputs)[0]
    out = tf.cast(out, F32)
    out = tf.reshape(out, [tf.shape(out)[0], -1])
    return tf.gather(out, target, axis=1, batch_dims=1)


class TargetSpec:
    """A normalized target: per-example indices or a callable."""

    def __init__(self, indices, fn=None):
        self.indices = indices  # int32 numpy (B,)
        self.fn = fn

    def repeat(self, n):
        return TargetSpec(np.repeat(self.indices, n), self.fn)

    def tile_rows(self, idx):
        return TargetSpec(self.indices[idx], self.fn)


def output_info(model_forward, specs):
    """Trace `forward` symbolically (no execution) and return output shapes."""
    fn = tf.function(lambda *xs: model_forward(tuple(xs)))
    outs = fn.get_concrete_function(*specs).structured_outputs
    return [tuple(o.shape) for o in _flat_outputs(outs)]


def normalize_target(target, batch: int, out_shapes) -> TargetSpec:
    if callable(target):
        return TargetSpec(np.zeros(batch, np.int32), target)
    if len(out_shapes) > 1:
        raise ValueError(
            f"Received an invalid value for argument `target`: the model has "
            f"{len(out_shapes)} outputs, so pass `target` as a callable "
            "`target(outputs) -> (B,)` that picks the score to explain. "
            f"Received: target={target!r}"
        )
    per = out_shapes[0][1:]
    n = int(np.prod([d for d in per])) if all(d is not None for d in per) else None
    if target is None:
        if n != 1:
            raise ValueError(
                "Received an invalid value for argument `target`: an explicit target is "
                f"required because the model output has {n if n is not None else 'several'} "
                f"elements per example (output shape {out_shapes[0]}). Pass an int, one "
                "int per example, or a callable. Received: target=None"
            )
        return TargetSpec(np.zeros(batch, np.int32))
    arr = np.asarray(target.numpy() if hasattr(target, "numpy") else target)
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.integer)
        or (arr.ndim == 0 and isinstance(target, numbers.Integral))
    ):
        raise ValueError(
            "Received an invalid value for argument `target`, expected an int, one int per "
            f"example or a callable. Received: target={target!r}"
        )
    if arr.ndim == 0:
        arr = np.full(batch, int(arr))
    elif arr.shape != (batch,):
        raise ValueError(
            "Received an invalid value for argument `target`: per-example targets must have "
            f"shape ({batch},). Received: target with shape {arr.shape}"
        )
    if n is not None and (arr.min() < 0 or arr.max() >= n):
        raise ValueError(
            "Received an invalid value for argument `target`: out of range for a model "
            f"output with {n} elements per example (valid: 0..{n - 1}). "
            f"Received: target={target!r}"
        )
    return TargetSpec(arr.astype(np.int32))


_CONCRETE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _concrete(fn):
    """The single concrete function of a `tf.function` that has an input signature.

    Calling it directly skips the polymorphic function's argument binding,
    about 1 ms per call for the nested argument tuples here, which is 10% of
    a small model's whole attribution.
    """
    cf = _CONCRETE.get(fn)
    if cf is None:
        cf = _CONCRETE[fn] = fn.get_concrete_function()
    return cf


def spec_for(arr):
    return tf.TensorSpec((None, *arr.shape[1:]), tf.as_dtype(arr.dtype))


# ----------------------------------------------------------------- engine
class GradientEngine:
    """Compiled, chunked path-gradient engine (see module docstring).

    Args:
        forward: `forward(diff_inputs, context_inputs) -> outputs`; the
            gradients are taken with respect to `diff_inputs` (float32).
        names: optional labels of the differentiable inputs for errors.
    """

    def __init__(self, forward, names=None):
        self.forward = forward
        self.names = names
        self.trace_count = 0
        self._fns = {}

    def _get(self, xs, ctx, target_fn):
        key = (
            tuple((a.shape[1:], a.dtype.str) for a in xs),
            tuple((a.shape[1:], a.dtype.str) for a in ctx),
            id(target_fn) if target_fn is not None else None,
        )
        fn = self._fns.get(key)
        if fn is not None:
            return fn
        n_x = len(xs)
        engine = self

        def body(xs_t, bases_t, ctx_t, alphas, weights, target, chunk):
            engine.trace_count += 1
            g_count = tf.shape(alphas)[0]
            m_count = tf.shape(alphas)[1]
            rows_total = g_count * m_count
            n_chunks = (rows_total + chunk - 1) // chunk

            def step(i, *acc):
                rows = i * chunk + tf.range(chunk)
                valid = tf.cast(rows < rows_total, F32)
                rows = tf.minimum(rows, rows_total - 1)
                g = rows // m_count
                m = rows % m_count
                idx = tf.stack([g, m], axis=1)
                a = tf.gather_nd(alphas, idx)
                w = tf.gather_nd(weights, idx) * valid
                scaled = []
                for x, b in zip(xs_t, bases_t):
                    shape = tf.concat([[chunk], tf.ones([tf.rank(x) - 1], tf.int32)], 0)
                    xg, bg = tf.gather(x, g), tf.gather(b, g)
                    scaled.append(bg + tf.reshape(a, shape) * (xg - bg))
                context = tuple(tf.gather(c, g) for c in ctx_t)
                with tf.GradientTape() as tape:
                    tape.watch(scaled)
                    outputs = engine.forward(tuple(scaled), context)
                    score = select_scores(outputs, tf.gather(target, g), target_fn)
                grads = tape.gradient(score, scaled)
                new = []
                for j, (gr, acc_j) in enumerate(zip(grads, acc)):
                    if gr is None:
                        raise ValueError(
                            f"The model output does not depend on "
                            f"{input_label(j, n_x, engine.names)}: its gradient is None "
                            "(no path from it to the target). Remove it from the explained "
                            "inputs, or check that the model uses it."
                        )
                    if isinstance(gr, tf.IndexedSlices):
                        gr = tf.convert_to_tensor(gr)
                    shape = tf.concat([[chunk], tf.ones([tf.rank(gr) - 1], tf.int32)], 0)
                    contrib = tf.cast(gr, F32) * tf.reshape(w, shape)
                    new.append(acc_j + tf.math.unsorted_segment_sum(contrib, g, g_count))
                return (i + 1, *new)

            acc0 = tuple(tf.zeros_like(x) for x in xs_t)
            result = tf.while_loop(
                lambda i, *_: i < n_chunks, step, (tf.constant(0), *acc0), parallel_iterations=PARALLEL_CHUNKS
            )
            return result[1:]

        signature = (
            tuple(spec_for(a) for a in xs),
            tuple(spec_for(a) for a in xs),
            tuple(spec_for(a) for a in ctx),
            tf.TensorSpec((None, None), F32),
            tf.TensorSpec((None, None), F32),
            tf.TensorSpec((None,), tf.int32),
            tf.TensorSpec((), tf.int32),
        )
        fn = tf.function(body, input_signature=signature)
        self._fns[key] = fn
        return fn

    def run(self, xs, bases, alphas, weights, target: TargetSpec, chunk, ctx=(), eager=False):
        """Return `sum_m weights[g, m] * grad(bases_g + alphas[g, m] (xs_g - bases_g))`.

        Args:
            xs, bases: tuples of float32 arrays of shape `(G, ...)`.
            alphas, weights: `(G, M)` arrays.
            target: a `TargetSpec` with `(G,)` indices.
            chunk: rows per model call.
            ctx: tuple of arrays `(G, ...)` passed to the forward unchanged.
            eager: run the same body eagerly (for testing).
        """
        xs = tuple(np.asarray(x, np.float32) for x in xs)
        bases = tuple(np.asarray(b, np.float32) for b in bases)
        ctx = tuple(np.asarray(c) for c in ctx)
        fn = self._get(xs, ctx, target.fn)
        args = (
            xs,
            bases,
            ctx,
            np.asarray(alphas, np.float32),
            np.asarray(weights, np.float32),
            np.asarray(target.indices, np.int32),
            np.int32(chunk),
        )
        tensors = tf.nest.map_structure(tf.convert_to_tensor, args)
        if eager:
            out = fn.python_function(*tensors)
        else:
            out = _concrete(fn)(*tensors)
        return tuple(o.numpy() for o in out)


class ForwardEngine:
    """Compiled, chunked forward pass returning the target score per row."""

    def __init__(self, forward):
        self.forward = forward
        self.trace_count = 0
        self._fns = {}

    def _get(self, chunk, xs, target_fn):
        key = (chunk, tuple((a.shape[1:], a.dtype.str) for a in xs), id(target_fn))
        fn = self._fns.get(key)
        if fn is not None:
            return fn
        engine = self

        def body(xs_t, target):
            engine.trace_count += 1
            n = tf.shape(target)[0]
            n_chunks = (n + chunk - 1) // chunk

            def step(i, ta):
                rows = tf.minimum(i * chunk + tf.range(chunk), n - 1)
                outputs = engine.forward(tuple(tf.gather(x, rows) for x in xs_t))
                score = select_scores(outputs, tf.gather(target, rows), target_fn)
                return i + 1, ta.write(i, score)

            ta = tf.TensorArray(F32, size=n_chunks, element_shape=(chunk,))
            _, ta = tf.while_loop(lambda i, _: i < n_chunks, step, (tf.constant(0), ta))
            return ta.concat()[:n]

        signature = (tuple(spec_for(a) for a in xs), tf.TensorSpec((None,), tf.int32))
        fn = tf.function(body, input_signature=signature)
        self._fns[key] = fn
        return fn

    def scores(self, xs, target: TargetSpec, chunk=None):
        xs = tuple(np.asarray(x) for x in xs)
        n = xs[0].shape[0]
        chunk = int(chunk or max(1, min(n, 256)))
        fn = self._get(chunk, xs, target.fn)
        args = tf.nest.map_structure(
            tf.convert_to_tensor, (xs, np.asarray(target.indices, np.int32))
        )
        return _concrete(fn)(*args).numpy()
