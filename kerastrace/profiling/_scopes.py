"""Layer tree of a Keras model and the TF name scopes its layers open when traced.

Keras 3 layers open `tf.name_scope(layer.name)` when called on the TensorFlow
backend, and the graph makes every scope unique (`dense` becomes `dense_1`,
`dense_2`, ... one per call). Rather than guessing which suffix belongs to
which layer, `record_scopes` wraps each layer's `call` while the model is
traced and records the exact scope string each call opened, so an op named
`functional_1/block_1/attention_1/MatMul` maps to the layer whose recorded
scope is the longest prefix of its name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import keras
import numpy as np
import tensorflow as tf


@dataclasses.dataclass
class Node:
    """One layer in the ownership tree (a layer appears once, at its first path)."""

    layer: keras.layers.Layer
    path: str
    depth: int
    parent: Node | None
    children: list[Node] = dataclasses.field(default_factory=list)
    scopes: list[str] = dataclasses.field(default_factory=list)
    output_shapes: list = dataclasses.field(default_factory=list)
    output_bytes: int = 0


def _direct_sublayers(layer):
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is not None:
        subs = flatten(include_self=False, recursive=False)
    else:  # pragma: no cover - every Keras 3 layer has it
        subs = list(getattr(layer, "_layers", []))
    return [s for s in subs if not isinstance(s, keras.layers.InputLayer)]


def build_tree(model) -> tuple[Node, list[Node]]:
    """Return the root node and all nodes in depth-first order (each layer once)."""
    root = Node(model, model.name, 0, None)
    nodes = [root]
    seen = {id(model)}

    def visit(node):
        for sub in _direct_sublayers(node.layer):
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            child = Node(sub, f"{node.path}/{sub.name}", node.depth + 1, node)
            node.children.append(child)
            nodes.append(child)
            visit(child)

    visit(root)
    return root, nodes


def _nbytes(t) -> int:
    shape = getattr(t, "shape", None)
    dtype = getattr(t, "dtype", None)
    if shape is None or dtype is None:
        return 0
    dims = [d if d is not None else 0 for d in tuple(shape)]
    return int(np.prod(dims, dtype=np.int64)) * tf.as_dtype(dtype).size


@contextlib.contextmanager
def record_scopes(nodes):
    """Wrap each layer's `call` to record the TF name scope and outputs of every call.

    The wrappers are instance attributes set with `object.__setattr__` (no
    Keras tracking) and are removed on exit, so the model is left unchanged.
    """
    patched = []

    def make_wrapper(node, original):
        @functools.wraps(original)
        def call(*args, **kwargs):
            node.scopes.append(tf.get_current_name_scope())
            outputs = original(*args, **kwargs)
            for t in tf.nest.flatten(outputs):
                if hasattr(t, "shape") and hasattr(t, "dtype"):
                    node.output_bytes += _nbytes(t)
            if len(node.output_shapes) == 0:
                node.output_shapes.append(
                    tf.nest.map_structure(
                        lambda t: tuple(t.shape) if hasattr(t, "shape") else None, outputs
                    )
                )
            return outputs

        return call

    try:
        for node in nodes:
            layer = node.layer
            had_own = "call" in vars(layer)
            original = layer.call
            object.__setattr__(layer, "call", make_wrapper(node, original))
            patched.append((layer, had_own, original))
        yield
    finally:
        for layer, had_own, original in patched:
            if had_own:
                object.__setattr__(layer, "call", original)
            else:
                with contextlib.suppress(AttributeError):
                    object.__delattr__(layer, "call")


class ScopeIndex:
    """Map op names to tree nodes by the longest recorded scope prefix."""

    def __init__(self, nodes):
        self._by_scope = {}
        for node in nodes:
            for scope in node.scopes:
                if scope:
                    # The first layer to open a scope owns it (a layer's `call`
                    # wrapped twice under the same scope keeps the outer node).
                    self._by_scope.setdefault(scope, node)
        self._cache = {}

    def lookup(self, op_name: str) -> Node | None:
        if op_name in self._cache:
            return self._cache[op_name]
        parts = op_name.split("/")
        found = None
        for i in range(len(parts) - 1, 0, -1):
            found = self._by_scope.get("/".join(parts[:i]))
            if found is not None:
                break
        self._cache[op_name] = found
        return found
