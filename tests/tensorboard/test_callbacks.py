import logging
import os

import keras
import numpy as np
import pytest
from _tb_events import read_events

from kerastrace.attention import collect, head_statistics
from kerastrace.tensorboard import (
    AttentionMonitor,
    AttributionMonitor,
    GradientFlow,
    ProfileCallback,
    gradient_x_embedding,
    jaccard_top_k,
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


def test_callback_failure_is_logged_and_training_continues(tmp_path, caplog):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = np.ones((8, 3), "float32"), np.zeros((8, 1), "float32")
    mon = AttentionMonitor(tmp_path, x)  # no attention layer: collect raises
    bad = AttributionMonitor(tmp_path, x, attribution_fn=lambda m, i: 1 / 0)
    with caplog.at_level(logging.ERROR):
        hist = model.fit(x, y, epochs=3, verbose=0, callbacks=[mon, bad])
    assert len(hist.history["loss"]) == 3
    assert mon.failures == 3 and bad.failures == 3
    assert any("AttentionMonitor.on_epoch_end failed" in r.getMessage() for r in caplog.records)
    assert any("ZeroDivisionError" in (r.exc_text or "") for r in caplog.records)


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
