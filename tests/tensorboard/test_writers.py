import logging
import os
import re
import shutil

import numpy as np
import pytest
from _tb_events import read_events

from kerastrace.attention import head_statistics
from kerastrace.tensorboard import (
    get_writer,
    write_attention,
    write_head_statistics,
    write_profile,
    write_token_attributions,
)
from kerastrace.tensorboard._writers import SummaryWriteError


def _png_size(value):
    w, h = int(value[0]), int(value[1])
    assert value[2][:8] == b"\x89PNG\r\n\x1a\n"
    return w, h


def test_write_attention_images(tmp_path):
    w = {"block/attention": np.full((2, 2, 4, 4), 0.25), "mha": np.eye(4)[None, None].repeat(2, 0)}
    tags = write_attention(tmp_path, w, list("abcd"), step=3, mask=[[1, 1, 1, 0], [1, 1, 1, 1]])
    assert tags == ["attention/model_view", "attention/block/attention", "attention/mha"]
    ev = read_events(tmp_path)
    assert set(tags) <= set(ev)
    step, value = ev["attention/model_view"][0]
    assert step == 3
    w_px, h_px = _png_size(value)
    assert w_px > 100 and h_px > 100


def test_write_token_attributions_image_and_text(tmp_path):
    scores = np.array([[0.1, -2.0, 0.5, 9.0], [1.0, 0.0, 0.0, 0.0]])
    toks = [["a", "b", "c", "pad"], ["w", "x", "y", "z"]]
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
    tags = write_token_attributions(tmp_path, scores, toks, step=2, mask=mask, top_k=2)
    ev = read_events(tmp_path)
    assert tags == [
        "attributions/example_0",
        "attributions/example_0/text",
        "attributions/example_1",
        "attributions/example_1/text",
    ]
    step, text = ev["attributions/example_0/text"][0]
    assert step == 2
    lines = text.splitlines()
    assert lines[0] == "a **b** **c**"  # pad masked out, top-2 by |score| in bold
    assert "| 1 | b | -2 |" in text and "pad" not in text
    _png_size(ev["attributions/example_0"][0][1])


def test_write_head_statistics_values(tmp_path):
    w = np.full((1, 2, 4, 4), 0.25)
    stats = head_statistics({"l": w}, special=[0])
    tags = write_head_statistics(str(tmp_path), stats, step=5, image=True)
    ev = read_events(tmp_path)
    assert ev["heads/entropy/l/head_1"] == [(5, pytest.approx(np.log(4), abs=1e-6))]
    assert ev["heads/special_share/l/head_0"] == [(5, pytest.approx(0.25))]
    assert ev["heads/distance/l/head_0"][0][1] == pytest.approx(1.25)
    assert "heads/entropy_chart" in tags and "heads/entropy_chart" in ev


def test_write_profile_duck_typed(tmp_path):
    class Row:
        def __init__(self, path, flops, t):
            self.path, self.flops, self.time_ms, self.class_name, self.params = (
                path,
                flops,
                t,
                "X",
                3,
            )

    class Profile:
        rows = [Row("block/attention", 1200, 0.5), Row("head", 40, 0.01)]

    write_profile(tmp_path, Profile(), step=1)
    ev = read_events(tmp_path)
    table = ev["profile/table"][0][1]
    assert "| block/attention | X | 3 | 1200 | 0.5 |" in table
    _png_size(ev["profile/chart"][0][1])


def test_writer_argument_and_step_validation(tmp_path):
    writer = get_writer(tmp_path)
    assert get_writer(str(tmp_path)) is writer and get_writer(writer) is writer
    with pytest.raises(TypeError, match="logdir_or_writer"):
        write_profile(42, [{"path": "a"}])
    with pytest.raises(ValueError, match="step"):
        write_head_statistics(tmp_path, {"x": 1.0}, step=-1)


def test_fast_style_grid_pixels(tmp_path):
    from kerastrace.tensorboard import attention_grid_image

    w = np.zeros((1, 2, 3, 3))
    w[0, 0] = np.eye(3)
    w[0, 1] = 1 / 3
    img = attention_grid_image({"l": w}, mask=[1, 1, 0], cell=10)
    # 2 masked-out positions -> 2x2 cells of 5 px, 2 px separators
    assert img.shape == (1, 2 + 10 + 2, 2 + 2 * (10 + 2), 3) and img.dtype == np.uint8
    cell0 = img[0, 2:12, 2:12]
    np.testing.assert_array_equal(cell0[0, 0], cell0[9, 9])  # diagonal: max colour
    assert not np.array_equal(cell0[0, 0], cell0[0, 9])  # off-diagonal: min colour
    tags = write_attention(
        tmp_path, {"l": w}, ["a", "b", "c"], step=1, mask=[1, 1, 0], style="fast"
    )
    ev = read_events(tmp_path)
    assert tags == ["attention/model_view", "attention/l", "attention/tokens"]
    assert ev["attention/tokens"][0][1].endswith("tokens: a b")
    assert _png_size(ev["attention/model_view"][0][1]) == (
        2 + 2 * (96 + 2),
        2 + 96 + 2,
    )  # default cell=96
    with pytest.raises(ValueError, match="style"):
        write_attention(tmp_path, {"l": w}, style="nope")


def test_token_attributions_special_tokens_and_escaping(tmp_path):
    scores = np.array([9.0, 1.0, -3.0, 2.0, 8.0])
    toks = ["[CLS]", "<script>x</script>", "**", "a|b", "[SEP]"]
    special = np.array([1, 0, 0, 0, 1], bool)
    write_token_attributions(tmp_path, scores, toks, special=special, top_k=2)
    text = read_events(tmp_path)["attributions/example_0/text"][0][1]
    lines = text.splitlines()
    # special tokens shown, never ranked; user text shown literally, never as markup
    assert lines[0] == r"\[CLS\] &lt;script&gt;x&lt;/script&gt; **\*\*** **a\|b** \[SEP\]"
    assert lines[4:] == [r"| 1 | \*\* | -3 |", r"| 2 | a\|b | 2 |"]
    assert "<script>" not in text
    with pytest.raises(ValueError, match="`special`"):
        write_token_attributions(tmp_path, scores, toks, special=[True, False])
    write_attention(tmp_path / "f", {"l": np.full((1, 1, 2, 2), 0.5)}, ["<i>", "b"], style="fast")
    assert read_events(tmp_path / "f")["attention/tokens"][0][1].endswith("tokens: &lt;i&gt; b")


# ------------------------------------------------------------ writers that notice
def _deleting(path, at_epoch):
    import keras

    class Delete(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == at_epoch:
                shutil.rmtree(path)  # a notebook's `!rm -rf logs` between epochs

    return Delete()


def test_deleted_log_directory_gets_a_new_writer(tmp_path, caplog):
    logdir = tmp_path / "logs"
    first = get_writer(logdir)
    write_head_statistics(logdir, {"x": 1.0}, step=0)
    shutil.rmtree(logdir)
    with caplog.at_level(logging.WARNING):
        write_head_statistics(logdir, {"x": 2.0}, step=1)  # used to vanish silently
    assert get_writer(logdir) is not first and logdir.is_dir()
    assert read_events(logdir) == {"heads/x": [(1, 2.0)]}
    assert any("deleted or replaced" in r.getMessage() for r in caplog.records)
    # replaced by another directory of the same name: also a new writer
    second = get_writer(logdir)
    shutil.rmtree(logdir)
    logdir.mkdir()
    assert get_writer(logdir) is not second


def test_monitors_keep_logging_after_the_directory_is_deleted(tiny_classifier, tmp_path):
    from kerastrace.tensorboard import AttentionMonitor, GradientFlow

    model, ids, y = tiny_classifier
    logdir = tmp_path / "logs"
    att = AttentionMonitor(logdir, ids[:2], write_images=False)
    flow = GradientFlow(logdir, (ids[:4], y[:4]), histograms=False)
    model.fit(ids, y, epochs=3, verbose=0, callbacks=[_deleting(logdir, 2), att, flow])
    assert att.failures == 0 and flow.failures == 0
    ev = read_events(logdir)  # only what was written after the deletion, at epoch 2
    assert [s for s, _ in ev["heads/entropy/block/attention/head_0"]] == [2]
    assert [s for s, _ in ev["gradient_norm/head"]] == [2]
    assert ev["gradient_norm/head"][0][1] == pytest.approx(flow.last_norms["head"], rel=1e-5)


def _unwritable(tmp_path):
    """A log directory path that cannot be written: chmod 0o500, or a file when root."""
    parent = tmp_path / "ro"
    parent.mkdir()
    os.chmod(parent, 0o500)
    probe = parent / "probe"
    try:
        probe.mkdir()  # root ignores the mode: simulate with a file where the directory goes
    except PermissionError:
        return parent / "logs", "Permission denied"
    probe.rmdir()
    os.chmod(parent, 0o700)
    (parent / "logs").write_text("not a directory")
    return parent / "logs", "not a directory"


def test_unwritable_log_directory_is_a_clear_error(tmp_path):
    logdir, reason = _unwritable(tmp_path)
    with pytest.raises(SummaryWriteError, match=f"{re.escape(repr(str(logdir)))}.*{reason}"):
        write_head_statistics(logdir, {"x": 1.0})
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match="it is a file, not a directory"):
        get_writer(tmp_path / "file")


def test_write_errors_count_as_monitor_failures_logged_once(tiny_classifier, tmp_path, caplog):
    from kerastrace.tensorboard import AttentionMonitor, GradientFlow

    model, ids, y = tiny_classifier
    logdir, reason = _unwritable(tmp_path)
    att = AttentionMonitor(logdir, ids[:2], write_images=False)
    flow = GradientFlow(logdir, (ids[:4], y[:4]), histograms=False)
    with caplog.at_level(logging.ERROR):
        model.fit(ids, y, epochs=3, verbose=0, callbacks=[att, flow])
    assert att.failures == 3  # every epoch, and training went on
    # GradientFlow's start-of-training check builds its writer: it fails there, once,
    # and turns the monitor off for this run
    assert flow.failures == 1 and list(flow.disabled) == ["gradients"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2  # once per monitor
    assert all("Cannot write TensorBoard summaries" in m and reason in m for m in errors)


def test_full_disk_on_flush_is_a_failure_and_the_next_epoch_writes_again(tiny_classifier,
                                                                          tmp_path, caplog):
    import tensorflow as tf

    from kerastrace.tensorboard import AttentionMonitor

    model, ids, y = tiny_classifier
    logdir = tmp_path / "logs"
    broken = get_writer(logdir)

    def full(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(
            None, None, f"{logdir}/events.out.tfevents.x; No space left on device\n\tFailed "
            "to flush 2 events to FlushSummaryWriter")

    broken.flush = full  # what TensorFlow raises when the disk is full (checked by hand)
    att = AttentionMonitor(logdir, ids[:2], write_images=False)
    with caplog.at_level(logging.ERROR):
        model.fit(ids, y, epochs=2, verbose=0, callbacks=[att])
    assert att.failures == 1
    [message] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "No space left on device" in message and str(logdir) in message
    assert get_writer(logdir) is not broken  # forgotten after the error
    ev = read_events(logdir)
    assert 1 in [s for s, _ in ev["heads/entropy/block/attention/head_0"]]
