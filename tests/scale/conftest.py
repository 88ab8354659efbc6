import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kerastrace.testing.reference_models import build_text_classifier  # noqa: E402

VOCAB, T = 30, 8


class Counting:
    """Wraps an attribution method and records the batch size of each call."""

    def __init__(self, method):
        self.method = method
        self.model = method.model
        self.has_convergence_delta = getattr(method, "has_convergence_delta", False)
        self.multiplies_by_inputs = getattr(method, "multiplies_by_inputs", True)
        self.calls = []

    def attribute(self, inputs, **kwargs):
        first = next(iter(inputs.values())) if isinstance(inputs, dict) else inputs
        first = first[0] if isinstance(first, tuple) else first
        self.calls.append(int(np.asarray(first).shape[0]))
        return self.method.attribute(inputs, **kwargs)


@pytest.fixture(scope="session")
def dense_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)]
    )


@pytest.fixture(scope="session")
def dense_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(11, 4)).astype("float32")
    y = (np.arange(11) % 3).astype("int32")
    return x, y


@pytest.fixture(scope="session")
def text_model():
    return build_text_classifier(VOCAB, T, dim=16, num_heads=2, ff_dim=16, num_layers=2)


@pytest.fixture(scope="session")
def token_data():
    rng = np.random.default_rng(1)
    lengths = rng.integers(3, T + 1, size=10)
    ids = np.zeros((10, T), "int32")
    for i, n in enumerate(lengths):
        ids[i, 0] = 1
        ids[i, 1:n] = rng.integers(2, VOCAB, size=n - 1)
    y = rng.integers(0, 2, size=10).astype("int32")
    return ids, y
