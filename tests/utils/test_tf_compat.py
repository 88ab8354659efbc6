"""Every private TensorFlow behaviour kerastrace relies on, one test each.

`kerastrace._utils.tf_compat` is the only module that touches TensorFlow
internals; when a TensorFlow upgrade changes one of them, the test named
after it fails here rather than an analysis going quietly wrong elsewhere.
"""

import glob
import io
import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from kerastrace._utils import tf_compat

# ---------------------------------------------------------------- functions


def test_function_keys_the_retracing_detector_per_instance():
    # One closure per model (same code): plain tf.function logs "retracing" after a few.
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.WARNING)  # another test may have raised it
    logger.addHandler(handler)
    try:

        def make(k, wrap):
            def scaled(x):
                return x * k

            return wrap(scaled)

        for k in range(8):
            assert float(make(float(k), tf_compat.function)(tf.constant(2.0))) == 2.0 * k
        compat_log = buf.getvalue()
        for k in range(8):
            make(float(k), tf.function)(tf.constant(2.0))
        plain_log = buf.getvalue()[len(compat_log):]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert "retracing" not in compat_log
    assert "retracing" in plain_log  # the warning the wrapper avoids still exists


def test_call_compiled_uses_call_flat_and_matches_a_regular_call():
    w = tf.Variable([[1.0, 2.0], [3.0, 4.0]])
    fn = tf_compat.function(
        lambda a, b: tf.matmul(a, w) + b,
        input_signature=[tf.TensorSpec((None, 2)), tf.TensorSpec((2,))],
    )
    a, b = tf.constant([[1.0, 1.0]]), tf.constant([0.5, -0.5])
    cf = tf_compat.concrete(fn)
    assert tf_compat.concrete(fn) is cf  # cached
    assert callable(getattr(cf, "_call_flat", None))  # the fast path exists
    assert cf.captured_inputs  # the variable is passed as a captured input
    got = tf_compat.call_compiled(fn, [a, b])
    got = got[0] if isinstance(got, (list, tuple)) else got
    np.testing.assert_allclose(got.numpy(), fn(a, b).numpy())
    np.testing.assert_allclose(got.numpy(), [[4.5, 5.5]])


# ------------------------------------------------------------ TF1 profiler


def test_silenced_deprecations_silences_and_restores():
    from tensorflow.python.util import deprecation

    @deprecation.deprecated(None, "Use something else.")
    def old_api():
        return 1

    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.WARNING)  # another test may have raised it
    logger.addHandler(handler)
    try:
        with tf_compat.silenced_deprecations():
            assert old_api() == 1
        silenced = buf.getvalue()
        assert old_api() == 1
        after = buf.getvalue()[len(silenced):]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert "deprecated" not in silenced
    assert "deprecated" in after  # logged again outside the context


@pytest.mark.parametrize(
    "op_type, registered",
    [("MatMul", True), ("Conv2D", True), ("Conv2DBackpropInput", True), ("AddV2", True),
     ("Einsum", False), ("Relu", False), ("Cumsum", False), ("TopKV2", False)],
)  # fmt: skip
def test_has_flops_stat(op_type, registered):
    # kerastrace counts the unregistered compute ops itself (or lists them)
    assert tf_compat.has_flops_stat(op_type) is registered


def test_freeze_turns_variables_into_constants_keeps_names_and_lowers_loops():
    w = tf.Variable(tf.ones((3, 2)))

    @tf.function
    def forward(x):
        with tf.name_scope("layer"):
            y = tf.matmul(x, w)
        return tf.while_loop(lambda i, t: i < 3, lambda i, t: (i + 1, t * 2.0), (0, y))[1]

    cf = forward.get_concrete_function(tf.TensorSpec((1, 3)))
    frozen = tf_compat.freeze(cf)
    types = {op.type for op in frozen.graph.get_operations()}
    assert not types & {"ReadVariableOp", "VarHandleOp"}
    assert "layer/MatMul" in {op.name for op in frozen.graph.get_operations()}
    assert {"Enter", "Exit", "NextIteration"} <= types  # v1 frames: one body, run N times
    x = tf.constant([[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(frozen(x)[0].numpy(), cf(x).numpy())
    np.testing.assert_allclose(cf(x).numpy(), [[48.0, 48.0]])


# ------------------------------------------------------- profiler sessions


def test_profiler_session_active_step_trace_and_xplane(tmp_path):
    assert not tf_compat.profiler_session_active()
    tf.profiler.experimental.start(str(tmp_path))
    try:
        assert tf_compat.profiler_session_active()
        for i in range(2):
            with tf_compat.step_trace("kerastrace_step", i):
                tf.linalg.matmul(tf.ones((64, 64)), tf.ones((64, 64))).numpy()
    finally:
        tf.profiler.experimental.stop()
    assert not tf_compat.profiler_session_active()
    (plane_file,) = glob.glob(os.path.join(str(tmp_path), "plugins", "profile", "*", "*.xplane.pb"))
    space = tf_compat.xplane_pb2().XSpace()
    with open(plane_file, "rb") as f:
        space.ParseFromString(f.read())
    steps = [
        ev.duration_ps
        for plane in space.planes
        for line in plane.lines
        for ev in line.events
        if plane.event_metadata[ev.metadata_id].name == "kerastrace_step"
    ]
    assert len(steps) == 2 and all(d > 0 for d in steps)


# ------------------------------------------------------------------ Philox


def test_philox_normal_is_stateless_normal():
    seed = tf.constant([7, 3], tf.int64)
    key, counter, alg = tf_compat.philox_key_counter(seed)
    got = tf_compat.philox_normal(tf.constant([10], tf.int64), key, counter, alg)
    np.testing.assert_array_equal(got.numpy(), tf.random.stateless_normal([10], seed).numpy())


@pytest.mark.parametrize("skip", [1, 3])
def test_philox_counter_step_skips_four_numbers(skip):
    # `_noise` draws block `k` of a long stream by advancing the counter, not drawing before it.
    seed = tf.constant([11, 0], tf.int64)
    full = tf.random.stateless_normal([4 * skip + 8], seed).numpy()
    key, counter, alg = tf_compat.philox_key_counter(seed)
    step = tf.constant([skip, 0], tf.int64)
    counter = tf.bitcast(tf.bitcast(counter, tf.int64) + step, tf.uint64)
    got = tf_compat.philox_normal(tf.constant([8], tf.int64), key, counter, alg)
    np.testing.assert_array_equal(got.numpy(), full[4 * skip:])


def test_philox_inside_tf_function():
    @tf.function
    def draw(seed):
        key, counter, alg = tf_compat.philox_key_counter(seed)
        return tf_compat.philox_normal(tf.constant([5], tf.int64), key, counter, alg)

    seed = tf.constant([1, 2], tf.int64)
    np.testing.assert_array_equal(draw(seed).numpy(),
                                  tf.random.stateless_normal([5], seed).numpy())  # fmt: skip
