"""Hostile inputs to everything that reads or writes files: never silently wrong, never
half-written. Each case asserts the clear error (argument or flag named, value echoed)
or the correct result.
"""

import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastrace.attribution import IntegratedGradients, Saliency
from kerastrace.cli import main
from kerastrace.io import ArchiveError, check_archive, load_model
from kerastrace.scale import AttributionStore, attribute_dataset, summarize
from kerastrace.tensorboard import AttentionMonitor, get_writer, write_head_statistics

HERE = os.path.dirname(os.path.abspath(__file__))
MiB = 2**20


# ================================================================== scale
def Counting(method):  # noqa: N802 - used like a wrapper class
    """The same attribution object (same class and settings), recording each call's size."""
    original = method.attribute
    method.calls = []

    def attribute(inputs, **kwargs):
        method.calls.append(len(inputs))
        return original(inputs, **kwargs)

    method.attribute = attribute
    return method


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(30, 4)).astype("float32"), (np.arange(30) % 3).astype("int32")


def ds(x, y=None, batch=4):
    return tf.data.Dataset.from_tensor_slices(x if y is None else (x, y)).batch(batch)


def run(method, dataset, out, **kw):
    return attribute_dataset(method, dataset, output_dir=out, shard_size=8, progress=False, **kw)


def direct(model, x, y):
    return Saliency(model).attribute(x, target=y)


@pytest.fixture
def stored(model, data, tmp_path):
    """A complete run of 30 examples in shards of 8 (8, 8, 8, 6)."""
    x, y = data
    out = tmp_path / "run"
    run(Saliency(model), ds(x, y), out)
    return out


def test_interrupted_then_resumed_equals_uninterrupted(model, data, tmp_path):
    x, y = data
    out = tmp_path / "run"

    def stop(k, store):
        if k == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(Saliency(model), ds(x, y), out, on_shard=stop)
    store = AttributionStore.open(out)
    assert not store.complete and len(store) == 16
    method = Counting(Saliency(model))
    store = run(method, ds(x, y), out)
    assert sum(method.calls) == 14 and store.complete
    np.testing.assert_allclose(store.attributions, direct(model, x, y), rtol=1e-6)


def test_reshuffled_dataset_is_refused_naming_the_order(model, data, stored):
    x, y = data
    perm = np.random.default_rng(1).permutation(30)
    with pytest.raises(ValueError, match=r"`dataset`.*the dataset's order differs.*reshuffled.*"
                                         r"shard 'shard-00000.npz'.*on_mismatch='recompute'"):
        run(Saliency(model), ds(x[perm], y[perm]), stored)


def test_shuffled_with_a_seed_and_no_reshuffle_resumes(model, data, tmp_path):
    x, y = data
    shuffled = ds(x, y, batch=1).unbatch().shuffle(30, seed=3, reshuffle_each_iteration=False)
    out = tmp_path / "run"
    first = run(Saliency(model), shuffled.batch(4), out)
    again = run(Counting(Saliency(model)), shuffled.batch(4), out)
    np.testing.assert_array_equal(again.labels, first.labels)


def test_changed_weights_are_refused(model, data, stored):
    x, y = data
    other = keras.models.clone_model(model)
    other.set_weights([w + 1.0 for w in model.get_weights()])
    with pytest.raises(ValueError, match=r"`method`: the model is not the model of the run.*its "
                                         r"weights differ.*set_weights"):
        run(Saliency(other), ds(x, y), stored)


def test_changed_configuration_is_refused(model, data, stored):
    x, y = data
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu")])
    other.set_weights(model.get_weights())
    with pytest.raises(ValueError, match=r"its configuration differs"):
        run(Saliency(other), ds(x, y), stored)


def test_other_data_of_the_same_length_is_refused(model, data, stored):
    x, y = data
    x2 = x.copy()
    x2[17] += 1.0
    with pytest.raises(ValueError, match=r"the data differs: position 17 holds another example, "
                                         r"and 1 of the 30 stored.*'shard-00002.npz', examples "
                                         r"16\.\.23"):
        run(Saliency(model), ds(x2, y), stored)


def test_changed_labels_are_other_data(model, data, stored):
    x, y = data
    y2 = y.copy()
    y2[3] = (y2[3] + 1) % 3
    with pytest.raises(ValueError, match=r"the data differs: position 3"):
        run(Saliency(model), ds(x, y2), stored)


def test_shorter_dataset_is_refused(model, data, stored):
    x, y = data
    with pytest.raises(ValueError, match=r"the dataset is shorter: it has 20 examples but the "
                                         r"run holds 30"):
        run(Saliency(model), ds(x[:20], y[:20]), stored)


def test_completed_run_continues_on_a_longer_dataset(model, data, stored):
    x, y = data
    x2, y2 = np.concatenate([x, x[:9] * 2]), np.concatenate([y, y[:9]])
    method = Counting(Saliency(model))
    store = run(method, ds(x2, y2), stored)
    assert sum(method.calls) == 9 and len(store) == 39 and store.complete
    np.testing.assert_allclose(store.attributions, direct(model, x2, y2), rtol=1e-6)
    np.testing.assert_allclose(AttributionStore.open(stored).attributions,
                               direct(model, x2, y2), rtol=1e-6)  # fmt: skip


def test_rebatched_same_data_resumes_without_work(model, data, stored):
    x, y = data
    method = Counting(Saliency(model))
    store = run(method, ds(x, y, batch=7), stored)
    assert method.calls == [] and len(store) == 30


def test_other_settings_are_refused_naming_them(model, data, stored):
    x, y = data
    with pytest.raises(ValueError, match=r"different settings \(target\): target: 'label' then, "
                                         r"1 now"):
        run(Saliency(model), ds(x, y), stored, target=1)
    with pytest.raises(ValueError, match=r"different settings \(delta, method, method_settings\)"):
        run(IntegratedGradients(model), ds(x, y), stored)


def test_recompute_on_a_reshuffled_dataset(model, data, stored):
    x, y = data
    perm = np.random.default_rng(2).permutation(30)
    store = run(Saliency(model), ds(x[perm], y[perm]), stored, on_mismatch="recompute")
    np.testing.assert_allclose(store.attributions, direct(model, x[perm], y[perm]), rtol=1e-6)
    np.testing.assert_array_equal(AttributionStore.open(stored).labels, y[perm])


def test_recompute_only_the_shards_whose_inputs_changed(model, data, stored):
    x, y = data
    x2 = x.copy()
    x2[10] = 0.5
    before = {n: (stored / n).read_bytes() for n in os.listdir(stored) if n.endswith(".npz")}
    method = Counting(Saliency(model))
    store = run(method, ds(x2, y), stored, on_mismatch="recompute")
    assert sum(method.calls) == 8  # shard 1 (examples 8..15) only
    np.testing.assert_allclose(store.attributions, direct(model, x2, y), rtol=1e-6)
    after = {n: (stored / n).read_bytes() for n in before}
    assert [n for n in sorted(before) if before[n] != after[n]] == ["shard-00001.npz"]


def test_recompute_after_set_weights_and_a_shorter_dataset(model, data, stored):
    x, y = data
    other = keras.models.clone_model(model)
    other.set_weights([w * 2.0 for w in model.get_weights()])
    store = run(Saliency(other), ds(x[:13], y[:13]), stored, on_mismatch="recompute")
    np.testing.assert_allclose(store.attributions, direct(other, x[:13], y[:13]), rtol=1e-6)
    assert sorted(n for n in os.listdir(stored) if n.endswith(".npz")) == [
        "shard-00000.npz", "shard-00001.npz"]  # the old shards 2 and 3 are gone


def test_truncated_shard_is_named_and_recomputed(model, data, stored):
    x, y = data
    path = stored / "shard-00001.npz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"Shard '.*shard-00001.npz' is damaged.*truncated"):
        AttributionStore.open(stored).load()
    with pytest.raises(ValueError, match="shard-00001.npz"):
        summarize(AttributionStore.open(stored))
    method = Counting(Saliency(model))
    store = run(method, ds(x, y), stored)
    assert sum(method.calls) == 8
    np.testing.assert_allclose(AttributionStore.open(stored).attributions, direct(model, x, y),
                               rtol=1e-6)  # fmt: skip
    assert store.complete


def test_bit_flip_in_a_shard_is_caught_by_its_checksum(stored):
    path = stored / "shard-00002.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same length, one byte changed
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"shard-00002.npz' is damaged: its checksum differs"):
        AttributionStore.open(stored).load()


def test_deleted_shard_is_named_and_recomputed(model, data, stored):
    x, y = data
    (stored / "shard-00003.npz").unlink()
    with pytest.raises(ValueError, match=r"shard-00003.npz' cannot be read"):
        AttributionStore.open(stored).load()
    store = run(Saliency(model), ds(x, y), stored)
    np.testing.assert_allclose(store.attributions, direct(model, x, y), rtol=1e-6)


def test_leftover_temporary_files_are_cleaned(model, data, stored):
    x, y = data
    for name in (".tmp-0123abcd.part", ".tmp-deadbeef.part"):
        (stored / name).write_bytes(b"half a shard")
    run(Saliency(model), ds(x, y), stored)
    assert not [n for n in os.listdir(stored) if n.startswith(".tmp-")]


def test_shard_files_are_readable_by_others(stored):
    modes = {n: stat.S_IMODE(os.stat(stored / n).st_mode) for n in os.listdir(stored)}
    umask = os.umask(0)
    os.umask(umask)
    assert set(modes.values()) == {0o666 & ~umask}


def test_orphan_shard_of_another_model_is_not_adopted(model, data, tmp_path):
    x, y = data
    out = tmp_path / "run"
    other = keras.models.clone_model(model)
    other.set_weights([w - 1.0 for w in model.get_weights()])
    run(Saliency(other), ds(x, y), out)
    orphan = (out / "shard-00001.npz").read_bytes()
    shutil.rmtree(out)
    with pytest.raises(KeyboardInterrupt):
        run(Saliency(model), ds(x, y), out, on_shard=lambda k, s: (_ for _ in ()).throw(
            KeyboardInterrupt()))  # fmt: skip
    (out / "shard-00001.npz").write_bytes(orphan)  # left by the other run's model
    store = run(Saliency(model), ds(x, y), out)
    np.testing.assert_allclose(store.attributions, direct(model, x, y), rtol=1e-6)


def test_empty_dataset_writes_nothing(model, data, tmp_path):
    x, y = data
    with pytest.raises(ValueError, match=r"`dataset`: it is empty"):
        run(Saliency(model), ds(x, y).take(0), tmp_path / "a")
    with pytest.raises(ValueError, match=r"`dataset`: it is empty"):
        run(Saliency(model), ds(x, y).filter(lambda a, b: False), tmp_path / "b")
    assert os.listdir(tmp_path) == []


def test_wrong_element_structures(model, data, tmp_path):
    x, y = data
    four = tf.data.Dataset.from_tensor_slices((x, y, y, y)).batch(4)
    with pytest.raises(ValueError, match=r"a tuple of 4"):
        run(Saliency(model), four, tmp_path / "a")
    with pytest.raises(ValueError, match=r"unbatched.*dataset.batch"):
        run(Saliency(model), tf.data.Dataset.from_tensor_slices((x, y)), tmp_path / "b")
    with pytest.raises(TypeError, match=r"dicts"):
        run(Saliency(model), ds({"a": x}, y), tmp_path / "c")
    ragged = tf.data.Dataset.from_generator(
        lambda: iter([(x[:4], y[:3])]),
        output_signature=(tf.TensorSpec((None, 4), tf.float32), tf.TensorSpec((None,), tf.int32)))
    with pytest.raises(ValueError, match=r"element 0 is not a batch: the leading sizes.*\[4, 3\]"):
        run(Saliency(model), ragged, tmp_path / "d")
    assert os.listdir(tmp_path) == []


def test_bad_arguments_are_named_and_echoed(model, data, tmp_path):
    x, y = data
    with pytest.raises(ValueError, match=r"`on_mismatch`.*Received: on_mismatch='ignore'"):
        run(Saliency(model), ds(x, y), tmp_path / "a", on_mismatch="ignore")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"`output_dir`.*it is a file.*Received: output_dir="):
        run(Saliency(model), ds(x, y), tmp_path / "file")
    with pytest.raises(ValueError, match=r"`on_shard`"):
        run(Saliency(model), ds(x, y), tmp_path / "b", on_shard="print")


def test_damaged_manifest_is_a_clear_error(model, data, stored):
    x, y = data
    (stored / "manifest.json").write_text('{"format": "kerastrace.scale.attri')
    with pytest.raises(ValueError, match=r"manifest .*manifest.json' cannot be read"):
        run(Saliency(model), ds(x, y), stored)
    (stored / "manifest.json").write_text(json.dumps(
        {"format": "kerastrace.scale.attributions", "config": {},
         "shards": [{"file": "../../etc/passwd", "start": 0, "count": 3}]}))  # fmt: skip
    with pytest.raises(ValueError, match=r"malformed entry for shard 0"):
        AttributionStore.open(stored)


def test_old_run_without_fingerprints_is_not_trusted(model, data, stored):
    x, y = data
    manifest = json.loads((stored / "manifest.json").read_text())
    manifest["version"] = 1
    del manifest["fingerprints"]
    (stored / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"older kerastrace.*version 1.*on_mismatch='recompute'"):
        run(Saliency(model), ds(x, y), stored)
    store = run(Saliency(model), ds(x, y), stored, on_mismatch="recompute")
    np.testing.assert_allclose(store.attributions, direct(model, x, y), rtol=1e-6)


def test_a_second_writer_of_the_same_directory_is_refused(model, data, stored):
    from kerastrace._utils.store import exclusive_lock

    x, y = data
    with exclusive_lock(str(stored)):
        with pytest.raises(ValueError, match=r"another run is writing .*Received: output_dir="):
            run(Saliency(model), ds(x, y), stored)


def test_summarize_warns_on_an_interrupted_store(model, data, tmp_path):
    x, y = data

    def stop(k, store):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(Saliency(model), ds(x, y), tmp_path / "run", on_shard=stop)
    with pytest.warns(UserWarning, match=r"incomplete: it holds the first 8 examples"):
        summary = summarize(AttributionStore.open(tmp_path / "run"))
    assert summary.num_examples == 8


def test_killed_process_resumes_without_loss(tmp_path):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="tanh"),
                              keras.layers.Dense(3)])  # fmt: skip
    model.save(tmp_path / "model.keras")
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(14, 4)).astype("float32"), np.arange(14) % 3
    np.savez(tmp_path / "data.npz", x=x, y=y)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "_resume_worker.py"),
                             str(tmp_path)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 180
    while not (tmp_path / "ready").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)  # by its process id
    proc.wait(timeout=60)
    out = tmp_path / "run"
    assert len(AttributionStore.open(out)) == 8
    kept = (out / "shard-00000.npz").read_bytes()
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    method = Counting(IntegratedGradients(loaded))
    store = attribute_dataset(method, ds(x, y, batch=3), output_dir=out, shard_size=4,
                              n_steps=8, progress=False)  # fmt: skip
    assert sum(method.calls) == 6 and (out / "shard-00000.npz").read_bytes() == kept
    want = IntegratedGradients(loaded).attribute(x, target=y, n_steps=8)
    np.testing.assert_allclose(store.attributions, want, rtol=1e-5, atol=1e-6)


# ================================================================== writers
def read_scalars(logdir):
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    acc.Reload()
    return {tag: [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
            for tag in acc.Tags()["tensors"]}  # fmt: skip


def test_log_directory_deleted_between_writes(tmp_path):
    logdir = tmp_path / "logs"
    write_head_statistics(logdir, {"a": 1.0}, step=0)
    shutil.rmtree(logdir)
    write_head_statistics(logdir, {"a": 2.0}, step=1)
    assert read_scalars(logdir) == {"heads/a": [(1, 2.0)]}


def test_log_directory_replaced_by_a_file(tmp_path):
    logdir = tmp_path / "logs"
    write_head_statistics(logdir, {"a": 1.0})
    shutil.rmtree(logdir)
    logdir.write_text("oops")
    with pytest.raises(OSError, match=r"Cannot write TensorBoard summaries to .*logs': it is a "
                                      r"file, not a directory"):
        write_head_statistics(logdir, {"a": 1.0})


def test_bad_writer_argument():
    with pytest.raises(TypeError, match=r"`logdir_or_writer`.*Received: logdir_or_writer=int"):
        get_writer(3)


def test_monitor_on_a_log_path_that_is_a_file(tmp_path, caplog):
    from kerastrace.layers import TransformerBlock

    keras.utils.set_random_seed(0)
    inp = keras.Input((5,), dtype="int32")
    h, _ = TransformerBlock(2, 8, name="block")(keras.layers.Embedding(10, 8)(inp))
    net = keras.Model(inp, keras.layers.Dense(1)(keras.layers.Flatten()(h)))
    net.compile("sgd", "mse")
    ids = np.arange(10).reshape(2, 5) % 10
    (tmp_path / "logs").write_text("a file where the log directory should be")
    mon = AttentionMonitor(tmp_path / "logs", ids, write_images=False)
    with caplog.at_level(logging.ERROR):
        net.fit(ids, np.zeros((2, 1)), epochs=2, verbose=0, callbacks=[mon])
    assert mon.failures == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "it is a file, not a directory" in errors[0]


# ================================================================== io
def _zip(path, members):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, value in members.items():
            zf.writestr(name, value)
    return path


def _bomb(path, size):
    chunk = b"\0" * MiB
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("config.json", "w", force_zip64=True) as f:
            for _ in range(size // MiB):
                f.write(chunk)
    return path


def test_zip_bomb_config(tmp_path):
    path = _bomb(tmp_path / "bomb.keras", 96 * MiB)
    t0 = time.perf_counter()
    with pytest.raises(ArchiveError, match=r"'config.json' expands to 96.0 MiB.*zip bomb"):
        load_model(path)
    assert time.perf_counter() - t0 < 2.0


def test_not_a_zip(tmp_path):
    (tmp_path / "m.keras").write_bytes(b"\x89PNG\r\n\x1a\n not a model")
    with pytest.raises(ValueError, match=r"not a Keras model file: a `.keras` file is a zip"):
        load_model(tmp_path / "m.keras")


def test_path_traversal_member(tmp_path):
    path = _zip(tmp_path / "m.keras", {"config.json": "{}", "assets/../../../tmp/x": "pwn"})
    with pytest.raises(ArchiveError, match=r"member 'assets/\.\./\.\./\.\./tmp/x' climbs out"):
        load_model(path)


def test_absolute_member(tmp_path):
    path = _zip(tmp_path / "m.keras", {"config.json": "{}", "/root/.bashrc": "pwn"})
    with pytest.raises(ArchiveError, match=r"'/root/.bashrc' is an absolute path"):
        load_model(path)


def test_missing_config(tmp_path):
    path = _zip(tmp_path / "m.keras", {"metadata.json": "{}", "model.weights.h5": b"x"})
    with pytest.raises(ArchiveError, match=r"no config.json inside"):
        load_model(path)


def test_huge_member_count(tmp_path):
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("config.json", "{}")
        for i in range(10_000):
            zf.writestr(f"a/{i}", b"")
    with pytest.raises(ArchiveError, match=r"10001 archive members, more than the limit of 10000"):
        check_archive(path)


def test_keras_file_that_is_a_directory(tmp_path):
    (tmp_path / "m.keras").mkdir()
    (tmp_path / "m.keras" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"is a directory, not a Keras model file"):
        load_model(tmp_path / "m.keras")


def test_unsafe_lambda_refused(tmp_path):
    inp = keras.Input((2,))
    model = keras.Model(inp, keras.layers.Lambda(lambda t: t + 1, name="plus_one")(inp))
    model.save(tmp_path / "m.keras")
    with pytest.raises(ValueError, match=r"Lambda layer\(s\) \['plus_one'\].*--unsafe"):
        load_model(tmp_path / "m.keras")


# ================================================================== CLI
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "film", "good", "bad", "the", "was"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from kerastrace.testing.reference_models import build_text_classifier

    folder = tmp_path_factory.mktemp("cli")
    build_text_classifier(len(VOCAB), 8, num_layers=1).save(folder / "model.keras")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    _bomb(folder / "bomb.keras", 80 * MiB)
    return folder


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)

    def call(*argv):
        status = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return status, out, err

    return call


def _line(err):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["explain", "{m}", "--text", "a film", "--steps", "0"],
         "argument `--steps`, expected a positive integer. Received: --steps=0"),
        (["explain", "{m}", "--text", "a film", "--target", "-2"],
         "argument `--target`, expected a non-negative integer. Received: --target=-2"),
        (["attention", "{m}", "--text", "a film", "--head", "-1"], "Received: --head=-1"),
        (["neighbors", "{m}", "--train-file", "{v}", "--text", "a", "-k", "0"], "Received: -k=0"),
        (["generate", "{m}", "--prompt-ids", "1,2", "--max-new-tokens", "0"],
         "Received: --max-new-tokens=0"),
        (["lens", "{m}", "--prompt-ids", "1,2", "--top-k", "0"], "Received: --top-k=0"),
        (["profile", "{m}", "--batch-size", "0"], "Received: --batch-size=0"),
        (["profile", "{m}", "--depth", "-1"], "Received: --depth=-1"),
        (["influence", "{m}", "--checkpoints", ".", "--train-file", "{v}", "--text", "a",
          "--learning-rate", "-0.1"], "Received: --learning-rate=-0.1"),
        (["influence", "{m}", "--checkpoints", ".", "--train-file", "{v}", "--text", "a",
          "--projection-dim", "0"], "Received: --projection-dim=0"),
        (["demo", "--n-train", "0", "--output-dir", "out"], "Received: --n-train=0"),
        (["demo", "--task", "lm", "--lm-n-test", "0", "--output-dir", "out"],
         "Received: --lm-n-test=0"),
        (["explain", "{m}", "--text-file", "missing.txt"], "--text-file: no such file"),
        (["explain", "{m}", "--text", "a", "--vocab", "nope.txt"], "--vocab: no such file"),
        (["explain", "{m}", "--text", "a", "--sequence-length", "1"],
         "argument `--sequence-length`, expected an integer >= 2"),
        (["explain", "{m}", "--custom-objects", "gone.py", "--text", "a"],
         "--custom-objects: no such file"),
    ],
)
def test_cli_bad_flags_one_line_nothing_written(cli, files, tmp_path, argv, message):
    argv = [a.format(m=files / "model.keras", v=files / "vocab.txt") for a in argv]
    status, _, err = cli(*argv)
    assert status == 2
    assert message in _line(err)
    assert not [p for p in os.listdir(tmp_path) if p != "missing.txt"]


def test_cli_zip_bomb_model(cli, files, tmp_path):
    status, _, err = cli("explain", files / "bomb.keras", "--vocab", files / "vocab.txt",
                         "--text", "a film", "--output-dir", "out")  # fmt: skip
    assert status == 2 and "zip bomb" in _line(err) and "64.0 MiB" in err
    assert not (tmp_path / "out").exists()


def test_cli_model_that_is_a_directory(cli, tmp_path):
    (tmp_path / "m.keras").mkdir()
    status, _, err = cli("profile", "m.keras")
    assert status == 2 and "argument `MODEL`, expected a file, not a directory" in _line(err)


def test_cli_output_dir_that_is_a_file(cli, files, tmp_path):
    (tmp_path / "out").write_text("x")
    status, _, err = cli("explain", files / "model.keras", "--vocab", files / "vocab.txt",
                         "--text", "a film", "--output-dir", "out")  # fmt: skip
    assert status == 2
    assert "argument `--output-dir`, expected a directory (it is a file)" in _line(err)
    assert "Received: --output-dir='out'" in err


def test_cli_output_under_a_file(cli, files, tmp_path):
    (tmp_path / "f").write_text("x")
    status, _, err = cli("lens", files / "model.keras", "--prompt-ids", "1,2",
                         "--output-dir", "f/sub/dir")  # fmt: skip
    assert status == 2 and "argument `--output-dir`" in _line(err) and "is a file" in err


def test_cli_logdir_that_is_a_file(cli, files, tmp_path):
    (tmp_path / "logs").write_text("x")
    status, _, err = cli("explain", files / "model.keras", "--vocab", files / "vocab.txt",
                         "--text", "a film", "--logdir", "logs", "--output-dir", "out")  # fmt: skip
    assert status == 2 and "argument `--logdir`" in _line(err)
    assert not (tmp_path / "out").exists()


def test_cli_late_error_writes_nothing(cli, files, tmp_path):
    # checked only once the model is loaded: the attention layer to draw
    status, _, err = cli("attention", files / "model.keras", "--vocab", files / "vocab.txt",
                         "--text", "a film", "--layer", "nope", "--output-dir", "out")  # fmt: skip
    assert status == 2 and "no attention map 'nope'" in _line(err)
    assert not (tmp_path / "out").exists()


def test_cli_success_writes_whole_files_only(cli, files, tmp_path):
    status, _, err = cli("explain", files / "model.keras", "--vocab", files / "vocab.txt",
                         "--text", "a good film", "--steps", "4", "--output-dir", "out")
    assert status == 0, err
    names = sorted(os.listdir(tmp_path / "out"))
    assert names == ["explanation_0.png", "explanations.html", "explanations.json"]
    assert json.loads((tmp_path / "out" / "explanations.json").read_text())["method"]
    assert (tmp_path / "out" / "explanation_0.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_cli_debug_anywhere_shows_the_traceback(cli, tmp_path, where):
    argv = ["explain", "missing.keras", "--text", "a"]
    argv.insert({"first": 0, "middle": 2, "last": len(argv)}[where], "--debug")
    with pytest.raises(FileNotFoundError, match="MODEL: no such file"):
        main(argv)


def test_cli_debug_after_a_literal_separator_is_an_argument(cli):
    status, _, err = cli("explain", "missing.keras", "--text", "a", "--", "--debug")
    assert status == 2 and "unrecognized arguments" in _line(err)


def test_cli_unknown_flag_and_bad_choice(cli):
    status, _, err = cli("explain", "m.keras", "--nope")
    assert status == 2 and "unrecognized arguments: --nope" in _line(err)
    status, _, err = cli("profile", "m.keras", "--sort-by", "speed")
    assert status == 2 and "invalid choice: 'speed'" in _line(err)
    status, _, err = cli("explain", "m.keras", "--steps", "many")
    assert status == 2 and "invalid int value: 'many'" in _line(err)


def test_cli_debug_in_a_subprocess_at_the_end(tmp_path):
    res = subprocess.run([sys.executable, "-m", "kerastrace", "profile", "nope.keras", "--debug"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)  # fmt: skip
    assert res.returncode != 0 and "Traceback" in res.stderr
    assert "FileNotFoundError: MODEL: no such file: nope.keras" in res.stderr
