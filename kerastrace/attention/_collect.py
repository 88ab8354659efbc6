"""Collect attention weights from any Keras model without changing it."""

from __future__ import annotations

import weakref

import numpy as np

from kerastrace._utils import instrument, tf_compat
from kerastrace._utils.types import Inputs

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class AttentionMaps(dict):
    """`{site: (B, H, T_query, T_key) float32 array}` in call order, with what each site is.

    A plain dict of numpy arrays (so existing code keeps working) that also
    knows, for every key, the `AttentionSite` it came from: the layer path,
    the call number, whether it is self- or cross-attention and which stack
    it belongs to (`"self"` for encoder-only and decoder-only models;
    `"encoder"`, `"decoder"` and `"cross"` for encoder-decoder models).
    Rollout, flow and the attention-gradient methods use this to refuse
    chaining attention maps that do not share one token axis.

    Attributes:
        sites: `{key: AttentionSite}`.
    """

    def __init__(self, items=(), sites=None):
        super().__init__(items)
        self.sites = dict(sites or {})

    @property
    def stacks(self) -> dict[str, list[str]]:
        """`{stack: [keys]}` in call order."""
        out: dict[str, list[str]] = {}
        for key in self:
            site = self.sites.get(key)
            out.setdefault(site.stack if site is not None else "self", []).append(key)
        return out

    def stack(self, name: str) -> AttentionMaps:
        """The maps of one stack (e.g. `"encoder"`), in call order."""
        stacks = self.stacks
        if name not in stacks:
            raise ValueError(
                f"Received an invalid value for argument `name`, expected one of "
                f"{sorted(stacks)}. Received: name={name!r}"
            )
        keys = stacks[name]
        return AttentionMaps({k: self[k] for k in keys}, {k: self.sites[k] for k in keys
                                                          if k in self.sites})

    def is_causal(self, atol: float = 0.0) -> bool:
        """True when every self-attention map puts no weight on later positions."""
        found = False
        for key, w in self.items():
            site = self.sites.get(key)
            if site is not None and site.kind != "self":
                continue
            if w.shape[-1] != w.shape[-2] or w.shape[-1] < 2:
                return False
            found = True
            if np.abs(np.triu(np.asarray(w), 1)).max() > atol:
                return False
        return found


def attention_layers(model) -> dict:
    """Every attention layer inside `model`, by layer path.

    Finds `kerastrace.layers.SelfAttention` (also inside `TransformerBlock`),
    `keras.layers.MultiHeadAttention` and its subclasses (keras-hub's
    `CachedMultiHeadAttention`, used by its `TransformerEncoder`/`Decoder`,
    BERT and GPT-2) and keras-hub's own attention layers (Llama, Mistral, ...)
    at any depth: in nested models and in sublayers of custom layers. Paths
    join layer names with `/`, without the outer model's name, e.g.
    `"transformer_block/attention"` or `"gpt2_backbone/transformer_layer_0/self_attention"`.

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
    return instrument.attention_layers(model)


def _layers_or_raise(model):
    layers = attention_layers(model)
    if not layers:
        raise ValueError(
            "Received an invalid value for argument `model`, expected a model with at "
            "least one attention layer (kerastrace.layers.SelfAttention, TransformerBlock, "
            "keras.layers.MultiHeadAttention or a keras-hub attention layer). Received: "
            f"model={getattr(model, 'name', type(model).__name__)!r} with no attention layer"
        )
    return layers


def _run(model, layers, inputs, training, holder=None):
    weights: list = []

    def hook(site, w):
        weights.append(w)
        return None

    with instrument.attention_seams(layers, hook) as sites:
        model(inputs, training=training)
    if not sites:
        raise ValueError(
            "Received an invalid value for argument `model`: none of its attention layers "
            f"({list(layers)}) was called in the forward pass."
        )
    if holder is not None:
        holder[:] = list(sites)
    return {s.name: w for s, w in zip(sites, weights)}, list(sites)


def _compiled(model, layers):
    entry = _CACHE.get(model)
    names = tuple(layers)
    if entry is not None and entry[0] == names:
        return entry[1], entry[2]
    ref = weakref.ref(model)  # the cache value must not keep the model alive
    holder: list = []

    def fn(inputs):
        out, _ = _run(ref(), layers_ref(), inputs, False, holder)
        return out

    layer_refs = {p: weakref.ref(layer) for p, layer in layers.items()}

    def layers_ref():
        return {p: r() for p, r in layer_refs.items()}

    compiled = tf_compat.function(fn, reduce_retracing=True)
    _CACHE[model] = (names, compiled, holder)
    return compiled, holder


def collect(
    model,
    inputs: Inputs,
    *,
    layers: list[str] | None = None,
    compiled: bool = True,
    training: bool = False,
) -> AttentionMaps:
    """Attention weights of every attention layer of `model` for `inputs`.

    Runs one forward pass of `model` in which each attention layer's
    documented seam is wrapped (an instance attribute, removed afterwards):
    `keras.layers.MultiHeadAttention._compute_attention` (called with
    `return_attention_scores=True`, the scores stripped from what its caller
    sees), the same method of `kerastrace.layers.SelfAttention`, and the
    `_masked_softmax` of keras-hub's own attention layers. The model, its
    outputs and its weights are not changed. Works for functional,
    sequential and subclassed models, nested models, attention layers inside
    custom layers, and keras-hub models with dict inputs.

    With `compiled=True` (default) the instrumented forward pass is traced once
    into a `tf.function` that is cached per model (weakly) and only returns
    the weights, so repeated calls cost about one compiled forward pass and do
    not retrace when only the input values change.

    Args:
        model: A Keras model (or layer) containing attention layers.
        inputs: What `model` is called on: an array, a tuple/list, or a dict
            (keras-hub: `{"token_ids": ..., "padding_mask": ...}`).
        layers: Optional list of layer paths (keys of `attention_layers(model)`)
            to keep. Defaults to all.
        compiled: Use the cached `tf.function` (True) or an eager call (False).
        training: Passed to the model call (dropout on the weights is applied
            after they are recorded, so it only matters for earlier layers).

    Returns:
        An `AttentionMaps` dict `{site: weights}` in call order, with float32
        numpy arrays of shape `(B, num_heads, query_len, key_len)`. A layer
        called several times in one pass gets keys `path`, `path:1`, ...;
        `.sites` says what each key is (self- or cross-attention, stack).

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
    >>> bool(np.allclose(weights["mha"].sum(-1), 1.0, atol=1e-5)), weights.sites["mha"].kind
    (True, 'self')

    References:
        - [Abnar & Zuidema, 2020](https://arxiv.org/abs/2005.00928) use these
          weights for rollout and flow, see `attention_rollout`.
    """
    all_layers = _layers_or_raise(model)
    if layers is not None:
        if isinstance(layers, str):
            layers = [layers]
        unknown = [p for p in layers if p not in all_layers]
        if unknown:
            raise ValueError(
                "Received an invalid value for argument `layers`, expected paths among "
                f"{list(all_layers)}. Received: layers={list(layers)!r}"
            )
    if compiled and not training:
        fn, holder = _compiled(model, all_layers)
        out = fn(inputs)
        sites = {s.name: s for s in holder}
    else:
        out, site_list = _run(model, all_layers, inputs, training)
        sites = {s.name: s for s in site_list}
    result = AttentionMaps()
    for key, value in out.items():
        site = sites.get(key)
        base = site.path if site is not None else key.split(":")[0]
        if layers is None or base in layers:
            result[key] = np.asarray(value, dtype=np.float32)
            if site is not None:
                result.sites[key] = site
    return result
