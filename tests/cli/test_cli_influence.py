"""`kerastrace influence`: TracIn proponents/opponents of a saved text model, in tmp_path."""

import json

import keras
import numpy as np
import pytest

from kerastrace import text
from kerastrace.cli import main
from kerastrace.influence import CheckpointRecorder, influence_for_texts
from kerastrace.testing.data import make_sentiment_corpus
from kerastrace.testing.reference_models import build_text_classifier

QUERY = "the acting was superb"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small trained run: model.keras, vocab.txt, train.tsv and two kinds of checkpoints."""
    out = tmp_path_factory.mktemp("influence_run")
    corpus = make_sentiment_corpus(80, seed=0)
    vocab = text.build_vocabulary(corpus.sentences, vocab_size=120, min_count=1)
    tokenizer = text.Tokenizer(vocab, sequence_length=16)
    ids = tokenizer.tokenize(corpus.sentences).ids
    keras.utils.set_random_seed(0)
    model = build_text_classifier(len(vocab), 16, dim=8, num_heads=2, ff_dim=8, num_layers=1)
    model.compile(keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    keras_ckpt = keras.callbacks.ModelCheckpoint(
        str(out / "keras_ckpt" / "e{epoch}.weights.h5"), save_weights_only=True)
    model.fit(ids, corpus.labels, epochs=2, batch_size=16, verbose=0,
              callbacks=[CheckpointRecorder(out / "ckpt"), keras_ckpt])
    model.save(out / "model.keras")
    text.save_vocabulary(vocab, str(out / "vocab.txt"))
    (out / "train.tsv").write_text(
        "".join(f"{y}\t{s}\n" for y, s in zip(corpus.labels.tolist(), corpus.sentences)))
    (out / "unlabelled.txt").write_text("".join(f"{s}\n" for s in corpus.sentences))
    return out, model, tokenizer, corpus


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)

    def call(*argv):
        status = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return status, out, err

    return call


def _args(run, *extra, checkpoints="ckpt", train="train.tsv"):
    out = run[0]
    return ("influence", out / "model.keras", "--checkpoints", out / checkpoints,
            "--train-file", out / train, "--vocab", out / "vocab.txt", "--text", QUERY, *extra)


def _one_error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_prints_the_proponents_and_opponents_of_the_library(run, cli):
    out, model, tokenizer, corpus = run
    status, stdout, err = cli(*_args(run, "-k", "2"))
    assert status == 0, err
    [want] = influence_for_texts(model, tokenizer, corpus.sentences, corpus.labels, [QUERY],
                                 out / "ckpt", k=2)
    lines = stdout.splitlines()
    assert lines[0] == f"query: {QUERY} (predicted class {want['predicted']})"
    assert lines[1] == "  most supported by (proponents):"
    assert lines[4] == "  most opposed by (opponents):"
    for line, e in zip(lines[2:4] + lines[5:7], want["proponents"] + want["opponents"]):
        assert line.startswith(f"    {e['rank']}. score=") and line.endswith(
            f"label={e['label']} {e['text']}")
    assert len(lines) == 7


def test_json_and_a_reused_index(run, cli, tmp_path):
    index = tmp_path / "index"
    status, stdout, err = cli(*_args(run, "-k", "3", "--format", "json", "--index-dir", index))
    assert status == 0, err
    [first] = json.loads(stdout)
    assert (index / "manifest.json").is_file()
    assert [e["rank"] for e in first["proponents"]] == [1, 2, 3]
    scores = [e["score"] for e in first["proponents"]]
    assert scores == sorted(scores, reverse=True)
    train = (run[0] / "train.tsv").read_text().splitlines()
    for e in first["proponents"] + first["opponents"]:
        label, sentence = train[e["index"]].split("\t")
        assert e["text"] == sentence and e["label"] == int(label)
    status, stdout, err = cli(*_args(run, "-k", "3", "--format", "json", "--index-dir", index))
    assert status == 0, err
    [again] = json.loads(stdout)
    for kind in ("proponents", "opponents"):
        assert [e["index"] for e in again[kind]] == [e["index"] for e in first[kind]]
        np.testing.assert_allclose([e["score"] for e in again[kind]],
                                   [e["score"] for e in first[kind]], rtol=1e-5)


def test_keras_model_checkpoint_files_need_learning_rates(run, cli):
    status, _, err = cli(*_args(run, checkpoints="keras_ckpt"))
    assert status == 2
    line = _one_error_line(err)
    assert "argument `learning_rates`" in line and "--learning-rate" in line
    status, stdout, err = cli(*_args(run, "--learning-rate", "0.01", checkpoints="keras_ckpt"))
    assert status == 0, err
    assert stdout.startswith(f"query: {QUERY}")


def test_training_file_without_labels_and_bad_k(run, cli):
    status, _, err = cli(*_args(run, train="unlabelled.txt"))
    assert status == 2 and "--train-file" in _one_error_line(err)
    status, _, err = cli(*_args(run, "-k", "0"))
    assert status == 2 and "-k" in _one_error_line(err)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--layer", "no_such_layer"], "no_such_layer"),
        (["--learning-rate", "0"], "Received: --learning-rate=0.0"),
        (["--projection-dim", "0"], "Received: --projection-dim=0"),
        (["-k", "0"], "Received: -k=0"),
    ],
)
def test_bad_flags_leave_no_index_directory(run, cli, tmp_path, extra, message):
    status, _, err = cli(*_args(run, "--index-dir", tmp_path / "index", *extra))
    assert status == 2 and message in _one_error_line(err)
    assert not (tmp_path / "index").exists()
