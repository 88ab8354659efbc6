"""Private helpers that look inside Keras models."""

from __future__ import annotations

import keras


def find_layer(model, cls):
    """The first layer of type `cls` inside `model`, breadth first, or None.

    Looks through nested models and layers' own sublayers (e.g. the
    `token_embedding` of a `TokenAndPositionEmbedding`).
    """
    stack, seen = [model], set()
    while stack:
        layer = stack.pop(0)
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, cls):
            return layer
        try:
            stack.extend(layer._flatten_layers(include_self=False, recursive=False))
        except AttributeError:
            pass
    return None


def find_token_embedding(model):
    """The first `keras.layers.Embedding` inside `model`, or None."""
    return find_layer(model, keras.layers.Embedding)
