"""TracIn against hand-computed gradients, the per-example loop, and its own axioms."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastrace.influence import GradientIndex, TracIn
from kerastrace.testing.reference_models import build_text_classifier

from .conftest import loop_gradients

RNG = np.random.default_rng(0)
X_TRAIN = RNG.normal(size=(7, 3)).astype("float32")
Y_TRAIN = np.array([0, 1, 2, 0, 1, 2, 1])
X_TEST = RNG.normal(size=(2, 3)).astype("float32")
Y_TEST = np.array([2, 0])
WEIGHTS = [
    (RNG.normal(size=(3, 3)).astype("float32"), RNG.normal(size=3).astype("float32")),
    (RNG.normal(size=(3, 3)).astype("float32"), RNG.normal(size=3).astype("float32")),
]
RATES = [0.5, 0.1]


def _hand_gradients(w, b, x, y):
    """Softmax + cross-entropy: dL/dz = p - onehot(y); dW = x outer dz; db = dz."""
    z = x.astype(np.float64) @ w + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dz = p - np.eye(3)[y]
    dw = x[:, :, None].astype(np.float64) * dz[:, None, :]
    return np.concatenate([dw.reshape(len(x), -1), dz], axis=1)


def _hand_tracin(x_test, y_test, x_train, y_train):
    total = 0.0
    for (w, b), lr in zip(WEIGHTS, RATES):
        total = total + lr * _hand_gradients(w, b, x_test, y_test) @ _hand_gradients(
            w, b, x_train, y_train
        ).T
    return total


@pytest.fixture
def checkpoints(softmax_model, tmp_path):
    paths = []
    for i, (w, b) in enumerate(WEIGHTS):
        softmax_model.layers[0].set_weights([w, b])
        paths.append(str(tmp_path / f"ckpt-{i}.weights.h5"))
        softmax_model.save_weights(paths[-1])
    return paths


@pytest.mark.parametrize("method", ["dense", "vectorized"])
def test_influence_equals_hand_computed_sum_of_gradient_dot_products(
    softmax_model, checkpoints, method
):
    # the model's own weights and optimizer state must survive the checkpoint loading
    softmax_model.fit(X_TRAIN, Y_TRAIN, epochs=1, verbose=0)
    own = [w.copy() for w in softmax_model.get_weights()]
    opt = [np.array(v) for v in softmax_model.optimizer.variables]
    tracin = TracIn(softmax_model, checkpoints, learning_rates=RATES, gradient_method=method,
                    batch_size=3)
    assert tracin.layers == ["head"] and tracin.gradient_method == method and tracin.dim == 12
    tracin.build_index(X_TRAIN, Y_TRAIN)
    want = _hand_tracin(X_TEST, Y_TEST, X_TRAIN, Y_TRAIN)
    np.testing.assert_allclose(tracin.influence(X_TEST, Y_TEST), want, rtol=1e-4, atol=1e-5)
    self_inf = tracin.self_influence()
    np.testing.assert_allclose(
        self_inf.scores, np.diag(_hand_tracin(X_TRAIN, Y_TRAIN, X_TRAIN, Y_TRAIN)), rtol=1e-4
    )
    # the baseline ranking: the loss at the last checkpoint, -log p_y
    w, b = WEIGHTS[-1]
    z = X_TRAIN.astype(np.float64) @ w + b
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    np.testing.assert_allclose(self_inf.losses, -logp[np.arange(7), Y_TRAIN], rtol=1e-4)
    np.testing.assert_array_equal(self_inf.labels, Y_TRAIN)
    # given inputs: the same self-influence as the index
    np.testing.assert_allclose(tracin.self_influence(X_TRAIN, Y_TRAIN).scores, self_inf.scores,
                               rtol=1e-5)
    for a, b in zip(softmax_model.get_weights(), own):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(softmax_model.optimizer.variables, opt):
        np.testing.assert_array_equal(np.array(a), b)


def test_proponents_and_opponents_rank_the_scores(softmax_model, checkpoints):
    tracin = TracIn(softmax_model, checkpoints, learning_rates=RATES)
    tracin.build_index(X_TRAIN, Y_TRAIN)
    want = _hand_tracin(X_TEST, Y_TEST, X_TRAIN, Y_TRAIN)
    pro = tracin.proponents(X_TEST, Y_TEST, k=3)
    opp = tracin.opponents(X_TEST, Y_TEST, k=3)
    np.testing.assert_array_equal(pro.indices, np.argsort(-want, axis=1)[:, :3])
    np.testing.assert_array_equal(opp.indices, np.argsort(want, axis=1)[:, :3])
    np.testing.assert_allclose(pro.scores, np.sort(want, axis=1)[:, ::-1][:, :3], rtol=1e-4)
    assert np.all(np.diff(opp.scores, axis=1) >= 0)
    np.testing.assert_array_equal(pro.train_labels, Y_TRAIN[pro.indices])
    np.testing.assert_array_equal(pro.test_labels, Y_TEST)
    record = json.loads(pro.to_json())
    assert record["kind"] == "proponents"
    assert [e["index"] for e in record["queries"][1]["examples"]] == pro.indices[1].tolist()
    # without labels the model's predictions are explained (the model as given: last weights)
    predicted = np.argmax(softmax_model.predict(X_TEST, verbose=0), axis=1)
    np.testing.assert_array_equal(tracin.proponents(X_TEST, k=1).test_labels, predicted)
    np.testing.assert_allclose(tracin.influence(X_TEST),
                               _hand_tracin(X_TEST, predicted, X_TRAIN, Y_TRAIN), rtol=1e-4)
    both = tracin.proponents_and_opponents(X_TEST, Y_TEST, k=3)
    np.testing.assert_array_equal(both[0].indices, pro.indices)
    np.testing.assert_array_equal(both[1].indices, opp.indices)


def test_dataset_input_equals_arrays(softmax_model, checkpoints):
    tracin = TracIn(softmax_model, checkpoints, learning_rates=RATES)
    ds = tf.data.Dataset.from_tensor_slices((X_TRAIN, Y_TRAIN)).batch(3)
    from_ds = tracin.build_index(ds)
    np.testing.assert_allclose(tracin.influence(X_TEST, Y_TEST),
                               _hand_tracin(X_TEST, Y_TEST, X_TRAIN, Y_TRAIN), rtol=1e-4)
    from_arrays = TracIn(softmax_model, checkpoints, learning_rates=RATES).build_index(
        X_TRAIN, Y_TRAIN
    )
    for c in range(2):
        np.testing.assert_allclose(from_ds.gradients(c), from_arrays.gradients(c), rtol=1e-6)
    np.testing.assert_array_equal(from_ds.labels, Y_TRAIN)


def _sequence_model():
    """A Dense on a sequence (B, T, D) and a head Dense called on two branches (shared)."""
    keras.utils.set_random_seed(1)
    inp = keras.Input((4, 3))
    h = keras.layers.Dense(5, activation="tanh", name="per_step")(inp)
    pooled = keras.layers.GlobalAveragePooling1D()(h)
    maxed = keras.layers.GlobalMaxPooling1D()(h)
    head = keras.layers.Dense(3, name="head")
    out = keras.layers.Add()([head(pooled), head(maxed)])
    return keras.Model(inp, out)


@pytest.mark.parametrize("method", ["dense", "vectorized"])
def test_sequence_and_shared_dense_layers_match_the_per_example_loop(method, tmp_path):
    model = _sequence_model()
    path = str(tmp_path / "c.weights.h5")
    model.save_weights(path)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    x = np.random.default_rng(2).normal(size=(6, 4, 3)).astype("float32")
    y = np.array([0, 1, 2, 2, 1, 0])
    tracin = TracIn(model, [path], learning_rates=1.0, loss_fn=loss,
                    layers=["per_step", "head"], gradient_method=method)
    grads, _ = tracin.gradients(x, y)
    variables = model.get_layer("per_step").trainable_weights + model.get_layer(
        "head").trainable_weights
    want = loop_gradients(model, variables, loss, x, y)
    np.testing.assert_allclose(grads[0], want, rtol=1e-4, atol=1e-6)


def test_transformer_block_gradients_match_the_per_example_loop(tmp_path):
    model = build_text_classifier(20, 6, dim=8, num_heads=2, ff_dim=8, num_layers=1)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    path = str(tmp_path / "c.weights.h5")
    model.save_weights(path)
    rng = np.random.default_rng(3)
    ids = rng.integers(1, 20, size=(5, 6)).astype("int32")
    ids[:, 4:] = 0
    y = rng.integers(0, 2, size=5)
    tracin = TracIn(model, [path], learning_rates=1.0, layers="block_0")
    assert tracin.gradient_method == "vectorized"
    grads, _ = tracin.gradients(ids, y)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    want = loop_gradients(model, model.get_layer("block_0").trainable_weights, loss, ids, y)
    np.testing.assert_allclose(grads[0], want, rtol=1e-3, atol=1e-6)


def test_tuple_inputs_of_a_two_input_model(tmp_path):
    keras.utils.set_random_seed(2)
    a, b = keras.Input((2,)), keras.Input((3,))
    h = keras.layers.Concatenate()([a, keras.layers.Dense(2, name="side")(b)])
    model = keras.Model([a, b], keras.layers.Dense(2, name="head")(h))
    path = str(tmp_path / "c.weights.h5")
    model.save_weights(path)
    rng = np.random.default_rng(4)
    xa, xb = rng.normal(size=(5, 2)).astype("float32"), rng.normal(size=(5, 3)).astype("float32")
    y = np.array([0, 1, 1, 0, 1])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    tracin = TracIn(model, [path], learning_rates=0.3, loss_fn=loss, layers=["side", "head"],
                    gradient_method="vectorized")
    tracin.build_index((xa, xb), y)
    g = loop_gradients(model, model.get_layer("side").trainable_weights
                       + model.get_layer("head").trainable_weights, loss, (xa, xb), y)
    np.testing.assert_allclose(tracin.influence((xa[:2], xb[:2]), y[:2]), 0.3 * g[:2] @ g.T,
                               rtol=1e-4, atol=1e-6)


def test_projection_keeps_dot_products_and_is_seeded(tmp_path):
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((48,)), keras.layers.Dense(32, name="head")])
    path = str(tmp_path / "c.weights.h5")
    model.save_weights(path)
    rng = np.random.default_rng(6)
    x = rng.normal(size=(60, 48)).astype("float32")
    y = rng.integers(0, 32, size=60)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    def scores(projection_dim, seed=0):
        t = TracIn(model, [path], learning_rates=1.0, loss_fn=loss,
                   projection_dim=projection_dim, seed=seed)
        index = t.build_index(x, y)
        assert index.dim == (projection_dim or 48 * 32 + 32)
        return t.influence(x[:10], y[:10]), t.self_influence().scores

    exact, exact_self = scores(None)
    proj, proj_self = scores(1024)
    # Johnson-Lindenstrauss with a Gaussian matrix: a projected dot product is unbiased
    # with variance (|a|^2 |b|^2 + (a.b)^2) / d, so the standardized errors are ~ N(0, 1)
    norms = np.outer(exact_self[:10], exact_self)  # |a|^2 |b|^2 (one checkpoint, rate 1)
    z = (proj - exact) / np.sqrt((norms + exact**2) / 1024)
    assert abs(z.mean()) < 0.3 and 0.7 < z.std() < 1.3 and np.abs(z).max() < 5
    rel = np.abs(proj_self - exact_self) / exact_self
    assert np.median(rel) < 0.1 and rel.max() < 0.35
    again, _ = scores(1024)
    np.testing.assert_array_equal(again, proj)
    other, _ = scores(1024, seed=1)
    assert not np.allclose(other, proj)
    with pytest.raises(ValueError, match=r"argument `projection_dim`.*smaller than .* 1568"):
        TracIn(model, [path], learning_rates=1.0, loss_fn=loss, projection_dim=1568)


def test_resumed_build_equals_an_uninterrupted_one(softmax_model, checkpoints, tmp_path):
    class Stop(Exception):
        pass

    written = []

    def stop_after_four(c, k):
        written.append((c, k))
        if len(written) == 4:
            raise Stop

    tracin = TracIn(softmax_model, checkpoints, learning_rates=RATES, batch_size=2)
    out = tmp_path / "index"
    with pytest.raises(Stop):
        tracin.build_index(X_TRAIN, Y_TRAIN, output_dir=out, shard_size=3, on_shard=stop_after_four)
    # 3 shards per checkpoint (3 + 3 + 1 examples): checkpoint 0 done, 1 shard of checkpoint 1
    assert written == [(0, 0), (0, 1), (0, 2), (1, 0)]
    partial = GradientIndex.open(out)
    assert not partial.complete
    with pytest.raises(ValueError, match="incomplete"):
        partial.self_influence()
    resumed_calls = []
    index = tracin.build_index(X_TRAIN, Y_TRAIN, output_dir=out, shard_size=3,
                               on_shard=lambda c, k: resumed_calls.append((c, k)))
    assert resumed_calls == [(1, 1), (1, 2)]  # nothing recomputed
    assert index.complete and len(index) == 7
    full = TracIn(softmax_model, checkpoints, learning_rates=RATES).build_index(X_TRAIN, Y_TRAIN)
    for c in range(2):
        np.testing.assert_allclose(GradientIndex.open(out).gradients(c), full.gradients(c),
                                   rtol=1e-6)
    # a finished index is reused without computing, here or by a new TracIn
    again = []
    tracin.build_index(X_TRAIN, Y_TRAIN, output_dir=out, shard_size=3,
                       on_shard=lambda c, k: again.append(k))
    assert again == []
    fresh = TracIn(softmax_model, checkpoints, learning_rates=RATES)
    fresh.load_index(out)
    np.testing.assert_allclose(fresh.influence(X_TEST, Y_TEST),
                               _hand_tracin(X_TEST, Y_TEST, X_TRAIN, Y_TRAIN), rtol=1e-4)
    # other settings are refused, nothing is overwritten
    other = TracIn(softmax_model, checkpoints, learning_rates=[0.5, 0.2])
    with pytest.raises(ValueError, match="argument `output_dir`.*other settings.*checkpoints"):
        other.build_index(X_TRAIN, Y_TRAIN, output_dir=out, shard_size=3)
    with pytest.raises(ValueError, match="argument `directory`.*other settings"):
        other.load_index(out)
    with pytest.raises(ValueError, match="resume=False"):
        tracin.build_index(X_TRAIN, Y_TRAIN, output_dir=out, shard_size=3, resume=False)
