"""`kerastrace` on models beyond the demo: custom objects, builders with sibling modules,
multi-input and keras-hub (dict input) models, vocabulary and attention-choice checks.

Most cases call `kerastrace.cli.main` in this process (fast); the ones that need a fresh
process (nothing registered or imported yet) run `python -m kerastrace`. Everything runs in
`tmp_path`.
"""

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from kerastrace.cli import main


def kerastrace(*args, cwd, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "kerastrace", *args],
        capture_output=True, text=True, cwd=cwd, timeout=timeout,
    )


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    """Run `main(argv)` in `tmp_path`; return (status, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)

    def run(*argv):
        status = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return status, out, err

    return run


def _one_error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _import(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------ a. --custom-objects

REGISTERED = '''
import keras


@keras.saving.register_keras_serializable(package="kt_cli_test")
class Doubler(keras.layers.Layer):
    def call(self, x):
        return 2.0 * x
'''

UNREGISTERED = '''
import keras


class Halver(keras.layers.Layer):
    def call(self, x):
        return 0.5 * x


CUSTOM_OBJECTS = {"Halver": Halver}
'''


def _save_with(layer, path):
    x = keras.Input((4,))
    keras.Model(x, keras.layers.Dense(2, name="fc")(layer(x))).save(path)


def test_custom_objects_file_registers_classes_in_a_fresh_process(tmp_path):
    src = tmp_path / "custom_layers.py"
    src.write_text(REGISTERED)
    _save_with(_import(src, "kt_cli_registered").Doubler(name="double"), tmp_path / "m.keras")
    res = kerastrace("profile", "m.keras", "--no-trace", "--format", "json", cwd=tmp_path)
    assert res.returncode == 2
    line = _one_error_line(res.stderr)
    assert "Doubler" in line and "--custom-objects" in line
    res = kerastrace("profile", "m.keras", "--custom-objects", "custom_layers.py", "--no-trace",
                     "--format", "json", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(res.stdout)
    assert [r["path"] for r in data["layers"]] == ["", "double", "fc"]
    assert data["total_params"] == 4 * 2 + 2


def test_custom_objects_dict_and_import_alias(cli, tmp_path):
    src = tmp_path / "halver.py"
    src.write_text(UNREGISTERED)
    _save_with(_import(src, "kt_cli_unregistered").Halver(name="half"), tmp_path / "m.keras")
    status, _, err = cli("profile", "m.keras", "--no-trace")
    assert status == 2 and "Halver" in _one_error_line(err)
    status, out, err = cli("profile", "m.keras", "--import", src, "--no-trace", "--format", "json")
    assert status == 0, err
    assert json.loads(out)["layers"][1]["class_name"] == "Halver"


@pytest.mark.parametrize(
    "text, message",
    [
        ("import keras\nraise RuntimeError('broken on purpose')\n",
         "failed to import: RuntimeError: broken on purpose"),
        ("CUSTOM_OBJECTS = ['not', 'a', 'dict']\n", "`CUSTOM_OBJECTS` must be a dict"),
    ],
)
def test_custom_objects_errors_name_the_file(cli, tmp_path, text, message):
    src = tmp_path / "bad_objects.py"
    src.write_text(text)
    _save_with(keras.layers.Identity(), tmp_path / "m.keras")
    (tmp_path / "v.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhi\n")
    for command in (["profile", "m.keras", "--no-trace"],
                    ["attention", "m.keras", "--text", "hi", "--vocab", "v.txt"]):
        status, _, err = cli(*command, "--custom-objects", src)
        line = _one_error_line(err)
        assert status == 2 and message in line and str(src) in line
    status, _, err = cli("profile", "m.keras", "--custom-objects", tmp_path / "missing.py")
    assert status == 2 and "--custom-objects: no such file" in _one_error_line(err)


# ------------------------------------------------------------ b. --builder siblings


def test_builder_imports_a_sibling_module(cli, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "kt_sibling_sizes.py").write_text("HIDDEN = 7\n")
    (folder / "build.py").write_text(
        "import keras\n"
        "import kt_sibling_sizes\n\n\n"
        "def make():\n"
        "    return keras.Sequential([keras.Input((3,)),\n"
        "                             keras.layers.Dense(kt_sibling_sizes.HIDDEN, name='fc')])\n"
    )
    before = list(sys.path)
    status, out, err = cli("profile", "--builder", f"{folder / 'build.py'}:make", "--no-trace",
                           "--format", "json")  # fmt: skip
    assert status == 0, err
    data = json.loads(out)
    assert data["total_params"] == 3 * 7 + 7
    assert data["layers"][1]["flops"] == 2 * 3 * 7 + 7
    assert sys.path == before  # the folder is only on the path while the builder runs
    (folder / "broken.py").write_text("import kt_no_such_module_here\n")
    status, _, err = cli("profile", "--builder", f"{folder / 'broken.py'}:make")
    line = _one_error_line(err)
    assert status == 2 and "broken.py" in line and "kt_no_such_module_here" in line


# ------------------------------------------------------------ c. several inputs


@pytest.fixture
def two_inputs(tmp_path):
    a = keras.Input((5,), name="a")
    b = keras.Input((3,), name="b", dtype="int32")
    h = keras.layers.Concatenate(name="cat")([a, keras.ops.cast(b, "float32")])
    keras.Model([a, b], keras.layers.Dense(2, name="fc")(h), name="two_in").save(
        tmp_path / "two.keras"
    )
    return tmp_path / "two.keras"


def test_profile_several_inputs_by_position_and_by_name(cli, two_inputs):
    fc = 2 * 2 * 8 * 2 + 2 * 2  # batch 2, 8 features in, 2 out, plus bias
    status, out, err = cli("profile", two_inputs, "--input-shape", "5", "--input-shape", "3",
                           "--batch-size", "2", "--no-trace", "--format", "json")  # fmt: skip
    assert status == 0, err
    data = json.loads(out)
    assert data["input_shapes"] == [[2, 5], [2, 3]]
    assert {r["path"]: r["flops"] for r in data["layers"]}["fc"] == fc
    status, out, err = cli("profile", two_inputs, "--input", "b:2,3:int64", "--input", "a:2,5",
                           "--no-trace", "--format", "json")  # fmt: skip
    assert status == 0, err
    assert {r["path"]: r["flops"] for r in json.loads(out)["layers"]}["fc"] == fc


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--input", "a"], "argument `--input`, expected NAME:SHAPE[:DTYPE]"),
        (["--input", "a:2,y"], "argument `--input`, expected comma-separated"),
        (["--input", "a:2,4"], "do not fit model 'two_in'"),
        (["--input", "a:2,5:int33"], "'int33' is not a dtype"),
        (["--input", "a:2,5", "--input", "a:1,5"], "input 'a' is given twice"),
        (["--input", "c:1,3"], "`--input`: model 'two_in' has no input named 'c'"),
        (["--input-shape", "5"], "`--input-shape`: model 'two_in' has 2 inputs"),
        (["--input-shape", "5", "--input", "a:1,5"], "either --input-shape or --input"),
    ],
)
def test_profile_input_errors_are_one_line_naming_the_flag(cli, two_inputs, flags, message):
    status, _, err = cli("profile", two_inputs, *flags, "--no-trace")
    assert status == 2
    assert message in _one_error_line(err)


# ------------------------------------------------------------ d-f. keras-hub models

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "film", "was", "great", "bad", "a"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    keras_hub = pytest.importorskip("keras_hub")
    folder = tmp_path_factory.mktemp("bert")
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=12, name="bert_backbone",
    )  # fmt: skip
    model = keras_hub.models.BertTextClassifier(backbone, num_classes=3, preprocessor=None,
                                                name="bert_text_classifier")  # fmt: skip
    model.save(folder / "model.keras")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (folder / "big_vocab.txt").write_text(
        "\n".join(VOCAB + [f"word{i}" for i in range(45)]) + "\n"
    )
    return folder, model


def test_profile_keras_hub_file_in_a_fresh_process(bert, tmp_path):
    folder, model = bert
    res = kerastrace("profile", folder / "model.keras", "--input", "token_ids:2,8:int32",
                     "--input", "padding_mask:2,8", "--input", "segment_ids:2,8",
                     "--no-trace", "--format", "json", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.strip() == ""  # no compile() warning, nothing else
    data = json.loads(res.stdout)
    assert data["input_shapes"] == {k: [2, 8] for k in ("token_ids", "segment_ids",
                                                         "padding_mask")}  # fmt: skip
    assert data["total_params"] == model.count_params()
    assert sum(r["self_params"] for r in data["layers"]) == model.count_params()
    row = {r["path"]: r for r in data["layers"]}[
        "bert_backbone/transformer_layer_0/self_attention_layer/query"
    ]
    assert row["flops"] == 2 * 2 * 8 * 16 * 16 + 2 * 8 * 16
    res = kerastrace("profile", folder / "model.keras", "--no-trace", cwd=tmp_path)
    assert res.returncode == 2
    line = _one_error_line(res.stderr)
    assert "input 'token_ids' of shape (None, None)" in line and "--input" in line


def test_keras_hub_file_without_keras_hub_is_a_clear_error(bert, monkeypatch):
    from kerastrace.profiling import load_model_for_profiling

    folder, _ = bert
    monkeypatch.setitem(sys.modules, "keras_hub", None)  # `import keras_hub` now fails
    with pytest.raises(ImportError, match="keras-hub objects.*pip install keras-hub"):
        load_model_for_profiling(str(folder / "model.keras"))


def test_attention_on_keras_hub_model(cli, bert, tmp_path):
    folder, _ = bert
    status, out, err = cli("attention", folder / "model.keras", "--vocab", folder / "vocab.txt",
                           "--text", "the film was great", "--output-dir", "at")  # fmt: skip
    assert status == 0, err
    keys = ["bert_backbone/transformer_layer_0/self_attention_layer",
            "bert_backbone/transformer_layer_1/self_attention_layer"]  # fmt: skip
    # any length works: 128 tokens capped at the backbone's max_sequence_length (12)
    assert f"{keys[1]}: (1, 2, 12, 12)" in out
    w = np.load(tmp_path / "at" / "attention.npz")
    assert sorted(w.files) == sorted(k.replace("/", "__") for k in keys)
    layer0 = w[keys[0].replace("/", "__")][0]
    np.testing.assert_allclose(layer0.sum(-1), 1.0, atol=1e-5)
    assert np.abs(layer0[:, :, 6:]).max() < 1e-6  # padding (after [CLS] + 4 words + [SEP])
    summary = json.loads((tmp_path / "at" / "attention.json").read_text())
    assert summary["stacks"] == {"self": keys}
    for name in ("model_view.png", "head.png", "rollout.png"):
        assert (tmp_path / "at" / name).stat().st_size > 0
    status, out, err = cli("attention", folder / "model.keras", "--vocab", folder / "vocab.txt",
                           "--text", "a film", "--sequence-length", "7", "--output-dir", "at7")
    assert status == 0, err
    assert f"{keys[0]}: (1, 2, 7, 7)" in out


def test_explain_on_keras_hub_model(cli, bert, tmp_path):
    folder, model = bert
    status, out, err = cli("explain", folder / "model.keras", "--vocab", folder / "vocab.txt",
                           "--text", "the film was bad", "--steps", "8",
                           "--output-dir", "ex")  # fmt: skip
    assert status == 0, err
    [e] = json.loads((tmp_path / "ex" / "explanations.json").read_text())["explanations"]
    assert [w["word"] for w in e["words"]] == ["the", "film", "was", "bad"]
    ids = np.array([[2, 4, 5, 6, 8, 3] + [0] * 6])  # [CLS] the film was bad [SEP] + padding
    mask = ids != 0
    probs = model.predict({"token_ids": ids, "padding_mask": mask.astype("int32"),
                           "segment_ids": np.zeros_like(ids)}, verbose=0)  # fmt: skip
    assert e["target"] == int(np.argmax(probs[0]))


def test_attention_from_npy_on_keras_hub_model(cli, bert, tmp_path):
    folder, _ = bert
    np.save(tmp_path / "ids.npy", np.array([[2, 4, 5, 3, 0, 0]], "int32"))
    status, out, err = cli("attention", folder / "model.keras", "--npy", tmp_path / "ids.npy",
                           "--output-dir", "npy")  # fmt: skip
    assert status == 0, err
    assert "transformer_layer_1/self_attention_layer: (1, 2, 6, 6)" in out
    w = np.load(tmp_path / "npy" / "attention.npz")
    first = w[w.files[0]][0]
    assert np.abs(first[:, :, 4:]).max() < 1e-6  # id 0 is padding: masked out


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--head", "2"], "argument `--head`, expected 0 <= head < 2"),
        (["--head", "-1"], "Received: --head=-1"),
        (["--layer", "nope"], "no attention map 'nope'; choose from ['bert_backbone/"),
        (["--stack", "encoder"], "argument `--stack`, expected one of ['self']"),
        (["--sequence-length", "1"], "argument `--sequence-length`, expected an integer >= 2"),
    ],
)
def test_attention_choices_are_checked_before_writing(cli, bert, tmp_path, flags, message):
    folder, _ = bert
    status, _, err = cli("attention", folder / "model.keras", "--vocab", folder / "vocab.txt",
                         "--text", "a film", "--output-dir", "out", *flags)  # fmt: skip
    assert status == 2
    assert message in _one_error_line(err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["attention", "explain", "neighbors"])
def test_vocab_larger_than_the_embedding_is_refused(cli, bert, tmp_path, command):
    folder, _ = bert
    (tmp_path / "train.txt").write_text("the film\n")
    extra = ["--train-file", tmp_path / "train.txt"] if command == "neighbors" else [
        "--output-dir", "out"]  # fmt: skip
    status, _, err = cli(command, folder / "model.keras", "--vocab", folder / "big_vocab.txt",
                         "--text", "a film", *extra)  # fmt: skip
    assert status == 2
    line = _one_error_line(err)
    assert "`--vocab`: it has 55 tokens" in line and "'token_embedding' has 50 rows" in line
    assert not (tmp_path / "out").exists()


def test_fewer_vocab_tokens_than_embedding_rows_is_fine_for_fixed_length_models(cli, tmp_path):
    from kerastrace.testing.reference_models import build_text_classifier

    model = build_text_classifier(len(VOCAB) + 20, 6, num_layers=1)
    model.save(tmp_path / "fixed.keras")
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    status, out, err = cli("attention", "fixed.keras", "--vocab", "vocab.txt", "--text", "a film",
                           "--output-dir", "ok")  # fmt: skip
    assert status == 0, err
    assert ": (1, " in out and ", 6, 6)" in out
    status, _, err = cli("attention", "fixed.keras", "--vocab", "vocab.txt", "--text", "a film",
                         "--sequence-length", "8", "--output-dir", "no")  # fmt: skip
    assert status == 2
    assert "the model takes exactly 6 tokens. Received: 8" in _one_error_line(err)


# ------------------------------------------------------------ e. encoder-decoder stacks


def _encoder_decoder(t=5, d=8, vocab=12):
    tokens = keras.Input((t,), dtype="int32")
    x = keras.layers.Embedding(vocab, d, name="embed")(tokens)
    enc_in = keras.Input((t, d))
    encoder = keras.Model(
        enc_in, keras.layers.MultiHeadAttention(2, 4, name="self_attention")(enc_in, enc_in),
        name="encoder",
    )
    dec_in, memory = keras.Input((t, d)), keras.Input((t, d))
    h = keras.layers.MultiHeadAttention(2, 4, name="self_attention")(dec_in, dec_in)
    h = keras.layers.MultiHeadAttention(2, 4, name="cross_attention")(h, memory)
    decoder = keras.Model([dec_in, memory], h, name="decoder")
    y = decoder([x, encoder(x)])
    out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(y))
    return keras.Model(tokens, out, name="enc_dec")


def test_attention_draws_one_rollout_per_stack(cli, tmp_path):
    _encoder_decoder().save(tmp_path / "ed.keras")
    np.save(tmp_path / "ids.npy", np.array([[3, 4, 5, 6, 7]], "int32"))
    status, out, err = cli("attention", "ed.keras", "--npy", "ids.npy", "--output-dir", "all")
    assert status == 0, err
    summary = json.loads((tmp_path / "all" / "attention.json").read_text())
    assert summary["stacks"] == {"encoder": ["encoder/self_attention"],
                                 "decoder": ["decoder/self_attention"],
                                 "cross": ["decoder/cross_attention"]}  # fmt: skip
    files = set(os.listdir(tmp_path / "all"))
    assert {"rollout_encoder.png", "rollout_decoder.png"} <= files
    assert "rollout.png" not in files and "rollout_cross.png" not in files
    status, _, err = cli("attention", "ed.keras", "--npy", "ids.npy", "--stack", "encoder",
                         "--output-dir", "enc")  # fmt: skip
    assert status == 0, err
    rollouts = {f for f in os.listdir(tmp_path / "enc") if f.startswith("rollout")}
    assert rollouts == {"rollout_encoder.png"}
    status, _, err = cli("attention", "ed.keras", "--npy", "ids.npy", "--stack", "cross",
                         "--output-dir", "cross")  # fmt: skip
    assert status == 2 and "the 'cross' stack has none" in _one_error_line(err)
    assert not (tmp_path / "cross").exists()
