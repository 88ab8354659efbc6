"""The one way kerastrace looks inside a Keras model (private).

Every analysis that needs a layer's activations, its attention weights or a
replaced value goes through this module:

- **One walker** (`walk`) over nested models and layers, with **one path
  scheme**: layer names joined by `/`, without the outer model's name
  (`"block_0/attention"`, `"gpt2_backbone/transformer_layer_1/self_attention"`).
  A layer shared by several parents appears once, at the first path found
  (depth first, in tracking order). `InputLayer`s are skipped.
- **One call naming scheme** (`site_name`): the first call of a layer in a
  forward pass is named by its path, later calls get `":1"`, `":2"`, ... (a
  tied embedding used as the output head is `"token_embedding:1"`).
- **One interceptor** (`intercept`): during a `with` block, one chosen call
  of a layer (by default call 0, the first one, which for an embedding is
  the call on the model's token ids) runs a replacement function; the others
  run unchanged. The replacement is an attribute of the layer *instance*,
  removed when the block ends, also on error. Used while a `tf.function` is
  traced, so the compiled graph keeps the replaced computation and nothing
  is patched at run time.
- **One attention seam** (`attention_seams`): attention weights are read
  (and optionally shifted by an additive probe, for gradients with respect
  to them) at the documented override point of each attention family:
  `keras.layers.MultiHeadAttention._compute_attention` (also for keras-hub
  layers built on it, such as `CachedMultiHeadAttention`),
  `kerastrace.layers.SelfAttention._compute_attention`, and the
  `_masked_softmax` of keras-hub's own attention layers (Llama, Mistral,
  Qwen, GPT-NeoX, ...).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import weakref
from collections.abc import Callable

import keras
import tensorflow as tf

from kerastrace._utils import tf_compat

# ----------------------------------------------------------------- patching


@contextlib.contextmanager
def patch_method(obj, name: str, make: Callable):
    """Replace `obj.<name>` by `make(current)` on the instance; always restore it.

    The replacement is set with `object.__setattr__` (no Keras tracking) and
    removed on exit, so the object is left exactly as it was (an attribute
    the instance already had is put back). Patches nest.
    """
    had = name in vars(obj)
    previous = vars(obj).get(name)
    current = getattr(obj, name)
    object.__setattr__(obj, name, make(current))
    try:
        yield
    finally:
        if had:
            object.__setattr__(obj, name, previous)
        else:
            with contextlib.suppress(AttributeError, KeyError):
                object.__delattr__(obj, name)


# ------------------------------------------------------------------- walker


@dataclasses.dataclass(frozen=True)
class Node:
    """One layer of a model, at its path."""

    path: str
    layer: keras.layers.Layer
    depth: int
    parent: str | None  # the parent's path; "" is the root model


def sublayers(layer) -> list:
    """Direct sublayers of `layer` (model layers first), without `InputLayer`s."""
    kids = []
    if isinstance(layer, keras.Model):
        with contextlib.suppress(Exception):
            kids = list(layer.layers)
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is not None:
        for sub in flatten(include_self=False, recursive=False):
            if all(sub is not k for k in kids):
                kids.append(sub)
    return [k for k in kids if not isinstance(k, keras.layers.InputLayer)]


def walk(model) -> list[Node]:
    """Every layer inside `model` once, depth first, with its path.

    The root model itself is not listed (its path would be `""`).
    """
    nodes: list[Node] = []
    seen = {id(model)}

    def visit(layer, prefix, depth, parent):
        for child in sublayers(layer):
            if id(child) in seen:
                continue
            seen.add(id(child))
            path = f"{prefix}{child.name}"
            nodes.append(Node(path, child, depth, parent))
            visit(child, path + "/", depth + 1, path)

    visit(model, "", 1, "")
    return nodes


def paths(model) -> dict[int, str]:
    """`{id(layer): path}` for every layer of `model`."""
    return {id(n.layer): n.path for n in walk(model)}


def path_of(model, layer) -> str:
    """The path of `layer` inside `model` (`""` for the model itself)."""
    if layer is model:
        return ""
    found = paths(model).get(id(layer))
    if found is None:
        raise ValueError(
            "Received an invalid value for argument `layer`: it is not a layer of the "
            f"model. Received: layer={getattr(layer, 'name', layer)!r}"
        )
    return found


def resolve_layer(model, layer, arg: str = "layer"):
    """`(path, layer)` from a layer object, a path, or a layer name unique in `model`."""
    if isinstance(layer, keras.layers.Layer):
        if not isinstance(model, keras.layers.Layer):
            return getattr(layer, "name", ""), layer
        return path_of(model, layer), layer
    if not isinstance(layer, str):
        raise TypeError(
            f"Received an invalid value for argument `{arg}`, expected a Keras layer of the "
            f"model, its path or its name. Received: {arg}={layer!r}"
        )
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            f"Received an invalid value for argument `{arg}`: a layer name needs a Keras "
            f"model. Received: {arg}={layer!r}"
        )
    nodes = walk(model)
    for n in nodes:
        if n.path == layer:
            return n.path, n.layer
    named = [n for n in nodes if n.layer.name == layer]
    if len(named) == 1:
        return named[0].path, named[0].layer
    if len(named) > 1:
        raise ValueError(
            f"Received an invalid value for argument `{arg}`: several layers are named "
            f"{layer!r}; pass a path instead, one of {[n.path for n in named]}. "
            f"Received: {arg}={layer!r}"
        )
    listing = [n.path for n in nodes]
    more = "" if len(listing) <= 30 else f" ... ({len(listing)} in all)"
    raise ValueError(
        f"Received an invalid value for argument `{arg}`: no layer with that path or name. "
        f"Layer paths: {listing[:30]}{more}. Received: {arg}={layer!r}"
    )


def site_name(path: str, call: int) -> str:
    """The name of call number `call` (0-based) of the layer at `path`."""
    return path if call == 0 else f"{path}:{call}"


# --------------------------------------------------------------- intercept


def first(value):
    """The first element of a tuple/list output (e.g. `TransformerBlock`), else the value."""
    return value[0] if isinstance(value, (tuple, list)) else value


def replace_first(value, new):
    if isinstance(value, (tuple, list)):
        return type(value)([new, *value[1:]])
    return new


class CallState:
    """What an `intercept` saw: how many calls, and whether the chosen one ran."""

    def __init__(self, layer, call):
        self.layer = layer
        self.call = call
        self.count = 0
        self.hits = 0

    def check(self, path: str, arg: str = "layer"):
        """Raise a clear error when the chosen call did not happen."""
        if self.hits:
            return
        if self.count == 0:
            raise ValueError(
                f"Received an invalid value for argument `{arg}`: layer {path!r} is not "
                "called by the model's forward pass."
            )
        raise ValueError(
            f"Received an invalid value for argument `layer_call`: layer {path!r} is called "
            f"{self.count} time(s) per forward pass (calls 0..{self.count - 1}). "
            f"Received: layer_call={self.call}"
        )


@contextlib.contextmanager
def intercept(layer, fn: Callable, call: int | None = 0):
    """Run `fn(original_call, *args, **kwargs)` instead of call number `call` of `layer`.

    Args:
        layer: A Keras layer.
        fn: The replacement; it receives the layer's own `call` and the call's
            arguments and returns what the call should return.
        call: Which call of the layer in the forward pass (0-based); None
            intercepts every call.

    Yields:
        A `CallState` counting the layer's calls inside the block.
    """
    state = CallState(layer, call)

    def make(original):
        def wrapper(*args, **kwargs):
            i = state.count
            state.count += 1
            if call is None or i == call:
                state.hits += 1
                return fn(original, *args, **kwargs)
            return original(*args, **kwargs)

        return wrapper

    with patch_method(layer, "call", make):
        yield state


@contextlib.contextmanager
def capture(layer, call: int | None = 0, what: str = "output"):
    """Record the (first) output or input of call `call` of `layer` in `state.values`."""
    values: list = []

    def fn(original, *args, **kwargs):
        out = original(*args, **kwargs)
        values.append(first(args) if what == "input" else first(out))
        return out

    with intercept(layer, fn, call) as state:
        state.values = values
        yield state


@contextlib.contextmanager
def replace(layer, value, call: int | None = 0, what: str = "output"):
    """Replace the (first) output or input of call `call` of `layer` by `value`.

    `value` is a tensor, or a callable `value(original_value) -> tensor`.
    """

    def new_value(old):
        new = value(old) if callable(value) else value
        return tf.cast(new, old.dtype) if hasattr(old, "dtype") else new

    def fn(original, *args, **kwargs):
        if what == "input":
            args = (new_value(first(args)), *args[1:])
            return original(*args, **kwargs)
        out = original(*args, **kwargs)
        return replace_first(out, new_value(first(out)))

    with intercept(layer, fn, call) as state:
        yield state


# ---------------------------------------------------------------- attention


@dataclasses.dataclass
class AttentionSite:
    """One call of one attention layer in a forward pass.

    Attributes:
        path: The layer's path.
        call: The call number of the layer in the pass.
        kind: `"self"` (queries and keys from one sequence) or `"cross"`.
        family: Which seam read it: `"kerastrace"`, `"keras"` (Keras
            `MultiHeadAttention` and subclasses) or `"keras_hub"`.
        stack: `"self"` for models without cross-attention; otherwise
            `"encoder"` (self-attention in blocks without cross-attention),
            `"decoder"` (self-attention in blocks that also hold a
            cross-attention) or `"cross"`.
        shape: Shape of the weights `(B, H, T_query, T_key)` as traced.
    """

    path: str
    call: int
    kind: str
    family: str
    stack: str = "self"
    shape: tuple = ()

    @property
    def name(self) -> str:
        return site_name(self.path, self.call)

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "call": self.call,
            "kind": self.kind,
            "family": self.family,
            "stack": self.stack,
            "query_length": _dim(self.shape, 2),
            "key_length": _dim(self.shape, 3),
        }


def _dim(shape, i):
    try:
        d = shape[i]
    except (IndexError, TypeError):
        return None
    return None if d is None else int(d)


def _is_kerastrace_attention(layer) -> bool:
    from kerastrace.layers import SelfAttention

    return isinstance(layer, SelfAttention)


def _is_softmax_family(layer) -> bool:
    """keras-hub attention layers that normalise through `_masked_softmax`."""
    cls = type(layer)
    return (
        not isinstance(layer, keras.layers.MultiHeadAttention)
        and callable(getattr(cls, "_masked_softmax", None))
        and callable(getattr(cls, "_compute_attention", None))
    )


def attention_family(layer) -> str | None:
    """Which seam reads `layer`'s attention weights, or None if it is not attention."""
    if _is_kerastrace_attention(layer):
        return "kerastrace"
    if isinstance(layer, keras.layers.MultiHeadAttention):
        return "keras"
    if _is_softmax_family(layer):
        return "keras_hub"
    return None


def attention_layers(model) -> dict:
    """`{path: layer}` of every attention layer inside `model`, depth first."""
    if attention_family(model) is not None:
        return {model.name: model}
    return {n.path: n.layer for n in walk(model) if attention_family(n.layer) is not None}


def _source(t):
    """Follow Cast/Identity ops back to the tensor they copy (graph tensors only)."""
    for _ in range(8):
        op = getattr(t, "op", None)
        if op is None or op.type not in ("Cast", "Identity") or not list(op.inputs):
            return t
        t = op.inputs[0]
    return t


def _same_sequence(a, b) -> bool:
    if a is b:
        return True
    with contextlib.suppress(Exception):
        return _source(a) is _source(b) or (
            getattr(_source(a), "name", None) is not None
            and _source(a).name == _source(b).name
        )
    return False


def _mha_kind(args, kwargs) -> str:
    """`"self"` when a `MultiHeadAttention.call` gets one sequence as query, value and key."""
    query = kwargs.get("query", args[0] if args else None)
    value = kwargs.get("value", args[1] if len(args) > 1 else None)
    key = kwargs.get("key", args[2] if len(args) > 2 else None)
    if value is None or _same_sequence(query, value):
        if key is None or _same_sequence(key, value) or _same_sequence(key, query):
            return "self"
    return "cross"


class _SeamRecorder:
    def __init__(self, hook):
        self.hook = hook
        self.sites: list[AttentionSite] = []
        self.calls: dict[int, int] = {}
        self.kind: dict[int, str] = {}

    def begin(self, layer, path, kind, family, shape):
        call = self.calls.get(id(layer), 0)
        self.calls[id(layer)] = call + 1
        site = AttentionSite(path, call, kind, family, shape=tuple(shape))
        self.sites.append(site)
        return site


def _cast32(t):
    return t if t.dtype == tf.float32 else tf.cast(t, tf.float32)


def _kerastrace_seam(rec, path, layer):
    def make(original):
        def compute(query, key, value, attention_mask=None, training=None):
            context, weights = original(query, key, value, attention_mask, training)
            site = rec.begin(layer, path, "self", "kerastrace", weights.shape)
            probe = rec.hook(site, _cast32(weights))
            if probe is not None:
                context = context + tf.matmul(tf.cast(probe, value.dtype), value)
                weights = weights + tf.cast(probe, weights.dtype)
            return context, weights

        return compute

    return patch_method(layer, "_compute_attention", make)


def _keras_seam(rec, path, layer):
    stack = contextlib.ExitStack()

    def make_call(original):
        def call(*args, **kwargs):
            rec.kind[id(layer)] = _mha_kind(args, kwargs)
            return original(*args, **kwargs)

        return call

    def make_compute(original):
        sig = inspect.signature(original)

        def compute(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            if "return_attention_scores" in sig.parameters:
                bound.arguments["return_attention_scores"] = True
            if getattr(layer, "_flash_attention", False):
                raise ValueError(
                    f"Attention layer {path!r} uses flash attention, which does not expose "
                    "its attention weights. Disable it before building the model "
                    "(`keras.config.disable_flash_attention()` or "
                    "`MultiHeadAttention(..., flash_attention=False)`)."
                )
            output, scores = original(*bound.args, **bound.kwargs)
            if scores is None:
                raise ValueError(
                    f"Attention layer {path!r} did not return its attention weights (a fused "
                    "attention kernel ran); kerastrace cannot read them."
                )
            value = bound.arguments.get("value")
            kind = rec.kind.get(id(layer), "self")
            site = rec.begin(layer, path, kind, "keras", scores.shape)
            probe = rec.hook(site, _cast32(scores))
            if probe is not None:
                equation = layer._combine_equation
                output = output + tf.einsum(equation, tf.cast(probe, value.dtype), value)
                scores = scores + tf.cast(probe, scores.dtype)
            return output, scores

        return compute

    stack.enter_context(patch_method(layer, "call", make_call))
    stack.enter_context(patch_method(layer, "_compute_attention", make_compute))
    return stack


def _softmax_seam(rec, path, layer):
    def make(original):
        def masked_softmax(*args, **kwargs):
            probs = original(*args, **kwargs)
            site = rec.begin(layer, path, "self", "keras_hub", probs.shape)
            probe = rec.hook(site, _cast32(probs))
            if probe is not None:
                probs = probs + tf.cast(probe, probs.dtype)
            return probs

        return masked_softmax

    return patch_method(layer, "_masked_softmax", make)


_SEAMS = {"kerastrace": _kerastrace_seam, "keras": _keras_seam, "keras_hub": _softmax_seam}


def assign_stacks(sites: list[AttentionSite]) -> None:
    """Set `site.stack` (see `AttentionSite`) for the sites of one forward pass."""
    cross_parents = {s.path.rpartition("/")[0] for s in sites if s.kind == "cross"}
    for s in sites:
        if s.kind == "cross":
            s.stack = "cross"
        elif not cross_parents:
            s.stack = "self"
        else:
            s.stack = "decoder" if s.path.rpartition("/")[0] in cross_parents else "encoder"


@contextlib.contextmanager
def attention_seams(layers: dict, hook: Callable):
    """Read (and optionally probe) the weights of `layers` (`{path: layer}`).

    Inside the block, every call of each layer passes its attention weights
    (float32, `(B, H, T_query, T_key)`) to `hook(site, weights)`. The hook
    returns None (observe only) or a probe tensor `P` of the same shape: the
    layer then continues with weights `A + P` (its output uses `A + P`), so
    the gradient with respect to `P` at `P = 0` is the gradient with respect
    to the weights.

    Yields:
        The list of `AttentionSite`s, filled in call order as the model runs
        (stacks assigned when the block ends).
    """
    rec = _SeamRecorder(hook)
    with contextlib.ExitStack() as stack:
        for path, layer in layers.items():
            family = attention_family(layer)
            if family is None:
                raise ValueError(
                    "Received an invalid value for argument `layers`: layer "
                    f"{path!r} ({type(layer).__name__}) is not an attention layer kerastrace "
                    "can read (SelfAttention, keras.layers.MultiHeadAttention or a keras-hub "
                    "attention layer)."
                )
            stack.enter_context(_SEAMS[family](rec, path, layer))
        try:
            yield rec.sites
        finally:
            assign_stacks(rec.sites)


# ----------------------------------------------------------- token embedding

_TOKEN_EMBEDDING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_NON_TOKEN_WORDS = ("position", "pos_", "segment", "type", "patch")


def input_specs(model):
    """A structure of `tf.TensorSpec`s for the model's symbolic inputs, or None."""
    try:
        inputs = model._inputs_struct if hasattr(model, "_inputs_struct") else model.inputs
    except (AttributeError, ValueError):
        return None
    if inputs is None:
        return None
    if isinstance(inputs, (list, tuple)) and len(inputs) == 1:
        inputs = inputs[0]
    try:
        return tf.nest.map_structure(
            lambda t: tf.TensorSpec((None, *tuple(t.shape)[1:]), tf.as_dtype(t.dtype)), inputs
        )
    except (AttributeError, TypeError, ValueError):
        return None


#: The dict entries a keras-hub text model may take, and how token ids fill them.
TOKEN_INPUT_KEYS = ("token_ids", "padding_mask", "segment_ids")


def token_inputs(model, ids, mask=None, segment_ids=None):
    """What `model` is called on for token ids: the ids, or a keras-hub dict.

    keras-hub text models take `{"token_ids", "padding_mask"[, "segment_ids"]}`;
    the dict gets exactly the entries the model declares, in their dtypes
    (`padding_mask` from `mask`, default all True; `segment_ids` default 0).

    Raises:
        ValueError: the model takes a dict with entries token ids cannot fill.
    """
    import numpy as np

    specs = input_specs(model)
    if not isinstance(specs, dict):
        return ids
    ids = np.asarray(ids)
    mask = np.ones(ids.shape, bool) if mask is None else np.asarray(mask, bool)
    seg = np.zeros(ids.shape) if segment_ids is None else np.asarray(segment_ids)
    fill = {"token_ids": ids, "padding_mask": mask, "segment_ids": seg}
    unknown = [k for k in specs if k not in fill]
    if unknown or "token_ids" not in specs:
        raise ValueError(
            "Received an invalid value for argument `model`: it takes a dict of inputs "
            f"{list(specs)}; token ids fill only {list(TOKEN_INPUT_KEYS)} (a model with "
            "other entries, such as an encoder-decoder's `encoder_inputs`, needs its inputs "
            "built by hand)."
        )
    return {k: fill[k].astype(spec.dtype.as_numpy_dtype) for k, spec in specs.items()}


def _embedding_calls(model, specs, candidates):
    """For each candidate Embedding, the shape/dtype of its first call's input (traced)."""
    seen: dict[int, tuple] = {}
    order: list[int] = []

    def make(layer):
        def fn(original, *args, **kwargs):
            x = first(args) if args else kwargs.get("inputs")
            seen[id(layer)] = (tuple(getattr(x, "shape", ())), getattr(x, "dtype", None))
            order.append(id(layer))
            return original(*args, **kwargs)

        return fn

    flat_specs = tf.nest.flatten(specs)

    def body(*flat):
        structured = tf.nest.pack_sequence_as(specs, list(flat))
        with contextlib.ExitStack() as stack:
            for node in candidates:
                stack.enter_context(intercept(node.layer, make(node.layer), call=0))
            model(structured, training=False)
        return tf.constant(0)

    tf_compat.function(body).get_concrete_function(*flat_specs)
    return seen, order


def find_token_embedding(model, specs=None):
    """The `keras.layers.Embedding` that embeds the model's token ids, or None.

    An Embedding qualifies when its first call gets an integer tensor with
    the model's (free) batch axis, i.e. ids that come from the model's
    inputs, not positions made inside the model (a ViT's position embedding,
    `TokenAndPositionEmbedding`'s positions). Among those, a layer named like
    a token embedding wins over segment/type embeddings; otherwise the first
    one called. keras-hub's `ReversibleEmbedding` (tied input/output
    embedding) is an Embedding too.

    Args:
        model: A Keras model.
        specs: Optional structure of `tf.TensorSpec` to trace with when the
            model has no symbolic inputs (a subclassed model).
    """
    if specs is None and model in _TOKEN_EMBEDDING:
        return _TOKEN_EMBEDDING[model]
    candidates = [n for n in walk(model) if isinstance(n.layer, keras.layers.Embedding)]
    if isinstance(model, keras.layers.Embedding):
        return model
    found = None
    if candidates:
        specs = specs if specs is not None else input_specs(model)
        if specs is None:
            named = [
                n for n in candidates
                if not any(w in n.layer.name.lower() for w in _NON_TOKEN_WORDS)
            ]
            found = (named or [None])[0]
            found = found.layer if found is not None else None
        else:
            seen, order = _embedding_calls(model, specs, candidates)
            qualified = []
            for lid in order:
                shape, dtype = seen[lid]
                if dtype is None or not tf.as_dtype(dtype).is_integer or len(shape) < 2:
                    continue
                if shape[0] is not None:  # static batch: positions made in the model
                    continue
                qualified.append(next(n for n in candidates if id(n.layer) == lid))
            tokenish = [n for n in qualified if "token" in n.layer.name.lower()]
            pick = (tokenish or qualified or [None])[0]
            found = pick.layer if pick is not None else None
    with contextlib.suppress(TypeError):
        _TOKEN_EMBEDDING[model] = found
    return found


def has_mean_pooling(model) -> bool:
    """True when the model pools its sequence with `GlobalAveragePooling1D`."""
    if not hasattr(model, "layers") and not hasattr(model, "_flatten_layers"):
        return False
    return any(isinstance(n.layer, keras.layers.GlobalAveragePooling1D) for n in walk(model))


def own_weights(layer, trainable_only: bool = False) -> list:
    """The weights a layer owns itself, not through its sublayers."""
    weights = layer.trainable_weights if trainable_only else layer.weights
    inner = {id(w) for sub in sublayers(layer) for w in sub.weights}
    return [w for w in weights if id(w) not in inner]
