"""Measured time from a real tf.profiler trace, memory, and trace failures."""

import glob
import logging
import os

import keras
import pytest
import tensorflow as tf

from kerastrace.layers import TransformerBlock
from kerastrace.profiling import ProfilerBusyError, profile_model
from kerastrace.profiling import core as core_module


def _model():
    x = keras.Input((16, 32))
    h, w = TransformerBlock(4, 64, name="blk")(x)
    h = keras.layers.MultiHeadAttention(2, 16, name="mha")(h, h)
    out = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling1D()(h))
    return keras.Model(x, [out, w], name="tiny")


def test_trace_assigns_time_to_layers(tmp_path):
    p = profile_model(_model(), logdir=str(tmp_path), warmup=1, steps=2)
    assert p.time_available, p.time_note
    # TensorBoard's profile plugin layout
    assert p.trace_dir.startswith(os.path.join(str(tmp_path), "plugins", "profile"))
    assert glob.glob(os.path.join(p.trace_dir, "*.xplane.pb"))
    assert p.assigned_time_share >= 0.95
    root = p.layers[0]
    assert root.time_ms + p.unassigned_time_ms == pytest.approx(p.total_time_ms)
    assert sum(r.self_time_ms for r in p.layers) + p.unassigned_time_ms == pytest.approx(
        p.total_time_ms
    )
    for name in ("blk/attention", "blk/ffn_inner", "mha", "head"):
        assert p[name].time_ms > 0, name
    assert p["blk"].time_ms >= p["blk/attention"].time_ms
    assert 0 < p["blk"].time_share <= 1
    assert p.step_time_ms > 0


def test_memory_columns(tmp_path):
    p = profile_model(_model(), logdir=str(tmp_path), warmup=1, steps=1, batch_size=2)
    assert p["head"].output_bytes == 2 * 3 * 4
    assert p["blk/attention"].output_bytes == 2 * 16 * 32 * 4 + 2 * 4 * 16 * 16 * 4
    assert p.param_bytes == 4 * p.total_params
    # Either a real peak, or None with the device's reason: never a fake 0.
    assert p.peak_memory_bytes is None or p.peak_memory_bytes > 0
    assert p.memory_note


def test_failing_trace_keeps_flops_table(monkeypatch, tmp_path, caplog):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated trace failure")

    monkeypatch.setattr(core_module._trace, "capture", boom)
    with caplog.at_level(logging.WARNING, logger="kerastrace.profiling"):
        p = profile_model(_model(), logdir=str(tmp_path), warmup=0, steps=1)
    assert not p.time_available
    assert "simulated trace failure" in p.time_note
    assert "trace failed" in caplog.text
    assert p["head"].flops == 2 * 32 * 3 + 3
    assert p["head"].time_ms is None
    assert "n/a" in p.to_table() and "unavailable" in p.to_table()


def test_profiler_already_running_is_a_clear_error(tmp_path):
    tf.profiler.experimental.start(str(tmp_path / "other"))
    try:
        with pytest.raises(RuntimeError, match="already running.*trace=False"):
            profile_model(_model(), logdir=str(tmp_path))
        assert isinstance(ProfilerBusyError("x"), RuntimeError)
        # FLOPs only still works while someone else traces
        assert profile_model(_model(), trace=False).total_flops > 0
    finally:
        tf.profiler.experimental.stop()
