import keras
import numpy as np
import pytest

from kerastrace.layers import TransformerBlock


@pytest.fixture
def tiny_classifier():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(20, 8, mask_zero=True, name="emb")(inp)
    x, _ = TransformerBlock(2, 16, name="block")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(inp, keras.layers.Dense(2, name="head")(x))
    model.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(True))
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 20, size=(32, 6)).astype("int32")
    ids[:, 4:] = 0
    y = (ids[:, 0] > 10).astype("int32")
    return model, ids, y
