import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from _tb_events import read_events

import kerastrace.tensorboard as ktb
from kerastrace.attention import collect, head_statistics
from kerastrace.attribution import gradient_x_embedding
from kerastrace.attribution.metrics import jaccard_top_k
from kerastrace.tensorboard import (
    AttentionMonitor,
    AttributionMonitor,
    GradientFlow,
    ProfileCallback,
)


def test_attention_monitor_scalars_images_and_period(tiny_classifier, tmp_path):
    model, ids, y = tiny_classifier
    probe = ids[:2]
    mon = AttentionMonitor(
        tmp_path, probe, every_n_epochs=2, tokens=[str(t) for t in probe[0]], pad_id=0, special=[0]
    )
    model.fit(ids, y, epochs=4, batch_size=16, verbose=0, callbacks=[mon])
    assert mon.failures == 0
    ev = read_events(tmp_path)
    ent = ev["heads/entropy/block/attention/head_0"]
    assert [s for s, _ in ent] == [1, 3]  # epochs 2 and 4 (0-based steps 1, 3)
    # Oracle: statistics recomputed from the final model, masked over padding.
    ref = head_statistics(collect(model, probe), mask=probe != 0, special=[0])
    assert ent[-1][1] == pytest.approx(ref.entropy[0, 0], abs=1e-5)
    assert ent[-1][1] <= np.log(4) + 1e-6  # at most log(#unmasked keys)
    assert "heads/special_share/block/attention/head_1" in ev
    assert [s for s, _ in ev["attention/model_view"]] == [1, 3]
    assert "attention/block/attention" in ev


def _errors(caplog):
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_failures_logged_once_counted_and_disabled(tmp_path, caplog):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = np.ones((8, 3), "float32"), np.zeros((8, 1), "float32")
    mon = AttentionMonitor(tmp_path, x)  # no attention layer: the start check fails
    bad = AttributionMonitor(tmp_path, x, attribution_fn=lambda m, i: 1 / 0)
    with caplog.at_level(logging.ERROR):
        hist = model.fit(x, y, epochs=3, verbose=0, callbacks=[mon, bad])
    assert len(hist.history["loss"]) == 3
    # The check failed once at train begin and turned the monitor off: no epoch retries.
    assert mon.failures == 1 and list(mon.disabled) == ["attention"]
    # A later failure is retried (and counted) every epoch but logged once.
    assert bad.failures == 3 and not bad.disabled
    errors = _errors(caplog)
    assert len(errors) == 2
    first, second = (r.getMessage() for r in errors)
    assert first.startswith("AttentionMonitor.on_train_begin failed: ValueError: Model ")
    assert "has no attention layer" in first and "strict=True" in first
    assert errors[0].exc_info is None  # a check's message says it all: no traceback
    assert second.startswith("AttributionMonitor.on_epoch_end failed: ZeroDivisionError")
    assert "ZeroDivisionError" in (errors[1].exc_text or "")  # user code: traceback kept


def test_strict_raises_out_of_fit(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = np.ones((8, 3), "float32"), np.zeros((8, 1), "float32")
    with pytest.raises(ValueError, match="has no attention layer"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[AttentionMonitor(tmp_path, x, strict=True)])
    bad = AttributionMonitor(tmp_path, x, attribution_fn=lambda m, i: 1 / 0, strict=True)
    with pytest.raises(ZeroDivisionError):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[bad])
    assert bad.failures == 0
    with pytest.raises(ValueError, match="strict"):
        GradientFlow(tmp_path, (x, y), strict="yes")


def test_pad_and_special_ids_need_token_ids(tmp_path):
    images = np.zeros((2, 4, 4, 3), "float32")
    with pytest.raises(ValueError, match=r"`pad_id`.*Received: pad_id=0.*probe_inputs: float32"):
        AttentionMonitor(tmp_path, images, pad_id=0)
    with pytest.raises(ValueError, match="`special_ids`"):
        AttributionMonitor(tmp_path, images, special_ids=[101])
    with pytest.raises(ValueError, match="`special`"):
        AttributionMonitor(tmp_path, np.ones((1, 3), "int32"), special=[[0.5]])


def test_attribution_monitor_jaccard_and_default_fn(tiny_classifier, tmp_path):
    model, ids, y = tiny_classifier
    seq = iter(
        [
            np.array([[5.0, 4, 3, 0, 1, 0]]),
            np.array([[5.0, 4, 0, 3, 0, 1]]),
            np.array([[0.0, 1, 3, 0, 4, 5]]),
        ]
    )
    mon = AttributionMonitor(
        tmp_path / "a", ids[:1], attribution_fn=lambda m, i: next(seq), top_k=3, write_images=False
    )
    model.fit(ids, y, epochs=3, verbose=0, callbacks=[mon])
    # top-3 sets: {0,1,2} -> {0,1,3}: 2/4 ; {0,1,3} -> {5,4,2}: 0/6
    assert mon.history == [pytest.approx(0.5), pytest.approx(0.0)]
    ev = read_events(tmp_path / "a")
    assert ev["attributions/top_3_jaccard"] == [(1, 0.5), (2, 0.0)]

    mon2 = AttributionMonitor(tmp_path / "b", ids[:2], pad_id=0, tokens=None)
    model.fit(ids, y, epochs=2, verbose=0, callbacks=[mon2])
    assert mon2.failures == 0 and mon2.last_scores.shape == (2, 6)
    ev = read_events(tmp_path / "b")
    assert "attributions/example_1/text" in ev and "attributions/top_3_jaccard" in ev
    assert 0.0 <= ev["attributions/top_3_jaccard"][0][1] <= 1.0


def test_gradient_x_embedding_matches_finite_difference():
    keras.utils.set_random_seed(3)
    inp = keras.Input((3,), dtype="int32")
    e = keras.layers.Embedding(10, 2, name="emb")(inp)
    out = keras.layers.Dense(1)(keras.layers.Flatten()(e))
    model = keras.Model(inp, out)
    ids = np.array([[1, 2, 3]])
    scores = gradient_x_embedding(model, ids, target=0)
    # linear model: score = sum_t e_t . w_t + b  ->  grad x input per token = e_t . w_t
    emb = model.get_layer("emb").embeddings.numpy()[ids[0]]
    w = model.layers[-1].kernel.numpy().reshape(3, 2)
    np.testing.assert_allclose(scores[0], (emb * w).sum(-1), rtol=1e-5)
    assert "call" not in model.get_layer("emb").__dict__


def test_jaccard_helper_respects_mask():
    a = np.array([[9.0, 1, 2, 8]])
    b = np.array([[9.0, 8, 1, 2]])
    assert jaccard_top_k(a, b, 2) == pytest.approx(1 / 3)
    assert jaccard_top_k(a, b, 2, mask=np.array([[1, 1, 1, 0]], bool)) == pytest.approx(1 / 3)
    assert jaccard_top_k(a, a, 2) == 1.0
    # by hand: top-2 of a = {0, 3}, of b = {0, 1}; with position 3 masked a -> {0, 2}
    assert jaccard_top_k(a[0], b[0], 1) == 1.0  # 1-D rows accepted, both pick position 0
    assert jaccard_top_k(a, b, 2, mask=np.zeros((1, 4), bool)) == 1.0  # nothing ranked
    with pytest.raises(ValueError, match="`b`"):
        jaccard_top_k(a, b[:, :3], 2)
    with pytest.raises(ValueError, match="`k`"):
        jaccard_top_k(a, b, 0)


def test_old_tensorboard_names_are_the_attribution_functions():
    # moved to kerastrace.attribution; the tensorboard names stay for existing code
    assert ktb.gradient_x_embedding is gradient_x_embedding
    assert ktb.jaccard_top_k is jaccard_top_k


def test_gradient_flow_norms_match_analytic_and_warn(tmp_path, caplog):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, name="lin")], name="seq")
    model.compile("sgd", "mse")
    x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    y = np.random.default_rng(1).normal(size=(5, 1)).astype("float32")
    cb = GradientFlow(tmp_path, (x, y), explode_threshold=1e-3, vanish_threshold=1e-9)
    with caplog.at_level(logging.WARNING):
        model.fit(x, y, epochs=1, batch_size=5, verbose=0, shuffle=False, callbacks=[cb])
    assert cb.failures == 0
    w, b = (v.numpy() for v in model.layers[0].weights)
    r = x @ w + b - y  # after the training step (callback runs at epoch end)
    gw, gb = 2 * x.T @ r / 5, 2 * r.sum(0) / 5
    expected = np.sqrt((gw**2).sum() + (gb**2).sum())
    assert cb.last_norms == {"lin": pytest.approx(expected, rel=1e-4)}
    ev = read_events(tmp_path)
    assert ev["gradient_norm/lin"][0][1] == pytest.approx(expected, rel=1e-4)
    assert "gradient/lin/kernel" in ev and "gradient/lin/bias" in ev
    assert any("exploding gradient in layer 'lin'" in r.getMessage() for r in caplog.records)
    caplog.clear()
    cb2 = GradientFlow(tmp_path / "v", (x, y), vanish_threshold=1e2, explode_threshold=1e3)
    with caplog.at_level(logging.WARNING):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[cb2])
    assert any("vanishing gradient in layer 'lin'" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="explode_threshold"):
        GradientFlow(tmp_path, (x, y), vanish_threshold=1.0, explode_threshold=0.5)
    with pytest.raises(ValueError, match="probe_batch"):
        GradientFlow(tmp_path, x)


def test_profile_callback_writes_trace(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    x, y = np.ones((12, 4), "float32"), np.zeros((12, 2), "float32")
    cb = ProfileCallback(tmp_path, batches=(1, 2))
    model.fit(x, y, batch_size=2, epochs=1, verbose=0, callbacks=[cb])
    assert cb.traced and cb.failures == 0
    found = [f for _, _, fs in os.walk(tmp_path / "plugins" / "profile") for f in fs]
    assert any(f.endswith(".xplane.pb") for f in found), found
    with pytest.raises(ValueError, match="batches"):
        ProfileCallback(tmp_path, batches=(3, 1))


def test_special_tokens_left_out_of_rankings_unless_asked(tiny_classifier, tmp_path):
    model, ids, y = tiny_classifier
    probe = np.array([[19, 5, 6, 7, 18, 0]], "int32")  # [CLS] w w w [SEP] [PAD]
    tokens = ["[CLS]", "<b>", "a|b", "w3", "[SEP]", "[PAD]"]
    # [CLS] and [SEP] score highest, as they often do; the words swap places.
    fixed = [np.array([[9.0, 3, 2, 1, 8, 7]]), np.array([[9.0, 1, 2, 3, 8, 7]])]

    def run(logdir, **kwargs):
        seq = iter(fixed)
        mon = AttributionMonitor(
            logdir, probe, attribution_fn=lambda m, i: next(seq), top_k=2, tokens=tokens,
            pad_id=0, **kwargs,
        )  # fmt: skip
        model.fit(ids, y, epochs=2, verbose=0, callbacks=[mon])
        assert mon.failures == 0
        return mon, read_events(logdir)

    mon, ev = run(tmp_path / "a", special_ids=[19, 18])
    # words only: {1, 2} -> {3, 2}: 1/3 (with [CLS]/[SEP] it would be {0, 4} twice: 1.0)
    assert mon.history == [pytest.approx(1 / 3)]
    text = ev["attributions/example_0/text"][-1][1]
    lines = text.splitlines()
    # [SEP]/[CLS] shown but never bold or ranked; the pad left out; tokens escaped.
    assert lines[0] == r"\[CLS\] &lt;b&gt; **a\|b** **w3** \[SEP\]"
    assert lines[4:] == [r"| 1 | w3 | 3 |", r"| 2 | a\|b | 2 |"]
    assert "<b>" not in text and "[PAD]" not in text

    mon, ev = run(tmp_path / "b", special=[0, 4])  # the same positions, given directly
    assert mon.history == [pytest.approx(1 / 3)]

    mon, ev = run(tmp_path / "c", special_ids=[19, 18], include_special=True)
    assert mon.history == [pytest.approx(1.0)]
    lines = ev["attributions/example_0/text"][-1][1].splitlines()
    assert lines[4:] == [r"| 1 | \[CLS\] | 9 |", r"| 2 | \[SEP\] | 8 |"]


def _conv_bn_model():
    keras.utils.set_random_seed(0)
    block = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.ReLU(),
        ],
        name="block",
    )
    inp = keras.Input((8, 8, 3))
    h = keras.layers.GlobalAveragePooling2D()(block(inp))
    model = keras.Model(inp, keras.layers.Dense(2, name="head")(h), name="net")
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = (50 * rng.normal(size=(6, 8, 8, 3))).astype("float32")  # far from the moving stats
    y = rng.integers(0, 2, 6)
    return model, x, y


def _conv_norm_oracle(model, x, y, training):
    conv = model.get_layer("block").get_layer("conv")
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=training))
    grads = tape.gradient(loss, [conv.kernel, conv.bias])
    return float(np.sqrt(sum(np.sum(np.square(g.numpy())) for g in grads)))


def test_gradient_flow_uses_training_forward_without_touching_batchnorm(tmp_path):
    model, x, y = _conv_bn_model()
    bn = model.get_layer("block").get_layer("bn")
    stats = [bn.moving_mean.numpy().copy(), bn.moving_variance.numpy().copy()]
    norms = {}
    for training in (True, False):
        cb = GradientFlow(tmp_path / str(training), (x, y), training=training)
        cb.set_model(model)
        cb.on_train_begin()
        cb.on_epoch_end(0)  # the probe, in its cached tf.function
        assert cb.failures == 0
        norms[training] = cb.last_norms
    # The probe read BatchNormalization's moving statistics but did not update them.
    np.testing.assert_array_equal(bn.moving_mean.numpy(), stats[0])
    np.testing.assert_array_equal(bn.moving_variance.numpy(), stats[1])
    # One group per layer that owns trainable weights, by the one path scheme.
    assert list(norms[True]) == ["block/conv", "block/bn", "head"]
    eval_oracle = _conv_norm_oracle(model, x, y, training=False)  # reads moving stats
    train_oracle = _conv_norm_oracle(model, x, y, training=True)  # updates them: last
    assert norms[True]["block/conv"] == pytest.approx(train_oracle, rel=1e-4)
    assert norms[False]["block/conv"] == pytest.approx(eval_oracle, rel=1e-4)
    # Inference mode would report the first conv's gradient ~40x off (MobileNetV2: 1e12x).
    assert eval_oracle > 5 * train_oracle
    ev = read_events(tmp_path / "True")
    assert ev["gradient_norm/block/conv"] == [(0, pytest.approx(train_oracle, rel=1e-4))]
    assert {"gradient/block/conv/kernel", "gradient/block/bn/gamma", "gradient/head/bias"} <= set(
        ev
    )
    # In fit: the monitor runs without failures (fit itself updates the statistics).
    cb = GradientFlow(tmp_path / "fit", (x, y))
    model.fit(x, y, epochs=2, verbose=0, callbacks=[cb])
    assert cb.failures == 0
    assert [s for s, _ in read_events(tmp_path / "fit")["gradient_norm/head"]] == [0, 1]


def test_gradient_flow_loss_includes_regularizers_and_add_loss(tmp_path):
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, kernel_regularizer="l2", activity_regularizer="l1", name="a"),
            keras.layers.Dense(1, name="b"),
        ]
    )
    model.compile("sgd", "mse")
    x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    y = np.ones((5, 1), "float32")
    cb = GradientFlow(tmp_path, (x, y, np.arange(1, 6, dtype="float32")))
    model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])
    with tf.GradientTape() as tape:
        pred = model(x, training=True)
        loss = model.compute_loss(x=x, y=y, y_pred=pred, sample_weight=np.arange(1, 6.0))
    assert len(model.losses) == 2  # the kernel and the activity regularizer terms
    grads = tape.gradient(loss, model.get_layer("a").trainable_weights)
    expected = np.sqrt(sum(np.sum(np.square(g.numpy())) for g in grads))
    assert cb.last_norms["a"] == pytest.approx(expected, rel=1e-5)
