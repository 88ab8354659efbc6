import json
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastrace.attribution import (
    IntegratedGradients,
    LayerIntegratedGradients,
    Saliency,
    token_scores,
)
from kerastrace.scale import AttributionStore, attribute_dataset

from .conftest import Counting


def _ds(x, y=None, batch=4):
    data = x if y is None else (x, y)
    return tf.data.Dataset.from_tensor_slices(data).batch(batch)


def test_batched_equals_direct_call_and_one_call_per_batch(dense_model, dense_data):
    x, y = dense_data
    method = Counting(IntegratedGradients(dense_model))
    store = attribute_dataset(method, _ds(x, y), n_steps=16, shard_size=5, progress=False)
    assert method.calls == [4, 4, 3]  # batched: one call per dataset batch
    direct, delta = IntegratedGradients(dense_model).attribute(
        x, target=y, n_steps=16, return_convergence_delta=True
    )
    np.testing.assert_allclose(store.attributions, direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(store.delta, delta, atol=1e-5)
    np.testing.assert_array_equal(store.labels, y)
    np.testing.assert_array_equal(store.targets, y)
    np.testing.assert_array_equal(store.load()["index"], np.arange(11))
    np.testing.assert_array_equal(store.inputs, x)
    assert store.num_shards == 3 and store.complete and len(store) == 11


def test_int_and_predicted_targets(dense_model, dense_data):
    x, _ = dense_data
    sal = Saliency(dense_model)
    s2 = attribute_dataset(sal, _ds(x), target=2, progress=False)
    np.testing.assert_allclose(s2.attributions, sal.attribute(x, target=2), rtol=1e-6)
    assert s2.labels is None and set(s2.targets.tolist()) == {2}
    pred = np.argmax(dense_model.predict(x, verbose=0), axis=1)
    sp = attribute_dataset(sal, _ds(x), target="predicted", progress=False)
    np.testing.assert_array_equal(sp.targets, pred)
    np.testing.assert_allclose(sp.attributions, sal.attribute(x, target=pred), rtol=1e-6)


def test_token_model_reduce_hidden_and_padded_batches(text_model, token_data):
    ids, y = token_data
    lig = LayerIntegratedGradients(text_model, text_model.get_layer("embedding"))
    store = attribute_dataset(
        lig, _ds(ids, y, batch=4), reduce_hidden="sum", n_steps=8, baselines=0, progress=False
    )
    attr, delta = lig.attribute(ids, target=y, baselines=0, n_steps=8,
                                return_convergence_delta=True)
    np.testing.assert_allclose(store.attributions, token_scores(attr), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(store.delta, delta, atol=1e-4)


def test_padded_batches_of_different_lengths(token_data):
    ids, y = token_data
    keras.utils.set_random_seed(0)
    inp = keras.Input((None,), dtype="int32")
    h = keras.layers.Embedding(30, 4, mask_zero=True, name="emb")(inp)
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(h)))
    lig = LayerIntegratedGradients(model, "emb")
    lens = (ids != 0).sum(1)
    ragged = tf.data.Dataset.from_generator(
        lambda: ((ids[i, : lens[i]], y[i]) for i in range(len(ids))),
        output_signature=(tf.TensorSpec((None,), tf.int32), tf.TensorSpec((), tf.int32)),
    ).padded_batch(3)
    store = attribute_dataset(lig, ragged, reduce_hidden="norm", n_steps=8, baselines=0,
                              shard_size=4, progress=False)
    width = int(lens.max())
    assert store.attributions.shape == (10, width) and store.inputs.shape == (10, width)
    np.testing.assert_array_equal(store.inputs, ids[:, :width])
    for i in (0, 5, 9):  # each example equals the direct call on its own row
        row = lig.attribute(ids[i : i + 1, : lens[i]], target=y[i : i + 1], baselines=0,
                            n_steps=8)
        np.testing.assert_allclose(store.attributions[i, : lens[i]],
                                   token_scores(row, "norm")[0], rtol=1e-4, atol=1e-6)
        assert np.all(store.attributions[i, lens[i]:] == 0)


def test_interrupt_and_resume_equals_uninterrupted(dense_model, dense_data, tmp_path):
    x, y = dense_data
    full = attribute_dataset(IntegratedGradients(dense_model), _ds(x, y, batch=2),
                             n_steps=8, shard_size=5, progress=False)

    def stop(k, store):
        if k == 0:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        attribute_dataset(Counting(IntegratedGradients(dense_model)), _ds(x, y, batch=2), n_steps=8,
                          shard_size=5, output_dir=out, on_shard=stop, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["count"] for s in manifest["shards"]] == [5] and not manifest["complete"]
    first = (out / "shard-00000.npz").read_bytes()
    assert not [p for p in os.listdir(out) if p.startswith(".tmp")]

    method = Counting(IntegratedGradients(dense_model))
    store = attribute_dataset(method, _ds(x, y, batch=2), n_steps=8, shard_size=5,
                              output_dir=out, progress=False)
    # examples 0-4 are not recomputed: batch [4, 5] only computes example 5
    assert sum(method.calls) == 6 and method.calls[0] == 1
    assert (out / "shard-00000.npz").read_bytes() == first
    assert store.complete and len(store) == 11
    reopened = AttributionStore.open(out)
    assert reopened.complete and len(reopened) == 11 and reopened.num_shards == 3
    for key in ("attributions", "delta", "labels", "index"):
        np.testing.assert_allclose(reopened.load()[key], full.load()[key], rtol=1e-5, atol=1e-6)
    # a complete run is not recomputed
    again = Counting(IntegratedGradients(dense_model))
    attribute_dataset(again, _ds(x, y, batch=2), n_steps=8, shard_size=5, output_dir=out,
                      progress=False)
    assert again.calls == []


def test_orphan_shard_is_adopted_not_recomputed(dense_model, dense_data, tmp_path):
    x, y = dense_data
    out = tmp_path / "run"
    attribute_dataset(Counting(Saliency(dense_model)), _ds(x, y), shard_size=4, output_dir=out,
                      progress=False)
    # simulate a crash between writing shards 1 and 2 and updating the manifest
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"] = manifest["shards"][:1]
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / ".tmp-half-written.part").write_bytes(b"garbage")
    method = Counting(Saliency(dense_model))
    store = attribute_dataset(method, _ds(x, y), shard_size=4, output_dir=out, progress=False)
    # both written shards (the last one partial) belong to this run: adopted, not recomputed
    assert method.calls == [] and store.num_shards == 3
    assert [s["count"] for s in store.manifest["shards"]] == [4, 4, 3]
    assert not (out / ".tmp-half-written.part").exists()
    np.testing.assert_allclose(store.attributions, Saliency(dense_model).attribute(x, target=y),
                               rtol=1e-6)


def test_existing_run_is_never_overwritten(dense_model, dense_data, tmp_path):
    x, y = dense_data
    out = tmp_path / "run"
    attribute_dataset(Saliency(dense_model), _ds(x, y), output_dir=out, progress=False)
    before = (out / "shard-00000.npz").read_bytes()
    with pytest.raises(ValueError, match="resume=False"):
        attribute_dataset(Saliency(dense_model), _ds(x, y), output_dir=out, resume=False,
                          progress=False)
    with pytest.raises(ValueError, match="different settings.*target"):
        attribute_dataset(Saliency(dense_model), _ds(x, y), target=1, output_dir=out,
                          progress=False)
    assert (out / "shard-00000.npz").read_bytes() == before


def test_bad_labels_keep_written_shards(dense_model, dense_data, tmp_path):
    x, y = dense_data
    bad = y.copy()
    bad[9] = 7
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"label 7 of example 9 is out of range.*0\.\.2"):
        attribute_dataset(Saliency(dense_model), _ds(x, bad, batch=2), shard_size=4,
                          output_dir=out, progress=False)
    store = AttributionStore.open(out)
    assert len(store) == 8 and not store.complete
    np.testing.assert_allclose(store.attributions,
                               Saliency(dense_model).attribute(x[:8], target=y[:8]), rtol=1e-6)


def test_bad_input_errors(dense_model, dense_data):
    x, y = dense_data
    sal = Saliency(dense_model)
    with pytest.raises(ValueError, match="empty"):
        attribute_dataset(sal, _ds(x, y).take(0), progress=False)
    with pytest.raises(ValueError, match="unbatched.*batch"):
        attribute_dataset(sal, tf.data.Dataset.from_tensor_slices((x, y)), progress=False)
    with pytest.raises(ValueError, match=r"feature 0 has shape \(None, 5\).*\(None, 4\)"):
        attribute_dataset(sal, _ds(np.ones((4, 5), "float32"), y[:4]), progress=False)
    with pytest.raises(ValueError, match="features only"):
        attribute_dataset(sal, _ds(x), progress=False)
    with pytest.raises(TypeError, match="dicts"):
        attribute_dataset(sal, tf.data.Dataset.from_tensor_slices({"a": x}).batch(2),
                          progress=False)
    with pytest.raises(ValueError, match="shard_size"):
        attribute_dataset(sal, _ds(x, y), shard_size=0, progress=False)
    with pytest.raises(ValueError, match="reduce_hidden"):
        attribute_dataset(sal, _ds(x, y), reduce_hidden="mean", progress=False)
    with pytest.raises(TypeError, match="tf.data.Dataset"):
        attribute_dataset(sal, x, progress=False)
    with pytest.raises(TypeError, match="strategy"):
        attribute_dataset(sal, _ds(x, y), strategy="mirrored", progress=False)


def test_label_shapes(dense_model, dense_data):
    x, y = dense_data
    sal = Saliency(dense_model)
    want = sal.attribute(x, target=y)
    onehot = np.eye(3, dtype="float32")[y]
    probabilities = 0.8 * onehot + 0.1 * (1 - onehot)  # rows sum to 1, argmax = y
    for labels in (y, y[:, None], onehot, probabilities, y.astype("float32")):
        store = attribute_dataset(sal, _ds(x, labels), progress=False)
        np.testing.assert_array_equal(store.targets, y)
        np.testing.assert_allclose(store.attributions, want, rtol=1e-6)
    # (B, C) rows with C = the 3 outputs that are not one-hot/probabilities
    with pytest.raises(ValueError, match=r"shape \(4, 3\).*do not sum to 1.*per-position"):
        attribute_dataset(sal, _ds(x, np.tile([[0, 2, 1]], (11, 1))), progress=False)
    # per-position labels (B, T) with T != the number of outputs
    with pytest.raises(ValueError, match=r"shape \(4, 5\).*per-position.*callable target"):
        attribute_dataset(sal, _ds(x, np.zeros((11, 5), "int32")), progress=False)
    with pytest.raises(ValueError, match="per-position"):
        attribute_dataset(sal, _ds(x, np.zeros((11, 3, 1), "int32")), progress=False)


def test_one_hot_labels_on_a_subclassed_model(dense_model, dense_data):
    # No symbolic outputs: the number of outputs comes from a forward pass.
    class Wrapped(keras.Model):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def call(self, x):
            return self.inner(x)

    x, y = dense_data
    model = Wrapped(dense_model)
    sal = Saliency(model)
    store = attribute_dataset(sal, _ds(x, np.eye(3, dtype="float32")[y]), progress=False)
    np.testing.assert_array_equal(store.targets, y)
    np.testing.assert_allclose(store.attributions, Saliency(dense_model).attribute(x, target=y),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="per-position"):
        attribute_dataset(sal, _ds(x, np.zeros((11, 4), "int32")), progress=False)


def test_dict_features_of_a_functional_model():
    keras.utils.set_random_seed(0)
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    h = keras.layers.Concatenate()([a, b])
    model = keras.Model({"a": a, "b": b}, keras.layers.Dense(2)(keras.layers.Dense(4)(h)))
    rng = np.random.default_rng(0)
    x = {"a": rng.normal(size=(7, 3)).astype("float32"),
         "b": rng.normal(size=(7, 2)).astype("float32")}
    y = np.arange(7) % 2
    ig = IntegratedGradients(model)
    store = attribute_dataset(ig, _ds(x, y, batch=3), n_steps=16, progress=False)
    direct, delta = ig.attribute(x, target=y, n_steps=16, return_convergence_delta=True)
    fields = store.load()
    np.testing.assert_allclose(fields["attributions_a"], direct["a"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fields["attributions_b"], direct["b"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(store.delta, delta, atol=1e-5)
    assert "inputs" not in fields  # two entries and no "token_ids": nothing to keep
    with pytest.raises(ValueError, match=r"missing key\(s\) \['b'\]"):
        attribute_dataset(ig, _ds({"a": x["a"]}, y), progress=False)


def test_progress_bar_counts_examples(dense_model, dense_data, monkeypatch, capsys):
    bars = []

    class Recording(keras.utils.Progbar):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.seen = []
            bars.append(self)

        def update(self, current, values=None, finalize=None):
            super().update(current, values, finalize)
            self.seen.append(self._values["examples"])

    monkeypatch.setattr(keras.utils, "Progbar", Recording)
    x, y = dense_data
    attribute_dataset(Saliency(dense_model), _ds(x, y, batch=4), progress=True)
    (bar,) = bars
    # the running count after each batch, not its average over the batches so far
    assert [total / count for total, count in bar.seen] == [4, 8, 11]
    shown = [float(s) for s in re.findall(r"examples: ([0-9.]+)", capsys.readouterr().out)]
    assert shown and shown[-1] == 11 and set(shown) <= {4, 8, 11}


def test_progress_bar_of_unknown_length_counts_examples_and_ends_its_line(
    dense_model, dense_data, capsys
):
    x, y = dense_data
    ds = _ds(x, y, batch=4).filter(lambda *_: True)  # cardinality unknown
    assert int(ds.cardinality()) < 0
    attribute_dataset(Saliency(dense_model), ds, progress=True)
    out = capsys.readouterr().out
    shown = [float(s) for s in re.findall(r"examples: ([0-9.]+)", out)]
    assert shown and shown[-1] == 11 and set(shown) <= {4, 8, 11}  # a count, not a mean
    assert "3/Unknown" in out and out.endswith("\n")
