"""Exact attention flow: the batched solver against independent oracles, warning, progress."""

import itertools
import re
import warnings

import numpy as np
import pytest

from kerastrace.attention import _analysis, _flow, attention_flow


def _min_cut(mats, i, j):
    """Max-flow = min-cut: enumerate every cut of the problem's middle nodes."""
    n_mid, t = len(mats) - 1, mats[0].shape[0]
    best = np.inf
    for bits in itertools.product((False, True), repeat=n_mid * t):
        side = np.array(bits).reshape(n_mid, t)  # True: on the source side
        cut = mats[-1][i][~side[-1]].sum()  # s -> sink side
        for m in range(1, n_mid):  # middle m (rows) -> middle m - 1 (columns)
            cut += mats[m][np.ix_(side[m], ~side[m - 1])].sum()
        cut += mats[0][:, j][side[0]].sum()  # source side -> t
        best = min(best, cut)
    return best


def _all_pairs(t):
    return np.divmod(np.arange(t * t), t)


@pytest.mark.parametrize("n_layers,t", [(3, 2), (3, 3), (4, 3), (5, 2)])
def test_max_flows_equal_brute_force_min_cut(n_layers, t):
    rng = np.random.default_rng(n_layers * 10 + t)
    for trial in range(4):
        # sparse patterns and ties: zero edges, repeated values, a causal case
        mats = [rng.random((t, t)) * (rng.random((t, t)) < 0.7) for _ in range(n_layers)]
        if trial == 1:
            mats = [np.round(a * 3) / 3 for a in mats]
        if trial == 2:
            mats = [np.tril(a) for a in mats]
        sources, sinks = _all_pairs(t)
        got = _flow.max_flows(mats, sources, sinks)
        want = [_min_cut(mats, i, j) for i, j in zip(sources, sinks)]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_max_flow_needs_rerouting_hand_solved():
    # s -> {a0, a1} -> {b0, b1} -> t with unit capacities and no edge a1 -> b1:
    # a greedy flow that fills a0 -> b0 first strands a1; the maximum, 2, routes
    # a0 -> b1 and a1 -> b0.
    top = np.array([[1.0, 1.0], [0.0, 0.0]])  # s = top 0 reaches a0 and a1
    mid = np.array([[1.0, 1.0], [1.0, 0.0]])  # a0 -> b0, b1; a1 -> b0
    bottom = np.array([[1.0, 0.0], [1.0, 0.0]])  # b0 -> t, b1 -> t (t = bottom 0)
    got = _flow.max_flows([bottom, mid, top], [0, 0, 1, 1], [0, 1, 0, 1])
    np.testing.assert_allclose(got, [2.0, 0.0, 0.0, 0.0], atol=1e-12)
    # the same graph with fractional capacities: cut {a1 -> b0, a0 -> b*} = 0.3 + 0.5
    mid = np.array([[0.25, 0.25], [0.3, 0.0]])
    np.testing.assert_allclose(_flow.max_flows([bottom, mid, top], [0], [0]), [0.8])


def test_maxflow_equals_reference_edmonds_karp():
    rng = np.random.default_rng(0)
    for n_layers, t in [(1, 4), (2, 5), (3, 6), (5, 7), (6, 5)]:
        w = [rng.random((2, 3, t, t)) ** 4 for _ in range(n_layers)]
        mask = rng.random((2, t)) < 0.8
        for kwargs in ({}, {"residual": False}, {"head_fusion": "max"}):
            fast = attention_flow(w, mask=mask, **kwargs)
            ref = attention_flow(w, mask=mask, method="reference", **kwargs)
            np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-6)


def test_causal_flow_is_lower_triangular_and_exact():
    rng = np.random.default_rng(1)
    t = 9
    z = rng.normal(size=(4, 1, 2, t, t)) * 2
    z = np.where(np.tril(np.ones((t, t), bool)), z, -np.inf)
    w = list(np.exp(z) / np.exp(z).sum(-1, keepdims=True))
    fast = attention_flow(w)
    np.testing.assert_array_equal(np.triu(fast[0], 1), 0)  # no path to a later token
    np.testing.assert_allclose(fast, attention_flow(w, method="reference"), atol=1e-6)
    np.testing.assert_allclose(fast.sum(-1), 1, atol=1e-6)


def test_maxflow_is_at_least_widest_path():
    rng = np.random.default_rng(2)
    w = [rng.random((1, 2, 6, 6)) for _ in range(4)]
    _, mats, _ = _analysis._residual_matrices(w, "mean", True, None)
    mats = [a[0] for a in mats]
    sources, sinks = _all_pairs(6)
    flows = _flow.max_flows(mats, sources, sinks).reshape(6, 6)
    widest = mats[-1]
    for a in reversed(mats[:-1]):
        widest = _analysis._widest(widest, a)
    assert np.all(flows >= widest - 1e-12)
    assert np.any(flows > widest + 1e-3)  # several paths carry more than the best one


def test_progress_reports_every_problem():
    rng = np.random.default_rng(3)
    mats = [np.tril(rng.random((8, 8))) for _ in range(4)]
    sources, sinks = _all_pairs(8)
    seen = []
    _flow.max_flows(mats, sources, sinks, on_progress=seen.append)
    assert sum(seen) == 64 and all(n > 0 for n in seen)


def test_big_flow_warns_once_and_shows_progress(monkeypatch, capsys):
    monkeypatch.setattr(_analysis, "_FLOW_WARN_WORK", 1)  # every exact flow is "big"
    w = [np.random.default_rng(s).random((2, 2, 6, 6)) for s in range(4)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flows = attention_flow(w)
    user = [c for c in caught if issubclass(c.category, UserWarning)]
    assert len(user) == 1, [str(c.message) for c in user]
    msg = str(user[0].message)
    assert "72 exact max-flow problems" in msg and re.search(r"about \d+ s", msg)
    assert user[0].filename == __file__  # points at the caller
    out = capsys.readouterr().out
    assert "72/72" in out and "pair" in out
    # verbose=0: the warning, no bar, the same values
    with pytest.warns(UserWarning, match="max-flow problems"):
        quiet = attention_flow(w, verbose=0)
    assert capsys.readouterr().out == ""
    np.testing.assert_array_equal(quiet, flows)


def test_small_flow_is_silent(capsys):
    w = [np.random.default_rng(s).random((1, 2, 8, 8)) for s in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attention_flow(w)
        attention_flow(w, method="widest_path")
    assert capsys.readouterr().out == ""


def test_six_layers_64_tokens_counts_as_big():
    # the case a user waited 257 s for without a word must warn (and show progress)
    work = 64 * 64 * _flow.problem_edges(6, 64)
    assert work >= _analysis._FLOW_WARN_WORK
    assert 32 * 32 * _flow.problem_edges(6, 32) < _analysis._FLOW_WARN_WORK


def test_flow_bad_verbose():
    w = [np.full((1, 1, 2, 2), 0.5)]
    with pytest.raises(ValueError, match=r"`verbose`.*Received: verbose=2"):
        attention_flow(w, verbose=2)
    with pytest.raises(ValueError, match="verbose"):
        attention_flow(w, verbose="yes")
    attention_flow(w, verbose=False)
