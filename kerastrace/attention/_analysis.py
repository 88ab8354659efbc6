"""Attention rollout, attention flow and per-head statistics (numpy; keras for a progress bar)."""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from kerastrace._utils import validation as v
from kerastrace.attention import _flow

_FUSIONS = ("mean", "max", "min")


def _check_chain(weights, names, arrays, name):
    """Rollout and flow chain maps over one token axis: refuse anything else."""
    sites = getattr(weights, "sites", None) or {}
    stacks = getattr(weights, "stacks", None)
    if sites and stacks is not None and (len(stacks) > 1 or "cross" in stacks):
        raise ValueError(
            f"Received an invalid value for argument `{name}`: the maps come from a model "
            f"with several attention stacks ({ {k: len(v) for k, v in stacks.items()} }; "
            "cross-attention links two different token sequences). Rollout and flow chain "
            "self-attention over one token axis: pass one stack, e.g. "
            f"`{name}.stack('encoder')` or `{name}.stack('decoder')`."
        )
    for n, a in zip(names, arrays):
        site = sites.get(n)
        if a.ndim == 4 and (a.shape[-1] != a.shape[-2] or (site and site.kind == "cross")):
            raise ValueError(
                f"Received an invalid value for argument `{name}`: {n!r} is cross-attention "
                f"or has different query and key lengths (shape {a.shape}); rollout and flow "
                "chain self-attention maps (B, H, T, T) over one token axis. Select the "
                "self-attention layers of one stack (`collect(...).stack('encoder')`)."
            )


def _as_layers(weights, name="weights", chain=False) -> tuple[list[str], list[np.ndarray]]:
    """Normalize a dict / sequence / single array of (B, H, Tq, Tk) weights.

    With `chain=True` (rollout, flow) every map must be self-attention
    `(B, H, T, T)` of one stack with the same T; otherwise query and key
    lengths may differ (cross-attention) and only B must agree.
    """
    if isinstance(weights, Mapping):
        names = [str(k) for k in weights]
        arrays = [np.asarray(w, dtype=np.float64) for w in weights.values()]
    elif isinstance(weights, np.ndarray) and weights.ndim == 4:
        names, arrays = ["layer_0"], [np.asarray(weights, dtype=np.float64)]
    elif (isinstance(weights, Sequence) and not isinstance(weights, (str, bytes))) or (
        isinstance(weights, np.ndarray) and weights.ndim == 5
    ):
        arrays = [np.asarray(w, dtype=np.float64) for w in weights]
        names = [f"layer_{i}" for i in range(len(arrays))]
    else:
        raise TypeError(
            f"Received an invalid value for argument `{name}`, expected a dict "
            "{layer: (B, H, T, T) array}, a list of such arrays or one array. "
            f"Received: {name}={type(weights).__name__}"
        )
    if not arrays:
        raise v.invalid(name, "at least one layer of weights", weights)
    if chain:
        _check_chain(weights, names, arrays, name)
    shape = arrays[0].shape
    for n, a in zip(names, arrays):
        if a.ndim != 4 or a.shape[0] != shape[0] or (
            chain and (a.shape[-1] != a.shape[-2] or a.shape[-1] != shape[-1])
        ):
            expected = "(B, H, T, T) with equal B and T" if chain else "(B, H, Tq, Tk), equal B"
            raise ValueError(
                f"Received an invalid value for argument `{name}`, expected arrays of shape "
                f"{expected}. Received: {name}[{n!r}].shape={a.shape}"
            )
    for n, a in zip(names, arrays):
        if not np.all(np.isfinite(a)):
            raise ValueError(
                f"Received an invalid value for argument `{name}`: {name}[{n!r}] contains "
                "NaN or inf attention weights (a numerical overflow in the model?)."
            )
    return names, arrays


def _bool_bt(arr, b, t, name, expected) -> np.ndarray:
    """`arr` as a `(B, T)` boolean array (a `(T,)` array is broadcast over the batch)."""
    m = np.asarray(arr).astype(bool)
    if m.ndim == 1:
        m = np.broadcast_to(m, (b, t))
    if m.shape != (b, t):
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected {expected}. "
            f"Received: {name}.shape={m.shape}"
        )
    return m


def _as_mask(mask, b, t) -> np.ndarray:
    if mask is None:
        return np.ones((b, t), dtype=bool)
    return _bool_bt(
        mask, b, t, "mask", f"a boolean array of shape (B, T)=({b}, {t}), True on real tokens"
    )


def _fuse(a: np.ndarray, head_fusion: str) -> np.ndarray:
    if head_fusion == "mean":
        return a.mean(axis=1)
    if head_fusion == "max":
        return a.max(axis=1)
    return a.min(axis=1)


def _row_normalize(a):
    s = a.sum(-1, keepdims=True)
    return np.divide(a, s, out=np.zeros_like(a), where=s > 0)


def _residual_matrices(weights, head_fusion, residual, mask):
    v.check_one_of("head_fusion", head_fusion, _FUSIONS)
    names, arrays = _as_layers(weights, chain=True)
    b, t = arrays[0].shape[0], arrays[0].shape[-1]
    m = _as_mask(mask, b, t)
    pair = (m[:, None, :, None] & m[:, None, None, :]).astype(np.float64)
    eye = np.eye(t)[None] * m[:, :, None]
    mats = []
    for a in arrays:
        fused = _row_normalize(_fuse(_row_normalize(a * pair), head_fusion))
        if residual:
            fused = _row_normalize(0.5 * fused + 0.5 * eye)
        mats.append(fused)
    return names, mats, m


def attention_rollout(
    weights,
    *,
    head_fusion: str = "mean",
    residual: bool = True,
    mask=None,
) -> np.ndarray:
    """Attention rollout: how much each input token reaches each output position.

    Heads are fused (`head_fusion`), the residual connection is modelled as
    `0.5 * A + 0.5 * I` and rows are re-normalized; the layers' matrices are
    then multiplied from the first layer to the last:
    `R = A_L @ ... @ A_1`. Masked positions (`mask` False) are removed first:
    their rows and columns are zeroed and every other row renormalized over
    the unmasked keys, so they receive and pass on nothing.

    Args:
        weights: `{layer: (B, H, T, T)}` in layer order (as returned by
            `collect`), a list of such arrays, or one array.
        head_fusion: How heads are combined: `"mean"`, `"max"` or `"min"`.
        residual: Add the residual identity (the paper's default).
        mask: Optional `(B, T)` boolean array, True on real tokens.

    Returns:
        Float array `(B, T, T)`: `R[b, i, j]` is the share of input token `j`
        in output position `i`. Unmasked rows sum to 1.

    Raises:
        ValueError: for an unknown `head_fusion` or shapes that do not fit.

    Example:

    >>> import numpy as np
    >>> from kerastrace.attention import attention_rollout
    >>> a = np.array([[[[1.0, 0.0], [1.0, 0.0]]]])  # (B=1, H=1, 2, 2)
    >>> attention_rollout([a, a])[0].round(3).tolist()
    [[1.0, 0.0], [0.75, 0.25]]

    References:
        - [Abnar & Zuidema, 2020, Quantifying Attention Flow in
          Transformers](https://arxiv.org/abs/2005.00928)
    """
    _, mats, _ = _residual_matrices(weights, head_fusion, residual, mask)
    out = mats[0]
    for a in mats[1:]:
        out = a @ out
    return out.astype(np.float32)


QUERIES = ("auto", "cls", "mean", "last")


def resolve_query(query, causal: bool = False, pooled: bool = False):
    """Resolve `query="auto"`: `"last"` for causal models, `"mean"` for mean-pooled ones,
    else `"cls"` (the first real token, where a `[CLS]`-style model reads its output)."""
    if isinstance(query, str) and query == "auto":
        return "last" if causal else ("mean" if pooled else "cls")
    return query


def query_scores(matrix, query="cls", mask=None) -> np.ndarray:
    """One row per example of a `(B, T, T)` relevance matrix, for the query a model reads.

    Rollout, flow and gradient-weighted rollout give a matrix `R[b, i, j]`:
    how much input token `j` reaches position `i`. The explanation of a
    prediction is the row of the position the model reads its output from:

    - `"cls"`: the first real (unmasked) position, where `[CLS]`-style
      classifiers read (with left padding, not position 0);
    - `"last"`: the last real position, where causal language models read;
    - `"mean"`: the mean of the real rows (mean-pooled models);
    - an int: that position (negative counts from the end, as in Python),
      or a `(B,)` int array with one position per example (the explained
      position of each sequence-to-sequence or language-model target).

    Args:
        matrix: `(B, T, T)` array.
        query: `"cls"`, `"last"`, `"mean"`, an int or a `(B,)` int array.
        mask: Optional `(B, T)` boolean array, True on real tokens.

    Returns:
        `(B, T)` float32 scores, 0 on masked positions.

    Example:

    >>> import numpy as np
    >>> r = np.arange(9.0).reshape(1, 3, 3)
    >>> query_scores(r, "last", mask=np.array([[False, True, True]])).tolist()
    [[0.0, 7.0, 8.0]]
    >>> query_scores(r, "cls", mask=np.array([[False, True, True]])).tolist()
    [[0.0, 4.0, 5.0]]
    """
    r = np.asarray(matrix, dtype=np.float64)
    if r.ndim != 3 or r.shape[1] != r.shape[2]:
        raise v.invalid("matrix", "a (B, T, T) array", f"array of shape {r.shape}")
    b, t = r.shape[0], r.shape[1]
    m = _as_mask(mask, b, t)
    if isinstance(query, str):
        v.check_one_of("query", query, QUERIES[1:])
        if query == "mean":
            w = m.astype(np.float64)
            out = (r * w[:, :, None]).sum(1) / np.maximum(w.sum(1, keepdims=True), 1.0)
        else:
            rows = np.zeros(b, int)
            for i in range(b):
                real = np.flatnonzero(m[i])
                if real.size:
                    rows[i] = real[0] if query == "cls" else real[-1]
            out = r[np.arange(b), rows]
    elif isinstance(query, (int, np.integer)) and not isinstance(query, bool) and -t <= query < t:
        out = r[:, int(query)]
    elif (
        isinstance(query, np.ndarray) and query.shape == (b,)
        and np.issubdtype(query.dtype, np.integer) and np.all((query >= -t) & (query < t))
    ):
        out = r[np.arange(b), query]
    else:
        raise v.invalid(
            "query", f"'cls', 'last', 'mean', 'auto', an int in [-{t}, {t}) or one such int "
            "per example", query,
        )
    return np.where(m, out, 0.0).astype(np.float32)


def _max_flow(cap: np.ndarray, s: int, t: int) -> float:
    """Edmonds-Karp max-flow on a dense capacity matrix (BFS vectorized per level).

    The simple, slow solver behind `attention_flow(method="reference")`; it
    cross-checks the batched solver of `_flow.py`.
    """
    n = cap.shape[0]
    res = cap.copy()
    total = 0.0
    eps = 1e-12
    while True:
        parent = np.full(n, -1)
        parent[s] = s
        frontier = np.array([s])
        while frontier.size and parent[t] < 0:
            reach = res[frontier] > eps
            new = reach.any(axis=0) & (parent < 0)
            idx = np.flatnonzero(new)
            if not idx.size:
                break
            parent[idx] = frontier[np.argmax(reach[:, idx], axis=0)]
            frontier = idx
        if parent[t] < 0:
            return total
        path = []
        node = t
        while node != s:
            path.append((parent[node], node))
            node = parent[node]
        us, vs = np.array(path).T
        bottleneck = res[us, vs].min()
        res[us, vs] -= bottleneck
        res[vs, us] += bottleneck
        total += bottleneck


def _reference_flows(mats, sources, sinks, on_progress=None) -> np.ndarray:
    """`_flow.max_flows` by one Edmonds-Karp run per pair on the full layered graph."""
    t = mats[0].shape[0]
    n_layers = len(mats)
    size = (n_layers + 1) * t
    cap = np.zeros((size, size))
    # node (level, pos) -> level * t + pos; level 0 = inputs, level L = outputs.
    for li, a in enumerate(mats):
        hi, lo = (li + 1) * t, li * t
        cap[hi : hi + t, lo : lo + t] = a
    top = n_layers * t
    out = np.zeros(len(sources))
    for k, (i, j) in enumerate(zip(sources, sinks)):
        out[k] = _max_flow(cap, top + int(i), int(j))
        if on_progress is not None:
            on_progress(1)
    return out


def _widest(a_top, a_bottom):
    """(max, min) matrix product: best bottleneck through one intermediate node."""
    return np.max(np.minimum(a_top[:, :, None], a_bottom[None, :, :]), axis=1)


_FLOW_METHODS = ("maxflow", "widest_path", "reference")
# Above this many (problem x edge) units an exact flow warns and shows a progress bar:
# about 2 s of the dense batched solver on one CPU core (6 layers, T=64: 6.8e7).
_FLOW_WARN_WORK = 2e7


def _exact_flows(mats, m, method, verbose):
    """Max-flow values `(B, T, T)` (not normalized) for every pair of real tokens."""
    b, t = m.shape
    n_layers = len(mats)
    total = int((m.sum(1).astype(np.int64) ** 2).sum())
    edges = _flow.problem_edges(n_layers, t)
    big = total * edges >= _FLOW_WARN_WORK
    solve = _flow.max_flows if method == "maxflow" else _reference_flows
    out = np.zeros((b, t, t))
    bar = None  # None: not decided yet; False: no bar
    done = 0

    def tick(n):
        nonlocal done
        done += n
        if bar:
            bar.update(done)

    for bi in range(b):
        valid = np.flatnonzero(m[bi])
        n = valid.size
        if not n:
            continue
        # masked tokens have no edges: solve on the real tokens only
        sub = [a[bi][np.ix_(valid, valid)] for a in mats]
        order = np.arange(n * n)
        first = 0
        if big and bar is None:
            # time a random sample of the pairs first (the cost varies over the matrix,
            # e.g. a causal model's upper triangle is free), then warn once
            first = min(n * n, _flow.chunk_size(n_layers, n) if method == "maxflow" else n)
            sample = np.sort(np.random.default_rng(0).choice(n * n, first, replace=False))
            order = np.concatenate([sample, np.setdiff1d(order, sample)])
        sources, sinks = np.divmod(order, n)
        flows = np.zeros(n * n)
        if first:
            start = time.perf_counter()
            flows[order[:first]] = solve(sub, sources[:first], sinks[:first])
            estimate = (time.perf_counter() - start) / first * total
            warnings.warn(
                f"attention_flow(method={method!r}) solves {total:,} exact max-flow "
                f"problems ({b} example(s), {n_layers} layers, {t} tokens, {edges:,} "
                f"edges each): about {_duration(estimate)} on this machine. "
                "method='widest_path' (the best single path) and attention_rollout are "
                "instant; verbose=0 hides the progress bar.",
                UserWarning,
                stacklevel=3,
            )
            if verbose:
                import keras  # only for the progress bar

                bar = keras.utils.Progbar(total, unit_name="pair")
            else:
                bar = False
            tick(first)
        flows[order[first:]] = solve(sub, sources[first:], sinks[first:], on_progress=tick)
        out[bi][np.ix_(valid, valid)] = flows.reshape(n, n)
    return out


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def attention_flow(
    weights,
    *,
    head_fusion: str = "mean",
    residual: bool = True,
    mask=None,
    method: str = "maxflow",
    verbose: int = 1,
) -> np.ndarray:
    """Attention flow: max-flow from each output position to each input token.

    The layers form a layered graph with `(L + 1) * T` nodes; the edge from
    position `i` above layer `l` to position `j` below it has the capacity of
    the (head-fused, residual-adjusted) attention `A_l[i, j]`, as in attention
    rollout. The flow value from output node `i` to input node `j` is its
    maximum flow, computed exactly. Each row is normalized to sum to 1, as in
    the authors' code. Masked tokens are removed from the graph.

    Methods:

    - `"maxflow"` (default, exact): the `T^2` max-flow problems of an example
      are solved side by side by one vectorized Dinic solver (blocking flows
      by Karzanov's preflow waves), each on the nodes that lie on one of its
      paths. Six layers with T=64 (4,096 problems) take seconds: about 40
      times less than one Edmonds-Karp run per pair, 13 times for a causal
      model (`benchmarks/bench_attention_flow.py`).
    - `"widest_path"`: the cheaper lower bound of the best single path
      (its bottleneck, by a (max, min) matrix product).
    - `"reference"`: the same exact values by one Edmonds-Karp run per pair,
      slow; kept to cross-check `"maxflow"`.

    Exact flows on big inputs (more than about 2e7 problem-edges, e.g. six
    layers with 64 tokens) emit one `UserWarning` with the estimated time
    and show a `keras.utils.Progbar` of the solved pairs.

    Args:
        weights: `{layer: (B, H, T, T)}` in layer order, a list, or one array.
        head_fusion: `"mean"`, `"max"` or `"min"` over heads.
        residual: Model the residual connection as `0.5 * A + 0.5 * I`.
        mask: Optional `(B, T)` boolean array, True on real tokens.
        method: `"maxflow"` (exact, fast), `"widest_path"` or `"reference"`.
        verbose: 1 shows a progress bar on big exact problems, 0 hides it.

    Returns:
        Float array `(B, T, T)`; `F[b, i, j]` is the normalized flow from output
        position `i` to input token `j`.

    Raises:
        ValueError: for an unknown `head_fusion` or `method`, or a `verbose`
            other than 0 or 1.

    Example:

    >>> import numpy as np
    >>> from kerastrace.attention import attention_flow
    >>> a = np.array([[[[0.0, 1.0], [1.0, 0.0]]]])
    >>> attention_flow([a], residual=False)[0].tolist()
    [[0.0, 1.0], [1.0, 0.0]]

    References:
        - [Abnar & Zuidema, 2020, Quantifying Attention Flow in
          Transformers](https://arxiv.org/abs/2005.00928)
    """
    v.check_one_of("method", method, _FLOW_METHODS)
    if isinstance(verbose, (bool, np.bool_)):
        verbose = int(verbose)
    elif not (isinstance(verbose, (int, np.integer)) and verbose in (0, 1)):
        raise v.invalid("verbose", "0 or 1 (or a bool)", verbose)
    _, mats, m = _residual_matrices(weights, head_fusion, residual, mask)
    b, t = m.shape
    if method == "widest_path":
        flows = np.zeros((b, t, t))
        for bi in range(b):
            acc = mats[-1][bi]
            for a in reversed(mats[:-1]):
                acc = _widest(acc, a[bi])
            flows[bi] = acc
    else:
        flows = _exact_flows(mats, m, method, verbose)
    pair = m[:, :, None] & m[:, None, :]
    return _row_normalize(flows * pair).astype(np.float32)


@dataclasses.dataclass
class HeadStatistics:
    """Per-head statistics of attention weights, one row per layer.

    Attributes:
        layers: Layer names, in order.
        entropy: `(L, H)` mean entropy (nats) of the attention rows over
            unmasked queries and keys. Uniform attention over `n` keys gives
            `log(n)`.
        distance: `(L, H)` mean attention distance `sum_j p_ij |i - j|` in
            tokens over unmasked queries.
        special_share: `(L, H)` mean share of attention on the special
            positions, or None when none were given.
    """

    layers: list[str]
    entropy: np.ndarray
    distance: np.ndarray
    special_share: np.ndarray | None = None

    @property
    def num_heads(self) -> int:
        return int(self.entropy.shape[1])

    def scalars(self) -> dict[str, float]:
        """Flat `{"entropy/<layer>/head_<h>": value, ...}` for logging."""
        out = {}
        for stat in ("entropy", "distance", "special_share"):
            arr = getattr(self, stat)
            if arr is None:
                continue
            for li, name in enumerate(self.layers):
                for h in range(arr.shape[1]):
                    if np.isfinite(arr[li, h]):
                        out[f"{stat}/{name}/head_{h}"] = float(arr[li, h])
        return out

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {
            "layers": list(self.layers),
            "entropy": self.entropy.tolist(),
            "distance": self.distance.tolist(),
            "special_share": None if self.special_share is None else self.special_share.tolist(),
        }


def _special_positions(special, token_ids, special_ids, b, t):
    if special is None and special_ids is None:
        return None
    if special is not None:
        s = np.asarray(special)
        if s.dtype == bool:
            return _bool_bt(s, b, t, "special", "a (B, T) boolean array or a list of positions")
        pos = np.zeros((b, t), dtype=bool)
        pos[:, s.astype(int).ravel()] = True
        return pos
    if token_ids is None:
        raise ValueError(
            "Received an invalid value for argument `token_ids`: `special_ids` needs the "
            "(B, T) token ids to find the special tokens. Received: token_ids=None"
        )
    ids = np.asarray(token_ids)
    if ids.shape != (b, t):
        raise ValueError(
            "Received an invalid value for argument `token_ids`, expected shape "
            f"(B, T)=({b}, {t}). Received: token_ids.shape={ids.shape}"
        )
    return np.isin(ids, np.asarray(list(special_ids)))


def head_statistics(
    weights,
    *,
    mask=None,
    special=None,
    token_ids=None,
    special_ids=None,
) -> HeadStatistics:
    """Entropy, mean attention distance and share on special tokens per head.

    Masked positions (`mask` False) are excluded: masked queries are not
    averaged over, and the weights of each query are renormalized over its
    unmasked keys first.

    Args:
        weights: `{layer: (B, H, T, T)}`, a list of such arrays, or one array.
        mask: Optional `(B, T)` boolean array, True on real tokens.
        special: Special positions: a `(B, T)` boolean array or a list of
            positions (e.g. `[0]` for a leading `[CLS]`).
        token_ids: `(B, T)` token ids, used with `special_ids`.
        special_ids: Token ids counted as special (e.g. the ids of `[CLS]`
            and `[SEP]`).

    Returns:
        A `HeadStatistics`.

    Raises:
        ValueError: for shapes that do not fit.

    Example:

    >>> import numpy as np
    >>> from kerastrace.attention import head_statistics
    >>> w = np.full((1, 1, 4, 4), 0.25)
    >>> stats = head_statistics(w, special=[0])
    >>> round(float(stats.entropy[0, 0]), 4) == round(float(np.log(4)), 4)
    True
    >>> float(stats.special_share[0, 0]), float(stats.distance[0, 0])
    (0.25, 1.25)
    """
    names, arrays = _as_layers(weights)
    sites = getattr(weights, "sites", None) or {}
    b = arrays[0].shape[0]
    self_shapes = [a.shape[-1] for a in arrays if a.shape[-1] == a.shape[-2]]
    t = self_shapes[0] if self_shapes else arrays[0].shape[-1]
    m = _as_mask(mask, b, t)
    sp = _special_positions(special, token_ids, special_ids, b, t)
    ent, dis, spe = [], [], []
    for n, a in zip(names, arrays):
        tq, tk = a.shape[-2], a.shape[-1]
        site = sites.get(n)
        is_self = tq == tk and not (site is not None and site.kind == "cross")
        # The mask applies to the axes of its length; cross-attention has no
        # token distance (queries and keys are different sequences).
        mq = m if tq == t else np.ones((b, tq), bool)
        mk = m if tk == t else np.ones((b, tk), bool)
        pair = (mq[:, None, :, None] & mk[:, None, None, :]).astype(np.float64)
        qmask = mq[:, None, :].astype(np.float64)
        n_q = qmask.sum(axis=(0, 2))
        dist = np.abs(np.arange(tq)[:, None] - np.arange(tk)[None, :]).astype(np.float64)
        p = _row_normalize(a * pair)
        with np.errstate(divide="ignore", invalid="ignore"):
            logp = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), 0.0)
        h = -(p * logp).sum(-1)  # (B, H, Tq)
        d = (p * dist).sum(-1)
        denom = np.maximum(n_q, 1.0)
        ent.append((h * qmask).sum(axis=(0, 2)) / denom)
        dis.append((d * qmask).sum(axis=(0, 2)) / denom if is_self else np.full(a.shape[1], np.nan))
        if sp is not None:
            sk = sp if tk == t else np.zeros((b, tk), bool)
            s = (p * sk[:, None, None, :]).sum(-1)
            spe.append((s * qmask).sum(axis=(0, 2)) / denom)
    return HeadStatistics(
        layers=names,
        entropy=_ragged(ent),
        distance=_ragged(dis),
        special_share=_ragged(spe) if sp is not None else None,
    )


def _ragged(rows) -> np.ndarray:
    """`(L, H_max)` from per-layer rows of possibly different head counts (NaN-padded)."""
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _head_rows(arrays, m):
    """Per head: (B, Tq, Tk) normalized rows over unmasked keys, and query mask."""
    pair = (m[:, None, :, None] & m[:, None, None, :]).astype(np.float64)
    heads = []
    for li, a in enumerate(arrays):
        p = _row_normalize(a * pair)
        for h in range(a.shape[1]):
            heads.append((li, h, p[:, h]))
    return heads


def head_similarity(
    weights, *, mask=None, metric: str = "js"
) -> tuple[list[tuple[str, int]], np.ndarray]:
    """Pairwise similarity of all heads (of all layers) on the same inputs.

    `metric="js"`: `1 - JS(p, q) / log(2)` averaged over unmasked queries
    (1 for identical rows, 0 for disjoint ones). `metric="cosine"`: cosine
    similarity of the flattened unmasked weights.

    Args:
        weights: `{layer: (B, H, T, T)}`, a list of such arrays, or one array.
        mask: Optional `(B, T)` boolean array, True on real tokens.
        metric: `"js"` or `"cosine"`.

    Returns:
        `(heads, sim)`: `heads` lists `(layer, head)` pairs and `sim` is the
        symmetric `(N, N)` similarity matrix.

    Raises:
        ValueError: for an unknown metric.

    Example:

    >>> import numpy as np
    >>> from kerastrace.attention import head_similarity
    >>> w = np.stack([np.eye(3), np.eye(3), np.full((3, 3), 1 / 3)])[None]
    >>> heads, sim = head_similarity(w)
    >>> sim.round(3)[0].tolist()
    [1.0, 1.0, 0.541]
    """
    v.check_one_of("metric", metric, ("js", "cosine"))
    names, arrays = _as_layers(weights, chain=True)
    b, t = arrays[0].shape[0], arrays[0].shape[-1]
    m = _as_mask(mask, b, t)
    heads = _head_rows(arrays, m)
    n = len(heads)
    sim = np.eye(n)
    qm = m.astype(np.float64)
    nq = max(qm.sum(), 1.0)
    for i in range(n):
        for j in range(i + 1, n):
            p, q = heads[i][2], heads[j][2]
            if metric == "cosine":
                pm = (p * m[:, :, None] * m[:, None, :]).ravel()
                qv = (q * m[:, :, None] * m[:, None, :]).ravel()
                den = np.linalg.norm(pm) * np.linalg.norm(qv)
                s = float(pm @ qv / den) if den > 0 else 0.0
            else:
                mid = 0.5 * (p + q)
                with np.errstate(divide="ignore", invalid="ignore"):
                    kl_p = np.where(
                        p > 0, p * np.log(np.where(p > 0, p, 1) / np.where(mid > 0, mid, 1)), 0
                    ).sum(-1)
                    kl_q = np.where(
                        q > 0, q * np.log(np.where(q > 0, q, 1) / np.where(mid > 0, mid, 1)), 0
                    ).sum(-1)
                js = 0.5 * (kl_p + kl_q) / np.log(2)
                s = float(1.0 - (js * qm).sum() / nq)
            sim[i, j] = sim[j, i] = s
    return [(names[li], h) for li, h, _ in heads], sim


def duplicate_heads(
    weights, *, mask=None, threshold: float = 0.9, metric: str = "js"
) -> list[tuple[tuple[str, int], tuple[str, int], float]]:
    """Pairs of heads whose attention patterns are near-duplicates.

    Args:
        weights: `{layer: (B, H, T, T)}`, a list of such arrays, or one array.
        mask: Optional `(B, T)` boolean array, True on real tokens.
        threshold: Similarity (see `head_similarity`) at or above which two
            heads count as duplicates, in `[0, 1]`.
        metric: `"js"` or `"cosine"`.

    Returns:
        A list of `((layer_a, head_a), (layer_b, head_b), similarity)`, most
        similar first.

    Raises:
        ValueError: for a threshold outside `[0, 1]` or an unknown metric.

    Example:

    >>> import numpy as np
    >>> from kerastrace.attention import duplicate_heads
    >>> w = np.stack([np.eye(3), np.eye(3), np.full((3, 3), 1 / 3)])[None]
    >>> duplicate_heads(w)
    [(('layer_0', 0), ('layer_0', 1), 1.0)]
    """
    threshold = v.check_probability("threshold", threshold, inclusive_high=True)
    heads, sim = head_similarity(weights, mask=mask, metric=metric)
    pairs = []
    for i in range(len(heads)):
        for j in range(i + 1, len(heads)):
            if sim[i, j] >= threshold:
                pairs.append((heads[i], heads[j], round(float(sim[i, j]), 6)))
    return sorted(pairs, key=lambda p: -p[2])
