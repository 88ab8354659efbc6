"""Caches of compiled functions never keep a model alive.

Each analysis that compiles a function per model caches it so that repeated
calls do not retrace; the cache must die with the model. Each test builds a
model, uses one cached analysis on it, drops every reference and checks that
the model is garbage collected.
"""

import gc
import weakref

import keras
import numpy as np
import pytest

from kerastrace.layers import TransformerBlock

V, T = 30, 6


def _text_model():
    ids = keras.Input((T,), dtype="int32")
    x = keras.layers.Embedding(V, 8, name="embedding")(ids)
    x, _ = TransformerBlock(2, 16, name="block")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(ids, keras.layers.Dense(2, name="head")(x))


def _ids():
    return np.random.default_rng(0).integers(1, V, size=(2, T)).astype("int32")


def _use_convergence_delta(model):
    from kerastrace.attribution import IntegratedGradients, metrics

    x = np.random.default_rng(0).normal(size=(2, 4)).astype("float32")
    attr = IntegratedGradients(model).attribute(x, target=0, n_steps=4)
    delta = metrics.convergence_delta(model, x, attr, target=0)
    assert np.all(np.abs(delta) < 1e-4)


def _use_gradient_x_embedding(model):
    from kerastrace.attribution import gradient_x_embedding

    assert gradient_x_embedding(model, _ids()).shape == (2, T)


def _use_attention_collect(model):
    from kerastrace.attention import collect

    maps = collect(model, _ids())
    assert list(maps) == ["block/attention"]


def _use_token_attributions(model):
    from kerastrace.explain import token_attributions

    scores, _, _ = token_attributions(model, _ids(), method="gradient_x_activation")
    assert scores.shape == (2, T)


def _dense_model():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])


CASES = {
    "metrics.convergence_delta": (_dense_model, _use_convergence_delta),
    "tensorboard.gradient_x_embedding": (_text_model, _use_gradient_x_embedding),
    "attention.collect": (_text_model, _use_attention_collect),
    "explain.token_attributions": (_text_model, _use_token_attributions),
}


def _collected(build, use) -> bool:
    model = build()
    use(model)
    use(model)  # the second call runs from the cache
    ref = weakref.ref(model)
    del model
    gc.collect()
    return ref() is None


@pytest.mark.parametrize("case", list(CASES))
def test_model_is_freed_after_cached_analysis(case):
    build, use = CASES[case]
    assert _collected(build, use), f"{case} keeps the model alive"


def test_the_check_detects_a_leak():
    held = []
    assert not _collected(_dense_model, held.append)  # a strong reference: not freed
