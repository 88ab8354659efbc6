"""Exact max-flow on the layered attention graph, many (source, sink) pairs at once (numpy).

`attention_flow` needs the max-flow value from every output position `i` (top
level) to every input token `j` (bottom level) of a graph whose levels are the
token positions between layers. For one pair only node `i` of the top level
and node `j` of the bottom level matter: the other top nodes have no incoming
edge and the other bottom nodes no outgoing one. So every problem has a
source `s`, `M = L - 1` middle levels of `T` nodes and a sink `t`:

- `s -> (M-1, k)` with capacity `A_L[i, k]` (one row of the top layer),
- `(m, a) -> (m-1, b)` with capacity `A_{m+1}[a, b]` (the middle layers),
- `(0, k) -> t` with capacity `A_1[k, j]` (one column of the bottom layer).

A problem keeps only the middle nodes that `s` reaches and that reach `t`
(positions `j..i` in a causal model; the real tokens of a padded sequence),
and problems of about the same width are solved side by side.

The solver is Dinic's algorithm. Each phase computes, by breadth-first
search on the residual graph, the distance of every node from `s` and to `t`,
keeps the nodes on shortest `s`-`t` paths (the level graph) and finds a
blocking flow in it with Karzanov's preflow waves: a forward wave pushes
excess one distance at a time towards `t` (a node spreads its excess over its
admissible edges in proportion to their residual capacity); a node that
cannot pass on all its excess is blocked for the rest of the phase and a
backward wave returns its excess along the edges it arrived on. Phases repeat
until `t` is out of reach (or the flow fills the cut around `s` or `t`), so
the result is the exact maximum flow, up to float64 rounding and capacities
below `_EPS`. All of this runs on a chunk of problems at once: their flows
are one `(P, M-1, W, W)` array and every step is a numpy operation over the
chunk; a solved problem frees its slot for the next one.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-12  # residual capacities and excesses at or below this count as zero
_INF = 1 << 30  # "unreachable" distance
_CHUNK_ELEMENTS = 1 << 19  # flow entries per chunk: small enough to stay in cache


def chunk_size(n_layers: int, t: int) -> int:
    """Problems solved side by side when `t` nodes per level matter: about 4 MB of flows."""
    per_problem = max(n_layers - 2, 1) * t * t
    return int(max(1, _CHUNK_ELEMENTS // per_problem))


def problem_edges(n_layers: int, t: int) -> int:
    """Edges of one (source, sink) problem: `2T` at the ends and `T^2` per middle layer."""
    if n_layers <= 1:
        return 1
    return 2 * t + (n_layers - 2) * t * t


def max_flows(mats, sources, sinks, on_progress=None) -> np.ndarray:
    """Max-flow value from top node `sources[p]` to bottom node `sinks[p]`, for every `p`.

    Args:
        mats: `L` `(T, T)` non-negative capacity matrices, `mats[0]` the
            bottom layer: the edge from position `a` above layer `l` to
            position `b` below it has capacity `mats[l][a, b]`.
        sources: `(P,)` int positions at the top level.
        sinks: `(P,)` int positions at the bottom level.
        on_progress: Optional callable, called with the number of problems
            solved since its last call.

    Returns:
        `(P,)` float64 max-flow values.
    """
    mats = [np.asarray(a, dtype=np.float64) for a in mats]
    n_layers, t = len(mats), mats[0].shape[0]
    sources = np.asarray(sources, dtype=np.intp)
    sinks = np.asarray(sinks, dtype=np.intp)
    progress = on_progress if on_progress is not None else (lambda n: None)
    if n_layers <= 2:
        if n_layers == 1:
            out = mats[0][sources, sinks].copy()
        else:  # disjoint paths s -> k -> t: the cut takes min(in, out) of each middle node
            out = np.minimum(mats[1][sources], mats[0][:, sinks].T).sum(-1)
        progress(sources.size)
        return out
    # Only the nodes that s reaches and that reach t matter: a causal model's problem
    # (i, j) keeps positions j..i, a masked or sparse pattern fewer. Problems of about
    # the same width are solved together on their own nodes.
    paths = _Paths(mats)
    width = paths.width[sources, sinks]
    out = np.zeros(sources.size)
    if (width == 0).any():  # t out of reach: no flow
        progress(int((width == 0).sum()))
    step = max(1, t // 16)
    bucket = np.minimum(-(-width // step) * step, t)
    for w in np.unique(bucket[width > 0]):
        rows = np.flatnonzero((bucket == w) & (width > 0))
        solver = _Dinic(paths, min(chunk_size(n_layers, int(w)), rows.size), int(w))
        out[rows] = solver.solve(sources[rows], sinks[rows], progress)
    return out


class _Paths:
    """Which middle nodes lie on a path from top node `i` to bottom node `j`."""

    def __init__(self, mats):
        n_mid = len(mats) - 1
        t = mats[0].shape[0]
        edge = [(a > 0).astype(np.float64) for a in mats]
        # reach[m][i, a]: top node i reaches node a of middle level m (level m + 1)
        self.reach = [None] * n_mid
        self.reach[-1] = edge[-1]
        for m in range(n_mid - 1, 0, -1):
            self.reach[m - 1] = ((self.reach[m] @ edge[m]) > 0).astype(np.float64)
        # back[m][a, j]: node a of middle level m reaches bottom node j
        self.back = [None] * n_mid
        self.back[0] = edge[0]
        for m in range(1, n_mid):
            self.back[m] = ((edge[m] @ self.back[m - 1]) > 0).astype(np.float64)
        # width[i, j]: the most nodes problem (i, j) keeps on one level (0: no path)
        self.width = np.rint(
            np.max([self.reach[m] @ self.back[m] for m in range(n_mid)], axis=0)
        ).astype(np.int64)
        # the capacities, padded with a position t that has no edges
        self.padded = [np.pad(a, ((0, 1), (0, 1))) for a in mats]
        self.t = t

    def nodes(self, sources, sinks, width) -> np.ndarray:
        """`(P, M, width)`: the kept positions of each level in order, then `t` (padding)."""
        keep = np.stack(
            [(self.reach[m][sources] * self.back[m][:, sinks].T) > 0
             for m in range(len(self.reach))],
            axis=1,
        )  # fmt: skip
        order = np.argsort(~keep, axis=-1, kind="stable")[..., :width]
        return np.where(np.take_along_axis(keep, order, -1), order, self.t)


class _Dinic:
    """Dinic's algorithm on `slots` problems at a time, each on `width` nodes per level.

    A solved problem leaves its slot to the next one at once, so the slots
    stay full: problems in their first phase and problems in a later one
    (longer paths) share every numpy operation.
    """

    def __init__(self, paths, slots, width):
        self.paths = paths
        self.mats = paths.padded
        self.width = width
        self.m = len(self.mats) - 1  # middle levels 0 .. m-1 (level l + 1 of the full graph)
        shape = (slots, self.m - 1, width, width)
        self.cap = np.zeros(shape)  # each problem's middle layers, on its own nodes
        self.flow = np.zeros(shape)
        self.cs = np.zeros((slots, width))  # s -> level m-1: a row of the top layer
        self.ct = np.zeros((slots, width))  # level 0 -> t: a column of the bottom layer
        self.fs = np.zeros((slots, width))
        self.ft = np.zeros((slots, width))
        # the cuts around s and around t bound the flow: a problem whose flow reaches
        # one of them is solved without the search that would prove it
        self.bound = np.zeros(slots)
        self.phases = np.zeros(slots, np.int64)
        # Dinic needs at most one phase per path length; a guard against rounding
        self.max_phases = 2 * (self.m * width + 2)

    def solve(self, sources, sinks, progress) -> np.ndarray:
        n = sources.size
        out = np.zeros(n)
        problem = np.full(self.fs.shape[0], -1)  # the problem in each slot, -1: free
        nxt = 0
        while True:
            free = np.flatnonzero(problem < 0)[: n - nxt]
            if free.size:
                new = slice(nxt, nxt + free.size)
                self._load(free, sources[new], sinks[new])
                problem[free] = np.arange(nxt, nxt + free.size)
                nxt += free.size
            live = np.flatnonzero(problem >= 0)
            if not live.size:
                return out
            done = live[self._phase(live)]
            out[problem[done]] = self.ft[done].sum(-1)
            problem[done] = -1
            if done.size:
                progress(done.size)

    def _load(self, slots, sources, sinks):
        """Put problems in `slots`, each on its own nodes."""
        nodes = self.paths.nodes(sources, sinks, self.width)
        top, bottom = self.mats[-1], self.mats[0]
        for k in range(self.m - 1):  # block k: middle k + 1 (rows) -> middle k (columns)
            self.cap[slots, k] = self.mats[k + 1][nodes[:, k + 1, :, None], nodes[:, k, None, :]]
        self.cs[slots] = top[sources[:, None], nodes[:, -1]]
        self.ct[slots] = bottom[nodes[:, 0], sinks[:, None]]
        self.flow[slots] = 0.0
        self.fs[slots] = 0.0
        self.ft[slots] = 0.0
        self.bound[slots] = np.minimum(self.cs[slots].sum(-1), self.ct[slots].sum(-1)) - _EPS
        self.phases[slots] = 0

    # ------------------------------------------------------------ one phase
    def _phase(self, live) -> np.ndarray:
        """One phase on the problems in slots `live`; returns which of them are solved."""
        whole = live.size == self.fs.shape[0]
        pick = slice(None) if whole else live
        cap, flow, fs, ft = self.cap[pick], self.flow[pick], self.fs[pick], self.ft[pick]
        cs, ct = self.cs[pick], self.ct[pick]
        down_ok = (cap - flow) > _EPS  # residual of the edges as laid out
        up_ok = flow > _EPS  # their reverse edges (lower -> upper)
        t_ok = (ct - ft) > _EPS
        ds = np.full(fs.shape[:1] + (self.m, fs.shape[1]), _INF, dtype=np.int64)
        ds[:, -1] = np.where(cs - fs > _EPS, 1, _INF)
        _distances(ds, down_ok, up_ok, from_source=True)
        length = np.where(t_ok, ds[:, 0], _INF).min(-1) + 1  # shortest s-t path
        solved = length >= _INF  # t is out of reach: the flow is maximum
        go = np.flatnonzero(~solved)
        if go.size:
            if go.size < live.size:  # continue on the others only
                cap, flow, fs, ft, cs, ct = (a[go] for a in (cap, flow, fs, ft, cs, ct))
                down_ok, up_ok, t_ok, ds, length = (
                    a[go] for a in (down_ok, up_ok, t_ok, ds, length)
                )
            dt = np.full_like(ds, _INF)
            dt[:, 0] = np.where(t_ok, 1, _INF)
            _distances(dt, down_ok, up_ok, from_source=False)
            # distance from s in the level graph (nodes on a shortest s-t path), else -1
            level = np.where(ds + dt == length[:, None, None], ds, -1)
            _Waves(cap, flow, fs, ft, cs, ct, level, length).blocking_flow()
            rows = live[go]
            if not (whole and go.size == live.size):  # else the arrays were views
                self.flow[rows], self.fs[rows], self.ft[rows] = flow, fs, ft
            self.phases[rows] += 1
            solved[go] = (ft.sum(-1) >= self.bound[rows]) | (self.phases[rows] >= self.max_phases)
        return solved


def _distances(d, down_ok, up_ok, from_source):
    """Shortest unit-length distances (in place) by Gauss-Seidel sweeps over the layers.

    `d` is `(P, M, T)`; the edges of block `k` link level `k + 1` (upper, rows)
    and level `k` (lower, columns): `down_ok` upper -> lower, `up_ok` lower ->
    upper. A sweep relaxes the down edges top to bottom and the up edges
    bottom to top, so it settles every path with one change of direction.
    """
    n_blocks = down_ok.shape[1]
    while True:
        before = d.copy()
        if from_source:  # d[v] = min over edges u -> v of d[u] + 1
            for k in range(n_blocks - 1, -1, -1):
                cand = np.where(down_ok[:, k], d[:, k + 1, :, None], _INF).min(1) + 1
                np.minimum(d[:, k], cand, out=d[:, k])
            for k in range(n_blocks):
                cand = np.where(up_ok[:, k], d[:, k, None, :], _INF).min(2) + 1
                np.minimum(d[:, k + 1], cand, out=d[:, k + 1])
        else:  # d[u] = min over edges u -> v of d[v] + 1
            for k in range(n_blocks):
                cand = np.where(down_ok[:, k], d[:, k, None, :], _INF).min(2) + 1
                np.minimum(d[:, k + 1], cand, out=d[:, k + 1])
            for k in range(n_blocks - 1, -1, -1):
                cand = np.where(up_ok[:, k], d[:, k + 1, :, None], _INF).min(1) + 1
                np.minimum(d[:, k], cand, out=d[:, k])
        np.minimum(d, _INF, out=d)
        if np.array_equal(before, d):
            return


class _Waves:
    """Karzanov's blocking flow on the level graph of a chunk (arrays updated in place)."""

    # per-problem state, gathered for the problems that still have excess in a wave
    _ROWS = ("cap", "flow", "fs", "ft", "ct", "level", "length", "phase", "blocked", "excess", "gs")
    _CHANGED = ("flow", "fs", "ft", "phase", "blocked", "excess", "gs")

    def __init__(self, cap, flow, fs, ft, cs, ct, level, length):
        self.cap, self.flow, self.fs, self.ft, self.ct = cap, flow, fs, ft, ct
        self.level, self.length = level, length
        self.m = level.shape[1]
        self.phase = np.zeros_like(flow)  # flow added in this phase (+ down, - up)
        self.up_used = np.zeros(self.m - 1, bool)  # blocks with up pushes in this phase
        self.blocked = np.zeros(level.shape, bool)
        self.excess = np.zeros(level.shape)
        # s saturates its admissible edges
        self.gs = np.where(level[:, -1] == 1, np.maximum(cs - fs, 0.0), 0.0)
        fs += self.gs
        self.excess[:, -1] = self.gs

    def blocking_flow(self):
        while True:
            busy = np.flatnonzero((self.excess > _EPS).any((1, 2)))
            if not busy.size:
                return
            if busy.size == self.excess.shape[0]:
                self._wave()
                continue
            # a wave on the problems that still have excess only
            part = object.__new__(_Waves)
            part.m, part.up_used = self.m, self.up_used
            for name in self._ROWS:
                setattr(part, name, getattr(self, name)[busy])
            part._wave()
            for name in self._CHANGED:
                getattr(self, name)[busy] = getattr(part, name)

    def _wave(self):
        """A forward wave (push towards t) and, if excess is left, a backward one."""
        top = int(self.length.max())
        for k in range(1, top):
            self._forward(k)
        if (self.excess > _EPS).any():
            for k in range(top - 1, 0, -1):
                self._backward(k)
            self.excess[self.excess <= _EPS] = 0.0

    def _open(self, k):
        """`(P, M, T)` float 0/1: unblocked level-graph nodes at distance `k`."""
        return ((self.level == k) & ~self.blocked).astype(np.float64)

    def _to_t(self):
        return np.maximum(self.ct - self.ft, 0.0) * (self.level[:, 0] == (self.length - 1)[:, None])

    def _forward(self, k):
        act = (self.level == k) & ~self.blocked & (self.excess > _EPS)
        if not act.any():
            return
        tgt = self._open(k + 1)  # 1 on the open nodes of the next distance
        cap_out = np.zeros(act.shape)
        downs, ups = {}, {}
        for m in np.flatnonzero(act.any((0, 2))):
            if m >= 1:
                if tgt[:, m - 1].any():
                    res = np.maximum(self.cap[:, m - 1] - self.flow[:, m - 1], 0.0)
                    res *= tgt[:, m - 1, None, :]
                    downs[m] = res
                    cap_out[:, m] += res.sum(2)
            else:
                res = self._to_t()
                downs[0] = res
                cap_out[:, 0] += res
            if m <= self.m - 2 and tgt[:, m + 1].any():
                res = self.flow[:, m] * tgt[:, m + 1, :, None]
                ups[m] = res
                cap_out[:, m] += res.sum(1)
        share = np.where(
            act & (cap_out > 0), np.minimum(1.0, self.excess / np.where(cap_out > 0, cap_out, 1.0)),
            0.0,
        )
        for m, res in downs.items():
            if m >= 1:
                push = res * share[:, m, :, None]
                self.flow[:, m - 1] += push
                self.phase[:, m - 1] += push
                self.excess[:, m - 1] += push.sum(1)
                self.excess[:, m] -= push.sum(2)
            else:
                push = res * share[:, 0]
                self.ft += push
                self.excess[:, 0] -= push
        for m, res in ups.items():
            push = res * share[:, m, None, :]
            self.flow[:, m] -= push
            self.phase[:, m] -= push
            self.up_used[m] = True
            self.excess[:, m + 1] += push.sum(2)
            self.excess[:, m] -= push.sum(1)
        left = act & (self.excess > _EPS)
        self.blocked |= left
        self.excess[act & ~left] = 0.0

    def _backward(self, k):
        ret = (self.level == k) & self.blocked & (self.excess > _EPS)
        if not ret.any():
            return
        # the phase flow that reached each node: from above (phase > 0 on the block below
        # the node's level... i.e. where it is the lower node), from below (phase < 0 where
        # it is the upper node) and from s
        arrived = np.zeros(ret.shape)
        above, below = {}, {}
        for m in np.flatnonzero(ret.any((0, 2))):
            if m <= self.m - 2:
                came = np.maximum(self.phase[:, m], 0.0)  # upper (m+1) -> this lower node
                above[m] = came
                arrived[:, m] += came.sum(1)
            else:
                arrived[:, m] += self.gs
            if m >= 1 and self.up_used[m - 1]:
                came = np.maximum(-self.phase[:, m - 1], 0.0)  # lower (m-1) -> this upper node
                below[m] = came
                arrived[:, m] += came.sum(2)
        give = np.where(
            ret & (arrived > 0), np.minimum(1.0, self.excess / np.where(arrived > 0, arrived, 1.0)),
            0.0,
        )
        for m, came in above.items():
            back = came * give[:, m, None, :]
            self.flow[:, m] -= back
            self.phase[:, m] -= back
            self.excess[:, m + 1] += back.sum(2)
            self.excess[:, m] -= back.sum(1)
        for m, came in below.items():
            back = came * give[:, m, :, None]
            self.flow[:, m - 1] += back
            self.phase[:, m - 1] += back
            self.excess[:, m - 1] += back.sum(1)
            self.excess[:, m] -= back.sum(2)
        if ret[:, -1].any():
            back = self.gs * give[:, -1]
            self.fs -= back
            self.gs -= back
            self.excess[:, -1] -= back
        self.excess[ret] = 0.0  # what rounding left over
