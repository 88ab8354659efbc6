"""Collect attention weights from any Keras model without changing it."""

from __future__ import annotations

import contextlib
import weakref

import keras
import numpy as np
import tensorflow as tf

from kerastrace._utils.types import Inputs
from kerastrace.layers import SelfAttention

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _children(layer):
    if isinstance(layer, keras.Model) and hasattr(layer, "layers"):
        kids = list(layer.layers)
    else:
        kids = []
    try:
        for sub in layer._flatten_layers(include_self=False, recursive=False):
            if all(sub is not k for k in kids):
                kids.append(sub)
    except AttributeError:  # pragma: no cover - non-keras objects
        pass
    return kids


def attention_layers(model) -> dict[str, keras.layers.Layer]:
    """Every attention layer inside `model`, by layer path.

    Finds `kerastrace.layers.SelfAttention` (also inside `TransformerBlock`)
    and `keras.layers.MultiHeadAttention` at any depth: in nested models and
    in sublayers of custom layers. Paths join layer names with `/`, without
    the outer model's name, e.g. `"transformer_block/attention"` or
    `"encoder/mha"`.

    Args:
        model: A Keras model or layer.

    Returns:
        An ordered dict `{path: layer}` (depth-first, in layer order).

    Example:

    >>> import keras
    >>> from kerastrace.layers import TransformerBlock
    >>> from kerastrace.attention import attention_layers
    >>> inp = keras.Input((4, 8))
    >>> out, _ = TransformerBlock(2, 16, name="block")(inp)
    >>> list(attention_layers(keras.Model(inp, out)))
    ['block/attention']
    """
    found: dict[str, keras.layers.Layer] = {}
    seen: set[int] = set()

    def visit(layer, prefix):
        for child in _children(layer):
            if id(child) in seen:
                continue
            seen.add(id(child))
            path = f"{prefix}{child.name}"
            if isinstance(child, (SelfAttention, keras.layers.MultiHeadAttention)):
                found[path] = child
            visit(child, path + "/")

    if isinstance(model, (SelfAttention, keras.layers.MultiHeadAttention)):
        found[model.name] = model
        return found
    visit(model, "")
    return found


class _Recorder:
    """Patches the `call` of attention layers (instance attributes) and records weights."""

    def __init__(self, layers: dict[str, keras.layers.Layer]):
        self.layers = layers
        self.records: dict[str, object] = {}

    def _store(self, path, weights):
        key = path
        i = 1
        while key in self.records:
            key = f"{path}:{i}"
            i += 1
        self.records[key] = weights

    def _wrap(self, path, layer):
        orig = layer.call
        if isinstance(layer, keras.layers.MultiHeadAttention):

            def call(*args, **kwargs):
                want = bool(kwargs.get("return_attention_scores", False))
                kwargs["return_attention_scores"] = True
                outputs, scores = orig(*args, **kwargs)
                self._store(path, scores)
                return (outputs, scores) if want else outputs

        else:

            def call(*args, **kwargs):
                flag = layer.return_attention_scores
                object.__setattr__(layer, "return_attention_scores", True)
                try:
                    outputs, weights = orig(*args, **kwargs)
                finally:
                    object.__setattr__(layer, "return_attention_scores", flag)
                self._store(path, weights)
                return (outputs, weights) if flag else outputs

        return call

    @contextlib.contextmanager
    def patched(self):
        had = {}
        try:
            for path, layer in self.layers.items():
                had[path] = "call" in layer.__dict__
                prev = layer.__dict__.get("call")
                object.__setattr__(layer, "call", self._wrap(path, layer))
                had[path] = (had[path], prev)
            yield self
        finally:
            for path, (was_set, prev) in had.items():
                layer = self.layers[path]
                if was_set:
                    object.__setattr__(layer, "call", prev)
                else:
                    with contextlib.suppress(AttributeError):
                        object.__delattr__(layer, "call")


def _layers_or_raise(model):
    layers = attention_layers(model)
    if not layers:
        raise ValueError(
            "Received an invalid value for argument `model`, expected a model with at "
            "least one attention layer (kerastrace.layers.SelfAttention, TransformerBlock "
            "or keras.layers.MultiHeadAttention). Received: "
            f"model={getattr(model, 'name', type(model).__name__)!r} with no attention layer"
        )
    return layers


def _run(model, layers, inputs, training):
    rec = _Recorder(layers)
    with rec.patched():
        model(inputs, training=training)
    return {k: tf.cast(v, tf.float32) for k, v in rec.records.items()}


def _compiled(model, layers):
    entry = _CACHE.get(model)
    names = tuple(layers)
    if entry is not None and entry[0] == names:
        return entry[1]

    def fn(inputs):
        return _run(model, layers, inputs, False)

    compiled = tf.function(fn, reduce_retracing=True)
    _CACHE[model] = (names, compiled)
    return compiled


def collect(
    model,
    inputs: Inputs,
    *,
    layers: list[str] | None = None,
    compiled: bool = True,
    training: bool = False,
) -> dict[str, np.ndarray]:
    """Attention weights of every attention layer of `model` for `inputs`.

    Runs one forward pass of `model` in which each attention layer's `call` is
    temporarily wrapped (an instance attribute, removed afterwards) so that
    its weights are recorded: `kerastrace.layers.SelfAttention` (also inside
    `TransformerBlock`) returns them already, and `keras.layers.MultiHeadAttention`
    is called with `return_attention_scores=True` and the scores are stripped
    from what its caller sees. The model, its outputs and its weights are not
    changed. Works for functional, sequential and subclassed models, nested
    models and attention layers inside custom layers.

    With `compiled=True` (default) the instrumented forward pass is traced once
    into a `tf.function` that is cached per model (weakly) and only returns
    the weights, so repeated calls cost about one compiled forward pass and do
    not retrace when only the input values change.

    Args:
        model: A Keras model (or layer) containing attention layers.
        inputs: What `model` is called on (array, tensor or a structure of them).
        layers: Optional list of layer paths (keys of `attention_layers(model)`)
            to keep. Defaults to all.
        compiled: Use the cached `tf.function` (True) or an eager call (False).
        training: Passed to the model call (dropout on the weights is applied
            after they are recorded, so it only matters for earlier layers).

    Returns:
        A dict `{layer_path: weights}` in call order, with float32 numpy arrays
        of shape `(B, num_heads, query_len, key_len)`. A layer called several
        times in one pass gets keys `path`, `path:1`, ...

    Raises:
        ValueError: if `model` has no attention layer, or `layers` names an
            unknown path.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> from kerastrace.attention import collect
    >>> inp = keras.Input((5, 8))
    >>> out = keras.layers.MultiHeadAttention(2, 4, name="mha")(inp, inp)
    >>> model = keras.Model(inp, out)
    >>> x = np.random.default_rng(0).normal(size=(3, 5, 8)).astype("float32")
    >>> weights = collect(model, x)
    >>> {k: v.shape for k, v in weights.items()}
    {'mha': (3, 2, 5, 5)}
    >>> bool(np.allclose(weights["mha"].sum(-1), 1.0, atol=1e-5))
    True

    References:
        - [Abnar & Zuidema, 2020](https://arxiv.org/abs/2005.00928) use these
          weights for rollout and flow, see `attention_rollout`.
    """
    all_layers = _layers_or_raise(model)
    if layers is not None:
        unknown = [p for p in layers if p not in all_layers]
        if unknown:
            raise ValueError(
                "Received an invalid value for argument `layers`, expected paths among "
                f"{list(all_layers)}. Received: layers={list(layers)!r}"
            )
    if compiled and not training:
        out = _compiled(model, all_layers)(inputs)
    else:
        out = _run(model, all_layers, inputs, training)
    result = {}
    for key, value in out.items():
        base = key.split(":")[0]
        if layers is None or base in layers:
            result[key] = np.asarray(value, dtype=np.float32)
    return result
