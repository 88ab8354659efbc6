import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402


def loop_gradients(model, variables, loss_fn, inputs, labels):
    """Oracle: one `tf.GradientTape` per example, in a Python loop, flattened in order."""
    n = len(labels)
    out = []
    for i in range(n):
        x = tf.nest.map_structure(lambda a, i=i: a[i : i + 1], inputs)
        if isinstance(x, tuple):
            x = list(x)
        with tf.GradientTape() as tape:
            pred = model(x, training=False)
            loss = tf.reduce_sum(loss_fn(labels[i : i + 1], pred))
        grads = tape.gradient(loss, [w.value for w in variables])
        out.append(np.concatenate([np.asarray(g, np.float64).ravel() for g in grads]))
    return np.stack(out)


@pytest.fixture
def softmax_model():
    """A Dense softmax classifier (3 features -> 3 classes), compiled with plain SCCE."""
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(3, activation="softmax", name="head")]
    )
    model.compile(keras.optimizers.Adam(0.1), keras.losses.SparseCategoricalCrossentropy())
    return model
