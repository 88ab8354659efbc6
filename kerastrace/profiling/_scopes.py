"""Layer tree of a Keras model and the TF name scopes its layers open when traced.

The tree is `kerastrace._utils.instrument.walk(model)` (the one walker and
path scheme of the package: paths without the model's name, each layer once)
with the model itself as the root, at path `""`.

Keras 3 layers open `tf.name_scope(layer.name)` when called on the TensorFlow
backend, and the graph makes every scope unique (`dense` becomes `dense_1`,
`dense_2`, ... one per call). Rather than guessing which suffix belongs to
which layer, `record_scopes` intercepts every call of every layer (through
`instrument.intercept`) while the model is traced and records the exact scope
string each call opened, so an op named `functional_1/block_1/attention_1/MatMul`
maps to the layer whose recorded scope is the longest prefix of its name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re

import keras
import numpy as np
import tensorflow as tf

from kerastrace._utils import instrument


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


def build_tree(model) -> tuple[Node, list[Node]]:
    """Return the root node (path `""`) and all nodes in depth-first order."""
    root = Node(model, "", 0, None)
    nodes = [root]
    by_path = {"": root}
    for n in instrument.walk(model):
        parent = by_path[n.parent]
        node = Node(n.layer, n.path, n.depth, parent)
        parent.children.append(node)
        by_path[n.path] = node
        nodes.append(node)
    return root, nodes


def _nbytes(t) -> int:
    shape = getattr(t, "shape", None)
    dtype = getattr(t, "dtype", None)
    if shape is None or dtype is None:
        return 0
    dims = [d if d is not None else 0 for d in tuple(shape)]
    return int(np.prod(dims, dtype=np.int64)) * tf.as_dtype(dtype).size


def _recorder(node):
    def fn(original, *args, **kwargs):
        node.scopes.append(tf.get_current_name_scope())
        outputs = original(*args, **kwargs)
        for t in tf.nest.flatten(outputs):
            node.output_bytes += _nbytes(t)
        if not node.output_shapes:
            node.output_shapes.append(
                tf.nest.map_structure(
                    lambda t: tuple(t.shape) if hasattr(t, "shape") else None, outputs
                )
            )
        return outputs

    return fn


@contextlib.contextmanager
def record_scopes(nodes):
    """Record the TF name scope and outputs of every call of every node's layer.

    Each layer is intercepted with `instrument.intercept(layer, fn, call=None)`,
    which always restores it, so the model is left unchanged.
    """
    with contextlib.ExitStack() as stack:
        for node in nodes:
            stack.enter_context(instrument.intercept(node.layer, _recorder(node), call=None))
        yield


#: The part of a lowered control-flow op's name that TensorFlow inserts before its body name.
_LOWERED = re.compile(r"/(?:body|cond|then|else|branch)/_\d+/")


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
        """The node of the innermost recorded scope holding `op_name`, or None.

        Ops of a lowered `while`/`cond` body are named
        `<loop op>/body/_<k>/<name in the body>`; the name in the body carries
        the scopes of the layers called inside the loop (an RNN's cell), so
        it is looked up first.
        """
        if op_name in self._cache:
            return self._cache[op_name]
        inner = _LOWERED.split(op_name)[-1]
        found = self._longest_prefix(inner) if inner != op_name else None
        if found is None:
            found = self._longest_prefix(op_name)
        self._cache[op_name] = found
        return found

    def _longest_prefix(self, op_name: str) -> Node | None:
        parts = op_name.split("/")
        for i in range(len(parts) - 1, 0, -1):
            found = self._by_scope.get("/".join(parts[:i]))
            if found is not None:
                return found
        return None
