"""The default token attribution of a text model: gradient x embedding, summed per token.

Used by `kerastrace.tensorboard.AttributionMonitor` when no `attribution_fn`
is given, and by anything else that needs "one score per token" for a model
it knows nothing about.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from kerastrace._utils import instrument


def top_logit(outputs):
    """The largest output of each example (the predicted class's logit)."""
    if isinstance(outputs, dict):
        outputs = next(iter(outputs.values()))
    out = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
    out = tf.reshape(tf.cast(out, tf.float32), (tf.shape(out)[0], -1))
    return tf.reduce_max(out, axis=-1)


# One attribution object (so one compiled function) per model: AttributionMonitor
# calls gradient_x_embedding every epoch. The object holds the model, so it is kept
# on the model itself (past Keras' attribute tracking) and collected with it; a
# cache keyed by the model (even a WeakKeyDictionary) would keep the model alive.
_GXE = "_kerastrace_gradient_x_embedding"


def _cached_method(model, probe_inputs):
    method = getattr(model, _GXE, None)
    if method is not None and getattr(method, "model", None) is model:
        return method
    method = _default_method(model, probe_inputs)
    try:
        object.__setattr__(model, _GXE, method)
    except (AttributeError, TypeError):  # not an object with attributes: no cache
        pass
    return method


def _is_float_sequence(probe_inputs) -> bool:
    if isinstance(probe_inputs, (dict, tuple, list)):
        return False
    dtype = getattr(probe_inputs, "dtype", None)
    dtype = tf.as_dtype(dtype) if dtype is not None else None
    return dtype is not None and dtype.is_floating and len(np.shape(probe_inputs)) == 3


def describe_inputs(inputs) -> str:
    """`int32(2, 8)`, `{'token_ids': int32(2, 8), ...}`: what a structure of arrays holds."""
    if isinstance(inputs, dict):
        return "{" + ", ".join(f"{k!r}: {describe_inputs(x)}" for k, x in inputs.items()) + "}"
    if isinstance(inputs, (tuple, list)):
        return "(" + ", ".join(describe_inputs(x) for x in inputs) + ")"
    shape = tuple(getattr(inputs, "shape", np.shape(inputs)))
    dtype = getattr(inputs, "dtype", None)
    dtype = getattr(dtype, "name", dtype) or np.asarray(inputs).dtype
    return f"{dtype}{shape}"


def _default_method(model, probe_inputs):
    """The attribution behind `gradient_x_embedding`, or a ValueError saying what to pass."""
    from kerastrace.attribution import InputXGradient, LayerGradientXActivation

    emb = instrument.find_token_embedding(model)
    if emb is not None:
        return LayerGradientXActivation(model, emb)
    if _is_float_sequence(probe_inputs):
        return InputXGradient(model)
    name = getattr(model, "name", type(model).__name__)
    exc = ValueError(
        "The default attribution (`gradient_x_embedding`) needs a text model: a "
        "keras.layers.Embedding applied to integer token-id inputs, or float (B, T, D) "
        f"sequence inputs. Model {name!r} has no token embedding and its "
        f"probe inputs are {describe_inputs(probe_inputs)}. Pass `attribution_fn=`, a callable "
        "fn(model, probe_inputs) -> (B, T) scores, e.g. for a ViT the patch-token scores "
        "`lambda m, x: token_scores(LayerGradientXActivation(m, '<path of the layer "
        "returning (B, T, D) patch tokens>').attribute(x, target=0))` (both from "
        "kerastrace.attribution), or pixel attributions reshaped to (B, H * W)."
    )
    exc.kerastrace_check = True  # the message says what to do: callbacks log it without traceback
    raise exc


def gradient_x_embedding(model, probe_inputs, target=None) -> np.ndarray:
    """Default token attribution: gradient x input on the token embedding, summed.

    Returns `(B, T)` scores: `sum_d (d score / d e_td) * e_td` where `e` is
    the output of the model's token embedding (the `keras.layers.Embedding`
    applied to its integer token-id inputs, never a position embedding) and
    `score` the `target` logit (default: the largest output, the predicted
    class). Models without a token embedding get gradient x input on float
    `(B, T, D)` inputs. Computed with
    `kerastrace.attribution.LayerGradientXActivation` (or `InputXGradient`);
    one compiled function per model, kept on the model.

    Args:
        model: A Keras model.
        probe_inputs: What the model is called on: token ids, a keras-hub
            dict (`{"token_ids", "padding_mask", ...}`; only the token
            embedding is attributed), or float `(B, T, D)` sequences.
        target: As `target` of the attribution methods; None for the
            largest output of each example.

    Returns:
        A `(B, T)` float array.

    Raises:
        ValueError: when the model has no token embedding and the inputs are
            not float `(B, T, D)` (e.g. an image model): pass your own
            attribution function to `AttributionMonitor(attribution_fn=...)`.

    Example:

    >>> import keras, numpy as np
    >>> from kerastrace.attribution import gradient_x_embedding
    >>> model = keras.Sequential([keras.Input((5,), dtype="int32"),
    ...                           keras.layers.Embedding(20, 4),
    ...                           keras.layers.GlobalAveragePooling1D(),
    ...                           keras.layers.Dense(2)])
    >>> gradient_x_embedding(model, np.array([[1, 2, 3, 4, 5]])).shape
    (1, 5)
    """
    from kerastrace.attribution import token_scores

    method = _cached_method(model, probe_inputs)
    attr = method.attribute(probe_inputs, target=top_logit if target is None else target)
    return token_scores(np.asarray(attr))
