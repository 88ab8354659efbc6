"""Recurrent layers, while loops, conds and ops without a FLOP count.

Ops in a loop body are counted once per iteration; a floating-point op that
cannot be counted is listed with the reason, never a silent zero.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastrace.profiling import _flops, profile_model

T, F, U = 5, 3, 4  # time steps, input features, units


def _rnn(layer):
    return keras.Sequential([keras.Input((T, F)), layer], name="rnn")


@pytest.mark.parametrize("batch", [1, 2])
def test_lstm_macs_per_time_step_and_params(batch, tmp_path):
    model = _rnn(keras.layers.LSTM(U, name="lstm"))
    p = profile_model(model, batch_size=batch, logdir=str(tmp_path), warmup=1, steps=1)
    # every step: x_t @ W (F x 4U) and h @ U (U x 4U)
    assert p.total_macs == p["lstm"].macs == T * batch * (F + U) * 4 * U
    assert p.total_params == model.count_params() == 4 * (U * (F + U) + U)
    # the gates (sigmoid, tanh, products) are element-wise FLOPs of every step
    assert p.total_elementwise_flops >= T * batch * 9 * U
    assert p.total_flops == 2 * p.total_macs + p.total_elementwise_flops
    # the cell called inside the loop holds the work
    assert p["lstm/lstm_cell"].flops == p["lstm"].flops == p.total_flops
    assert p.uncounted_details == [] and p.unassigned_flops == 0
    assert p.time_available, p.time_note
    assert p.total_time_ms > 0


def test_gru_macs_and_params():
    model = _rnn(keras.layers.GRU(U, name="gru"))
    p = profile_model(model, batch_size=3, trace=False)
    assert p.total_macs == T * 3 * (F + U) * 3 * U
    assert p.total_params == model.count_params()
    assert sum(r.self_params for r in p.layers) == model.count_params()
    assert p.uncounted_details == []


def test_cumsum_is_counted_not_silently_zero():
    x = keras.Input((7,))
    y = keras.layers.Lambda(lambda t: keras.ops.cumsum(t, axis=1), name="cum")(x)
    p = profile_model(keras.Model(x, y), batch_size=2, trace=False)
    assert p["cum"].flops == 2 * 7  # one addition per element
    assert p["cum"].macs == 0
    assert p.counted_by_kerastrace == {"Cumsum": 1}
    assert p.uncounted_details == []


def test_op_without_formula_is_listed_with_reason():
    x = keras.Input((6,))
    y = keras.layers.Lambda(lambda t: keras.ops.top_k(t, 2)[0], name="top")(x)
    y = keras.layers.Dense(3, name="fc")(y)
    p = profile_model(keras.Model(x, y, name="topk"), trace=False)
    assert p.uncounted_ops == {"TopKV2": 1}
    (u,) = p.uncounted_details
    assert u["type"] == "TopKV2" and u["layer"] == "top"
    assert "no FLOP formula for TopKV2" in u["reason"]
    assert p["top"].uncounted_ops == 1 and p["fc"].uncounted_ops == 0
    assert p.layers[0].uncounted_ops == 1
    assert p["fc"].macs == 2 * 3
    table = p.to_table()
    top_row = next(ln for ln in table.splitlines() if ln.strip().startswith("top "))
    assert "*" in top_row  # a lower bound, marked
    assert "TopKV2 x1 in top: no FLOP formula for TopKV2" in table


class _Doubling(keras.layers.Layer):
    """`x <- 2 x + 1`, `n` times, in a `tf.while_loop`."""

    def __init__(self, n, **kwargs):
        super().__init__(**kwargs)
        self.n = n

    def call(self, x):
        def body(i, y):
            return i + 1, y * 2.0 + 1.0

        return tf.while_loop(lambda i, y: i < self.n, body, (tf.constant(0), x))[1]


class _UntilLarge(keras.layers.Layer):
    """Doubles `x` until its largest entry reaches 100: the trip count depends on the values."""

    def call(self, x):
        return tf.while_loop(lambda y: tf.reduce_max(y) < 100.0, lambda y: [y * 2.0], [x])[0]


class _Growing(keras.layers.Layer):
    """A loop whose tensor doubles in width every iteration."""

    def call(self, x):
        def body(i, y):
            return i + 1, tf.concat([y, y * 2.0], axis=1)

        invariants = (tf.TensorShape([]), tf.TensorShape([None, None]))
        return tf.while_loop(lambda i, y: i < 3, body, (tf.constant(0), x),
                             shape_invariants=invariants)[1]  # fmt: skip


def test_while_loop_in_custom_layer_counts_every_iteration():
    n, width = 4, 5
    x = keras.Input((width,))
    loop = _Doubling(n, name="loop")
    y = keras.layers.Dense(2, name="fc")(loop(x))
    model = keras.Model(x, y)
    p = profile_model(model, batch_size=3, trace=False)
    # per iteration: one multiply and one add per element; the int counter is not a FLOP
    assert p["loop"].flops == n * 2 * 3 * width
    assert p["loop"].macs == 0
    assert p["fc"].macs == 3 * width * 2
    assert p.total_params == model.count_params()
    assert p.uncounted_details == []


def test_value_dependent_trip_count_is_the_one_that_ran():
    width = 4
    x = keras.Input((width,))
    model = keras.Model(x, _UntilLarge(name="grow")(x))
    p = profile_model(model, inputs=np.ones((1, width), "float32"), trace=False)
    # 1 -> 2 -> ... -> 128: 7 doublings, 8 tests (max over the row, then one comparison)
    assert p["grow"].flops == 7 * width + 8 * width + 8
    assert p.uncounted_details == []


def test_loop_with_changing_shape_is_listed():
    x = keras.Input((2,))
    p = profile_model(keras.Model(x, _Growing(name="grow")(x)), trace=False)
    (u,) = p.uncounted_details
    assert u["type"] == "Mul" and u["layer"] == "grow"
    assert "shape changes from one iteration to the next" in u["reason"]
    assert p.total_params == 0
    assert "Mul x1 in grow: inside a loop" in p.to_table()


def test_failed_run_lists_loop_ops_and_keeps_params(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated session failure")

    monkeypatch.setattr(_flops, "run_graph", boom)
    model = _rnn(keras.layers.LSTM(U, name="lstm"))
    p = profile_model(model, trace=False)
    assert p.total_params == model.count_params()
    assert p.uncounted_details
    assert all("simulated session failure" in u["reason"] for u in p.uncounted_details)
    assert {u["type"] for u in p.uncounted_details} >= {"MatMul", "Sigmoid"}
    assert p["lstm"].uncounted_ops == len(p.uncounted_details)


class _Branch(keras.layers.Layer):
    def call(self, x):
        return tf.cond(tf.reduce_sum(x) > 0.0, lambda: tf.exp(x), lambda: tf.tanh(x) * 3.0)


def test_cond_counts_the_branch_that_ran():
    x = keras.Input((5,))
    model = keras.Model(x, _Branch(name="branch")(x))
    pos = profile_model(model, inputs=np.ones((1, 5), "float32"), trace=False)
    neg = profile_model(model, inputs=-np.ones((1, 5), "float32"), trace=False)
    test = 4 + 1  # reduce_sum over 5 (4 additions), one comparison
    assert pos["branch"].flops == test + 5  # exp
    assert neg["branch"].flops == test + 5 + 5  # tanh, then * 3
    assert pos.uncounted_details == neg.uncounted_details == []


def test_flop_counting_failure_keeps_params_and_time(monkeypatch, tmp_path, caplog):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated counting failure")

    monkeypatch.setattr(_flops, "count_graph", boom)
    model = _rnn(keras.layers.LSTM(U, name="lstm"))
    with caplog.at_level("WARNING", logger="kerastrace.profiling"):
        p = profile_model(model, logdir=str(tmp_path), warmup=0, steps=1)
    assert p.total_params == model.count_params()
    assert p.time_available, p.time_note
    assert p.total_flops == 0 and p.total_macs == 0
    (u,) = p.uncounted_details
    assert "simulated counting failure" in u["reason"] and u["layer"] == ""
    assert p.layers[0].uncounted_ops == 1
    assert "simulated counting failure" in caplog.text
    assert "(all ops) x1 in rnn: counting FLOPs failed" in p.to_table()
