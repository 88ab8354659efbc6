"""Recording checkpoints and learning rates; finding them; refusing bad ones with clear errors."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastrace.influence import CheckpointRecorder, TracIn, load_checkpoints

X = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
Y = np.array([0, 1, 2, 1])


def _model(width=3, extra=False, name=None):
    layers = [keras.Input((3,)), keras.layers.Dense(width, name="hidden")]
    if extra:
        layers.append(keras.layers.Dense(3, name="extra"))
    layers.append(keras.layers.Dense(3, name="head"))
    return keras.Sequential(layers, name=name)


def _compiled(optimizer, **kw):
    model = _model(**kw)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


class _Weights(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.per_epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.per_epoch.append([w.copy() for w in self.model.get_weights()])


def test_recorder_saves_weights_and_the_scheduled_learning_rate(tmp_path):
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    model = _compiled(keras.optimizers.SGD(schedule))
    seen = _Weights()
    recorder = CheckpointRecorder(tmp_path / "ckpt")
    model.fit(X, Y, epochs=3, batch_size=2, verbose=0, callbacks=[recorder, seen])
    found = load_checkpoints(tmp_path / "ckpt")
    # 2 steps per epoch; the schedule evaluated at the iteration count: 0.1 * 0.5 ** step
    assert [(c.epoch, c.step) for c in found] == [(1, 2), (2, 4), (3, 6)]
    np.testing.assert_allclose([c.learning_rate for c in found], [0.025, 0.00625, 0.0015625],
                               rtol=1e-6)
    assert found == recorder.saved
    record = json.loads((tmp_path / "ckpt" / "epoch-0002.json").read_text())
    assert record["weights"] == "epoch-0002.weights.h5" and record["step"] == 4
    assert sorted(os.listdir(tmp_path / "ckpt")) == [
        f"epoch-000{e}.{ext}" for e in (1, 2, 3) for ext in ("json", "weights.h5")
    ]  # no temporary files left
    probe = _model()
    for c, weights in zip(found, seen.per_epoch):
        probe.load_weights(c.path)
        for a, b in zip(probe.get_weights(), weights):
            np.testing.assert_array_equal(a, b)


def test_recorder_period_and_constant_rate(tmp_path):
    model = _compiled(keras.optimizers.Adam(0.01))
    model.fit(X, Y, epochs=4, batch_size=4, verbose=0,
              callbacks=[CheckpointRecorder(tmp_path, every_n_epochs=2)])
    found = load_checkpoints(str(tmp_path))
    assert [c.epoch for c in found] == [2, 4]
    np.testing.assert_allclose([c.learning_rate for c in found], [0.01, 0.01], rtol=1e-6)
    with pytest.raises(ValueError, match="Received: every_n_epochs=0"):
        CheckpointRecorder(tmp_path, every_n_epochs=0)


def test_recorder_refuses_an_uncompiled_model(tmp_path):
    model = _model()
    recorder = CheckpointRecorder(tmp_path)
    recorder.set_model(model)
    with pytest.raises(ValueError, match="compile"):
        recorder.on_train_begin()


def test_keras_model_checkpoint_files_need_learning_rates(tmp_path):
    model = _compiled("sgd")
    weights = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "w" / "ckpt-{epoch}.weights.h5"), save_weights_only=True)
    full = keras.callbacks.ModelCheckpoint(str(tmp_path / "k" / "ckpt-{epoch}.keras"))
    model.fit(X, Y, epochs=10, batch_size=4, verbose=0, callbacks=[weights, full])
    with pytest.raises(ValueError) as err:
        TracIn(model, tmp_path / "w")
    msg = str(err.value)
    assert "argument `learning_rates`" in msg and "10 checkpoint(s)" in msg
    assert "Received: learning_rates=None" in msg
    with pytest.raises(ValueError, match=r"one learning rate per checkpoint is needed, 10 checkpoint"):
        TracIn(model, tmp_path / "w", learning_rates=[0.1, 0.1])
    with pytest.raises(ValueError, match="Received: learning_rates=-1"):
        TracIn(model, tmp_path / "w", learning_rates=-1)
    rates = list(np.linspace(0.1, 0.01, 10))
    # natural order: ckpt-2 before ckpt-10
    paths = [c.path for c in load_checkpoints(tmp_path / "w", rates)]
    assert [os.path.basename(p) for p in paths] == [f"ckpt-{e}.weights.h5" for e in range(1, 11)]
    a = TracIn(model, tmp_path / "w", learning_rates=rates)
    b = TracIn(model, tmp_path / "k", learning_rates=rates)  # .keras files
    a.build_index(X, Y)
    b.build_index(X, Y)
    np.testing.assert_allclose(a.influence(X, Y), b.influence(X, Y), rtol=1e-6)


@pytest.mark.parametrize(
    "other, detail",
    [
        (dict(width=4), "another shape"),
        (dict(extra=True), "the model does not have"),
    ],
)
def test_checkpoints_of_another_architecture_are_refused(tmp_path, other, detail):
    theirs = _model(**other)
    path = str(tmp_path / "other.weights.h5")
    theirs.save_weights(path)
    model = _compiled("sgd")
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError) as err:
        TracIn(model, [path], learning_rates=0.1)
    msg = str(err.value)
    assert "argument `checkpoints`" in msg and "different architecture" in msg and detail in msg
    assert path in msg
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_a_checkpoint_with_fewer_layers_is_refused(tmp_path):
    # Keras' own load_weights would load it silently into the first layers
    small = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3)])
    path = str(tmp_path / "small.weights.h5")
    small.save_weights(path)
    with pytest.raises(ValueError, match="argument `checkpoints`.*missing"):
        TracIn(_compiled("sgd"), [path], learning_rates=0.1)


def test_missing_and_empty_checkpoints(tmp_path):
    model = _compiled("sgd")
    with pytest.raises(ValueError, match="argument `checkpoints`: no checkpoint found"):
        TracIn(model, tmp_path)
    with pytest.raises(ValueError, match="no such directory or file"):
        TracIn(model, tmp_path / "nope")
    with pytest.raises(ValueError, match="no weights file"):
        TracIn(model, [str(tmp_path / "gone.weights.h5")], learning_rates=0.1)
    with pytest.raises(TypeError, match="argument `checkpoints`"):
        TracIn(model, 3)


def test_empty_training_set_and_missing_labels(tmp_path):
    model = _compiled("sgd")
    path = str(tmp_path / "c.weights.h5")
    model.save_weights(path)
    tracin = TracIn(model, [path], learning_rates=0.1)
    with pytest.raises(ValueError, match="argument `data`: it is empty"):
        tracin.build_index(np.zeros((0, 3), "float32"), np.zeros(0, "int32"))
    empty = tf.data.Dataset.from_tensor_slices((np.zeros((0, 3), "float32"), np.zeros(0))).batch(2)
    with pytest.raises(ValueError, match="argument `data`: it is empty"):
        tracin.build_index(empty)
    with pytest.raises(ValueError, match="argument `labels`"):
        tracin.build_index(X)
    features_only = tf.data.Dataset.from_tensor_slices(X).batch(2)
    with pytest.raises(ValueError, match=r"argument `data`: TracIn needs the training labels"):
        tracin.build_index(features_only)
    with pytest.raises(ValueError, match="3 labels for 4 examples"):
        tracin.build_index(X, Y[:3])
    with pytest.raises(ValueError, match="build_index"):
        tracin.influence(X, Y)
    tracin.build_index(X, Y)
    with pytest.raises(ValueError, match="Received: k=5"):
        tracin.proponents(X, Y, k=5)


def test_loss_and_layer_arguments(tmp_path):
    model = _model()  # not compiled
    path = str(tmp_path / "c.weights.h5")
    model.save_weights(path)
    with pytest.raises(ValueError, match="argument `loss_fn`: the model is not compiled"):
        TracIn(model, [path], learning_rates=0.1)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with pytest.raises(ValueError, match="argument `layers`: no layer"):
        TracIn(model, [path], learning_rates=0.1, loss_fn=loss, layers="nope")
    with pytest.raises(ValueError, match="argument `gradient_method`"):
        TracIn(model, [path], learning_rates=0.1, loss_fn=loss, gradient_method="loop")
    scalar = TracIn(model, [path], learning_rates=0.1,
                    loss_fn=lambda y, p: keras.ops.mean(keras.ops.square(p)))
    with pytest.raises(ValueError, match="one loss per example"):
        scalar.build_index(X, Y)
    # a Keras loss object with the default batch reduction is used per example
    tracin = TracIn(model, [path], learning_rates=0.1, loss_fn=loss)
    assert tracin.layers == ["head"]
    tracin.build_index(X, Y)
    unreduced = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    np.testing.assert_allclose(tracin.index.losses(), unreduced(Y, model(X)), rtol=1e-5)
