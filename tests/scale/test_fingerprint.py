import keras
import numpy as np
import tensorflow as tf

from kerastrace.attribution import (
    IntegratedGradients,
    LayerIntegratedGradients,
    NoiseTunnel,
    Saliency,
)
from kerastrace.scale import attribute_dataset
from kerastrace.scale._fingerprint import (
    combine,
    example_digests,
    method_settings,
    model_fingerprint,
)

from .conftest import Counting


def test_example_digests_ignore_padding_and_batching_but_not_values():
    ids = np.array([[5, 6, 0, 0], [7, 0, 0, 0]], "int32")
    y = np.array([1, 0])
    d = example_digests(ids, y)
    np.testing.assert_array_equal(d, example_digests(ids[:, :2].astype("int64"), y))
    np.testing.assert_array_equal(d[1:], example_digests(ids[1:], y[1:]))  # batch-independent
    assert not np.array_equal(d[0], example_digests(ids, np.array([0, 0]))[0])  # label
    other = ids.copy()
    other[0, 1] = 9
    assert not np.array_equal(d[0], example_digests(other, y)[0]) and np.array_equal(
        d[1], example_digests(other, y)[1])  # fmt: skip
    # a zero inside the sequence is not padding
    assert not np.array_equal(example_digests(np.array([[5, 0, 6]]))[0],
                              example_digests(np.array([[5, 6, 0]]))[0])  # fmt: skip


def test_example_digests_of_dicts_tuples_and_strings():
    a = {"token_ids": np.array([[1, 2]]), "padding_mask": np.array([[1, 1]])}
    b = {"padding_mask": np.array([[1, 1]]), "token_ids": np.array([[1, 2]])}
    np.testing.assert_array_equal(example_digests(a), example_digests(b))  # key order
    swapped = {"token_ids": np.array([[1, 1]]), "padding_mask": np.array([[1, 2]])}
    assert not np.array_equal(example_digests(a), example_digests(swapped))
    t = (np.ones((2, 3), "float32"), np.zeros((2, 1), "float32"))
    assert example_digests(t).shape == (2, 2)
    s = example_digests(np.array([b"good film", b"bad"], dtype=object))
    assert not np.array_equal(s[0], s[1])
    assert combine(s) != combine(s[::-1])  # ordered


def _mlp(activation="tanh"):
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation=activation),
                             keras.layers.Dense(2)])  # fmt: skip


def test_model_fingerprint_weights_and_configuration():
    keras.utils.set_random_seed(0)
    model = _mlp()
    fp = model_fingerprint(model)
    rebuilt = _mlp()  # auto-generated layer names moved on (dense_2, ...)
    assert rebuilt.layers[0].name != model.layers[0].name
    rebuilt.set_weights(model.get_weights())
    assert model_fingerprint(rebuilt) == fp
    rebuilt.set_weights([w + 1 for w in model.get_weights()])
    changed = model_fingerprint(rebuilt)
    assert changed["weights"] != fp["weights"] and changed["config"] == fp["config"]
    relu = _mlp("relu")
    relu.set_weights(model.get_weights())
    changed = model_fingerprint(relu)
    assert changed["weights"] == fp["weights"] and changed["config"] != fp["config"]
    assert model_fingerprint(lambda x: x) is None


def test_method_settings():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,), dtype="int32"), keras.layers.Embedding(5, 2),
                              keras.layers.Flatten(), keras.layers.Dense(2)])  # fmt: skip
    lig = method_settings(LayerIntegratedGradients(model, model.layers[0]))
    assert lig["class"] == "LayerIntegratedGradients"
    assert lig["layer_path"] == model.layers[0].name
    nt = method_settings(NoiseTunnel(IntegratedGradients(model)))
    assert nt["attribution_method"]["class"] == "IntegratedGradients"
    counting = method_settings(Counting(Saliency(model)))
    assert "calls" not in counting  # a list is state, not a setting


def test_padded_batches_resume_after_rebatching(token_data, tmp_path):
    ids, y = token_data
    keras.utils.set_random_seed(0)
    inp = keras.Input((None,), dtype="int32")
    h = keras.layers.Embedding(30, 4, mask_zero=True, name="emb")(inp)
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(h)))
    lens = (ids != 0).sum(1)

    def data(batch):
        return tf.data.Dataset.from_generator(
            lambda: ((ids[i, : lens[i]], y[i]) for i in range(len(ids))),
            output_signature=(tf.TensorSpec((None,), tf.int32), tf.TensorSpec((), tf.int32)),
        ).padded_batch(batch)

    kw = dict(reduce_hidden="sum", n_steps=4, baselines=0, shard_size=4, progress=False,
              output_dir=tmp_path / "run")  # fmt: skip
    first = attribute_dataset(Counting(LayerIntegratedGradients(model, "emb")), data(4), **kw)
    method = Counting(LayerIntegratedGradients(model, "emb"))
    again = attribute_dataset(method, data(3), **kw)  # other padding per batch: same examples
    assert method.calls == []
    np.testing.assert_array_equal(again.inputs, first.inputs)
