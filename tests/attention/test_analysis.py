import numpy as np
import pytest

from kerastrace.attention import (
    attention_flow,
    attention_rollout,
    duplicate_heads,
    head_similarity,
    head_statistics,
)


def _rand_attn(b, h, t, seed=0):
    r = np.random.default_rng(seed).random((b, h, t, t)) + 0.05
    return r / r.sum(-1, keepdims=True)


def test_rollout_two_token_hand_derived():
    a = np.array([[[[1.0, 0.0], [1.0, 0.0]]]])
    # one layer: 0.5*A + 0.5*I = [[1, 0], [.5, .5]]
    np.testing.assert_allclose(attention_rollout([a])[0], [[1, 0], [0.5, 0.5]])
    # two layers: [[1,0],[.5,.5]]^2 = [[1,0],[.75,.25]]
    np.testing.assert_allclose(attention_rollout([a, a])[0], [[1, 0], [0.75, 0.25]])
    # without residual the product is A @ A
    np.testing.assert_allclose(attention_rollout([a, a], residual=False)[0], [[1, 0], [1, 0]])


def test_rollout_order_is_last_layer_times_first():
    a1 = np.array([[[[0.0, 1.0], [0.0, 1.0]]]])
    a2 = np.array([[[[1.0, 0.0], [0.0, 1.0]]]])
    r1 = 0.5 * a1[0, 0] + 0.5 * np.eye(2)
    r2 = 0.5 * a2[0, 0] + 0.5 * np.eye(2)
    np.testing.assert_allclose(attention_rollout({"l0": a1, "l1": a2})[0], r2 @ r1, atol=1e-7)


def test_rollout_head_fusion():
    heads = np.array([[[[0.8, 0.2], [0.2, 0.8]], [[0.4, 0.6], [0.6, 0.4]]]])
    mean = attention_rollout(heads, residual=False, head_fusion="mean")[0]
    np.testing.assert_allclose(mean, [[0.6, 0.4], [0.4, 0.6]], atol=1e-6)
    mx = attention_rollout(heads, residual=False, head_fusion="max")[0]
    np.testing.assert_allclose(mx, [[0.8 / 1.4, 0.6 / 1.4], [0.6 / 1.4, 0.8 / 1.4]], atol=1e-6)
    mn = attention_rollout(heads, residual=False, head_fusion="min")[0]
    np.testing.assert_allclose(mn, [[0.4 / 0.6, 0.2 / 0.6], [0.2 / 0.6, 0.4 / 0.6]], atol=1e-6)
    with pytest.raises(ValueError, match="head_fusion"):
        attention_rollout(heads, head_fusion="median")


def test_rollout_masked_equals_rollout_on_truncated_sequence():
    w = [_rand_attn(1, 2, 5, s) for s in range(3)]
    mask = np.array([[True, True, True, False, False]])
    full = attention_rollout(w, mask=mask)[0]
    # Oracle: renormalize the unmasked block and roll out on the 3 real tokens.
    trunc = [x[:, :, :3, :3] / x[:, :, :3, :3].sum(-1, keepdims=True) for x in w]
    ref = attention_rollout(trunc)[0]
    np.testing.assert_allclose(full[:3, :3], ref, atol=1e-6)
    np.testing.assert_array_equal(full[3:], 0)
    np.testing.assert_array_equal(full[:, 3:], 0)
    np.testing.assert_allclose(full[:3].sum(-1), 1, atol=1e-6)


def test_flow_one_layer_equals_normalized_capacity():
    w = _rand_attn(1, 1, 4, 3)
    ref = 0.5 * w[0, 0] + 0.5 * np.eye(4)
    ref /= ref.sum(-1, keepdims=True)
    np.testing.assert_allclose(attention_flow([w])[0], ref, atol=1e-6)


def test_flow_hand_derived_two_layers():
    # Layer 1 (bottom) sends everything from both positions to token 0;
    # layer 2 (top) is uniform. Without residual:
    a1 = np.array([[[[1.0, 0.0], [1.0, 0.0]]]])
    a2 = np.array([[[[0.5, 0.5], [0.5, 0.5]]]])
    # max flow from top i to bottom 0 = 0.5*1 + 0.5*1 = 1, to bottom 1 = 0.
    np.testing.assert_allclose(attention_flow([a1, a2], residual=False)[0], [[1, 0], [1, 0]])


def test_maxflow_at_least_widest_path_and_known_value():
    # Two disjoint paths of capacity 0.3 and 0.4: max-flow 0.7, widest path 0.4.
    # 3 tokens, top token 0 -> middle {1, 2} -> bottom token 0.
    a_bottom = np.zeros((1, 1, 3, 3))
    a_bottom[0, 0] = [[1, 0, 0], [1, 0, 0], [1, 0, 0]]
    a_top = np.zeros((1, 1, 3, 3))
    a_top[0, 0] = [[0.3, 0.3, 0.4], [0, 1, 0], [0, 0, 1]]
    from kerastrace.attention._analysis import _max_flow

    size = 9
    cap = np.zeros((size, size))
    cap[3:6, 0:3] = a_bottom[0, 0]
    cap[6:9, 3:6] = a_top[0, 0]
    assert _max_flow(cap, 6, 0) == pytest.approx(1.0)
    cap[6, 3] = 0.0
    assert _max_flow(cap, 6, 0) == pytest.approx(0.7)
    w = [_rand_attn(2, 2, 5, s) for s in range(3)]
    exact = attention_flow(w)
    wide = attention_flow(w, method="widest_path")
    assert exact.shape == wide.shape == (2, 5, 5)
    np.testing.assert_allclose(exact.sum(-1), 1, atol=1e-6)


def test_flow_mask_removes_tokens():
    w = [_rand_attn(1, 1, 4, s) for s in range(2)]
    mask = np.array([[True, True, True, False]])
    f = attention_flow(w, mask=mask)
    np.testing.assert_array_equal(f[0, 3], 0)
    np.testing.assert_array_equal(f[0, :, 3], 0)
    # the oracle: flow on the three real tokens, each map renormalized over them
    trunc = [x[:, :, :3, :3] / x[:, :, :3, :3].sum(-1, keepdims=True) for x in w]
    np.testing.assert_allclose(f[0, :3, :3], attention_flow(trunc)[0], atol=1e-6)
    with pytest.raises(ValueError, match="method"):
        attention_flow(w, method="nope")


def test_entropy_uniform_rows_is_log_unmasked():
    b, h, t = 2, 3, 6
    w = np.full((b, h, t, t), 1.0 / t)
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    # per example: log(4) for 4 queries, log(6) for 6 queries -> query-weighted mean
    expected = (4 * np.log(4) + 6 * np.log(6)) / 10
    stats = head_statistics({"l": w}, mask=mask)
    np.testing.assert_allclose(stats.entropy, expected, atol=1e-9)
    one_hot = np.broadcast_to(np.eye(t), (b, h, t, t))
    np.testing.assert_allclose(head_statistics(one_hot).entropy, 0.0, atol=1e-12)


def test_distance_and_special_share_hand_derived():
    t = 4
    prev = np.zeros((1, 2, t, t))
    for i in range(t):
        prev[0, 0, i, max(i - 1, 0)] = 1.0  # previous-token head
        prev[0, 1, i, 0] = 1.0  # CLS head
    stats = head_statistics(prev, special=[0])
    np.testing.assert_allclose(stats.distance[0], [3 / 4, (0 + 1 + 2 + 3) / 4])
    np.testing.assert_allclose(stats.special_share[0], [2 / 4, 1.0])
    ids = np.array([[101, 7, 8, 102]])
    by_id = head_statistics(prev, token_ids=ids, special_ids=[101, 102])
    np.testing.assert_allclose(by_id.special_share, stats.special_share)
    scal = stats.scalars()
    assert scal["distance/layer_0/head_1"] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="token_ids"):
        head_statistics(prev, special_ids=[101])


def test_statistics_ignore_masked_keys():
    w = np.zeros((1, 1, 3, 3))
    w[0, 0, :, :] = [0.25, 0.25, 0.5]
    mask = np.array([[True, True, False]])
    stats = head_statistics(w, mask=mask, special=[1])
    np.testing.assert_allclose(stats.entropy, np.log(2))
    np.testing.assert_allclose(stats.special_share, 0.5)
    np.testing.assert_allclose(stats.distance, (0.5 + 0.5) / 2)


def test_duplicate_heads():
    t = 5
    base = _rand_attn(2, 1, t, 0)
    other = _rand_attn(2, 1, t, 9) ** 8
    other /= other.sum(-1, keepdims=True)
    w = {"a": np.concatenate([base, other], 1), "b": np.concatenate([other, base], 1)}
    pairs = duplicate_heads(w, threshold=0.99)
    found = {(p[0], p[1]) for p in pairs}
    assert found == {(("a", 0), ("b", 1)), (("a", 1), ("b", 0))}
    heads, sim = head_similarity(w, metric="cosine")
    assert len(heads) == 4
    np.testing.assert_allclose(np.diag(sim), 1)
    assert sim[0, 3] == pytest.approx(1.0)
    assert sim[0, 1] < 0.99
    with pytest.raises(ValueError, match="threshold"):
        duplicate_heads(w, threshold=1.5)


def test_bad_inputs():
    with pytest.raises(ValueError, match="mask"):
        attention_rollout(_rand_attn(1, 1, 3), mask=np.ones((1, 4), bool))
    with pytest.raises(TypeError, match="weights"):
        attention_rollout("nope")
    with pytest.raises(ValueError, match="weights"):
        attention_rollout([np.ones((1, 2, 3))])
