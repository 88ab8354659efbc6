"""Dataset-level aggregates of attributions and of attention head statistics."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from kerastrace._utils import validation as v
from kerastrace.attention import HeadStatistics, collect, head_statistics
from kerastrace.scale._attribute import (
    TOKEN_KEY,
    check_structure,
    model_inputs,
    split_element,
)
from kerastrace.scale._store import AttributionStore


class _Sum:
    """A running sum whose trailing shape grows (padded batches of varying length)."""

    def __init__(self):
        self.value = None

    def add(self, x):
        x = np.asarray(x, np.float64)
        if self.value is None:
            self.value = x.copy()
            return
        shape = tuple(max(a, b) for a, b in zip(self.value.shape, x.shape))
        if shape != self.value.shape:
            self.value = np.pad(self.value, [(0, s - c) for s, c in zip(shape, self.value.shape)])
        if shape != x.shape:
            x = np.pad(x, [(0, s - c) for s, c in zip(shape, x.shape)])
        self.value += x


def _ratio(num, den):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


@dataclasses.dataclass
class DatasetSummary:
    """Dataset-level aggregates of an `AttributionStore` (see `summarize`).

    Attributes:
        num_examples: Number of examples.
        feature_mean_abs: Mean `|attribution|` per feature (per position for
            token models, over the examples where the position is a real
            token), shape of one example's attributions.
        feature_mean: Signed mean per feature, same averaging.
        classes: The class ids (0..C-1) used for grouping: the labels, or
            the targets when there are no per-example class labels (none,
            or per-position labels such as `(B, T)` token labels).
        class_counts: `(C,)` examples per class.
        class_feature_mean_abs: `(C, ...)` mean `|attribution|` per feature
            for each class.
        class_total_mean: `(C,)` mean of the summed attribution per example.
        token_mean_abs: `(V,)` mean `|score|` per vocabulary id over all its
            occurrences (token models), or None.
        token_mean: `(V,)` signed mean per vocabulary id, or None.
        token_counts: `(V,)` occurrences per vocabulary id, or None.
        class_token_mean_abs: `(C, V)` per-class `token_mean_abs`, or None.
        delta: Completeness-delta distribution (`count`, `mean`, `mean_abs`,
            `max_abs`, `p50_abs`, `p90_abs`, `p99_abs`, `histogram` counts and
            `edges` of `|delta|`), or None when no deltas were stored.
    """

    num_examples: int
    feature_mean_abs: np.ndarray
    feature_mean: np.ndarray
    classes: np.ndarray
    class_counts: np.ndarray
    class_feature_mean_abs: np.ndarray
    class_total_mean: np.ndarray
    token_mean_abs: np.ndarray | None = None
    token_mean: np.ndarray | None = None
    token_counts: np.ndarray | None = None
    class_token_mean_abs: np.ndarray | None = None
    delta: dict | None = None

    def top_tokens(
        self, k: int = 10, min_count: int = 1, vocabulary=None, signed=False, exclude_ids=None
    ):
        """The `k` vocabulary ids with the largest mean `|score|` (or signed mean).

        Special tokens (`[CLS]`, `[SEP]`, padding) often carry large scores
        that say nothing about the text; they are left out when `vocabulary`
        is a `kerastrace.text.Tokenizer` (its `pad_id`, `cls_id`, `sep_id`)
        and whenever listed in `exclude_ids`.

        Args:
            k: How many.
            min_count: Ignore ids seen fewer times.
            vocabulary: Optional id -> token list (or a `Tokenizer` with
                `id_to_token`) to return token strings.
            signed: Rank by the signed mean instead of the mean magnitude.
            exclude_ids: Ids never ranked (e.g. `[tokenizer.pad_id, 101]`);
                None: the special ids of a `Tokenizer` vocabulary, else none.
                Pass `()` to rank every id.

        Returns:
            A list of `(token_or_id, score, count)`, best first.
        """
        if self.token_mean_abs is None:
            raise ValueError(
                "This summary has no per-token aggregates: the attributions were not "
                "per-token scores of integer token-id inputs (use reduce_hidden='sum' with "
                "keep_inputs=True)."
            )
        k = v.check_positive_int("k", k)
        score = self.token_mean if signed else self.token_mean_abs
        ok = self.token_counts >= min_count
        if exclude_ids is None:
            exclude_ids = [
                getattr(vocabulary, name) for name in ("pad_id", "cls_id", "sep_id")
                if isinstance(getattr(vocabulary, name, None), (int, np.integer))
            ]
        try:
            excluded = np.asarray(list(exclude_ids), dtype=np.int64).reshape(-1)
        except (TypeError, ValueError):
            raise v.invalid(
                "exclude_ids", "an iterable of integer token ids", exclude_ids
            ) from None
        excluded = excluded[(excluded >= 0) & (excluded < ok.size)]
        ok = ok.copy()
        ok[excluded] = False
        order = [i for i in np.argsort(-np.where(ok, score, -np.inf), kind="stable") if ok[i]]
        out = []
        for i in order[:k]:
            name = int(i)
            if vocabulary is not None:
                name = (
                    vocabulary.id_to_token(int(i))
                    if hasattr(vocabulary, "id_to_token")
                    else vocabulary[int(i)]
                )
            out.append((name, float(score[i]), int(self.token_counts[i])))
        return out

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        out = {}
        for f in dataclasses.fields(self):
            val = getattr(self, f.name)
            if isinstance(val, np.ndarray):
                val = val.tolist()
            elif isinstance(val, dict):
                val = {
                    k: (x.tolist() if isinstance(x, np.ndarray) else x) for k, x in val.items()
                }
            out[f.name] = val
        return out


def summarize(
    store: AttributionStore,
    *,
    pad_id: int | None = 0,
    vocab_size: int | None = None,
    num_classes: int | None = None,
    bins: int = 20,
) -> DatasetSummary:
    """Aggregate stored attributions over the dataset, shard by shard.

    Token models (integer `inputs` of the attributions' shape, e.g. `(B, T)`
    ids with `(B, T)` scores from `reduce_hidden="sum"`) also get per
    vocabulary id aggregates: the scores are scattered onto their ids, and
    positions holding `pad_id` are left out everywhere.

    A store of an interrupted run (`store.complete` is False) is summarized
    as it is, with a `UserWarning` saying that it holds only part of the
    dataset.

    Args:
        store: The result of `attribute_dataset` (or `AttributionStore.open`).
        pad_id: Padding id excluded from token aggregates and per-position
            means (None keeps every position).
        vocab_size: Vocabulary size `V` (default: largest id + 1).
        num_classes: Number of classes `C` (default: largest class + 1).
        bins: Histogram bins of the completeness delta.

    Returns:
        A `DatasetSummary`.

    Raises:
        ValueError: for an empty store, ids/classes beyond `vocab_size` /
            `num_classes`, or a damaged shard (named).

    Example:

    >>> import numpy as np
    >>> from kerastrace.scale import AttributionStore, summarize
    >>> shard = {"index": np.arange(2), "targets": np.array([0, 1]),
    ...          "attributions": np.array([[1.0, -2.0, 5.0], [3.0, 4.0, 0.0]]),
    ...          "inputs": np.array([[7, 8, 0], [8, 8, 0]])}
    >>> manifest = {"shards": [{"count": 2}], "complete": True}
    >>> s = summarize(AttributionStore(None, manifest, [shard]))
    >>> s.token_mean_abs[7:].tolist(), s.token_counts[7:].tolist()
    ([1.0, 3.0], [1, 3])
    """
    if not isinstance(store, AttributionStore):
        raise TypeError(
            "Received an invalid value for argument `store`, expected an AttributionStore. "
            f"Received: store of type {type(store).__name__}"
        )
    bins = v.check_positive_int("bins", bins)
    store.warn_if_incomplete("summarize")
    shards = list(_shard_iter(store))
    if not shards:
        raise ValueError("Received an invalid value for argument `store`: it holds no examples.")
    first = shards[0]
    has_tokens = (
        "inputs" in first
        and np.issubdtype(first["inputs"].dtype, np.integer)
        and first["inputs"].shape == first["attributions"].shape
    )
    groups = _groups(shards)
    # Examples without a class (callable targets and no labels, target -1) only
    # enter the dataset-wide aggregates.
    n_cls = num_classes or int(max([int(g.max()) for g in groups if g.size] + [-1]) + 1)
    if has_tokens:
        n_voc = vocab_size or int(max(int(s["inputs"].max()) for s in shards) + 1)
        tok_abs = np.zeros(n_voc)
        tok_sum = np.zeros(n_voc)
        tok_cnt = np.zeros(n_voc, np.int64)
        cls_tok = np.zeros((n_cls, n_voc))
        cls_tok_cnt = np.zeros((n_cls, n_voc))
    f_abs, f_sum, f_cnt = _Sum(), _Sum(), _Sum()
    c_abs, c_m, c_cnt = _Sum(), _Sum(), np.zeros(n_cls, np.int64)
    c_total = np.zeros(n_cls)
    deltas = []
    n = 0
    for s, g in zip(shards, groups):
        a = np.asarray(s["attributions"], np.float64)
        b = a.shape[0]
        n += b
        if g.size and g.max() >= n_cls:
            raise ValueError(
                "Received an invalid value for argument `num_classes`: the store has class "
                f"{int(g.max())}. Received: num_classes={num_classes}"
            )
        if has_tokens and pad_id is not None:
            m = (s["inputs"] != pad_id).astype(np.float64)
        else:
            m = np.ones_like(a)
        f_abs.add((np.abs(a) * m).sum(0))
        f_sum.add((a * m).sum(0))
        f_cnt.add(m.sum(0))
        has = g >= 0
        onehot = np.zeros((b, n_cls))
        onehot[np.flatnonzero(has), g[has]] = 1.0
        c_abs.add(np.tensordot(onehot, np.abs(a) * m, axes=(0, 0)))
        c_m.add(np.tensordot(onehot, m, axes=(0, 0)))
        c_cnt += onehot.sum(0).astype(np.int64)
        c_total += onehot.T @ (a * m).reshape(b, -1).sum(1)
        if has_tokens:
            ids = s["inputs"].reshape(-1).astype(np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= n_voc):
                raise ValueError(
                    "Received an invalid value for argument `vocab_size`: the inputs hold "
                    f"token ids up to {int(ids.max())}. Received: vocab_size={vocab_size}"
                )
            w = m.reshape(-1)
            flat = a.reshape(-1)
            tok_abs += np.bincount(ids, np.abs(flat) * w, n_voc)
            tok_sum += np.bincount(ids, flat * w, n_voc)
            tok_cnt += np.bincount(ids, w, n_voc).astype(np.int64)
            gr = np.repeat(g, a[0].size)
            ok = gr >= 0
            cls_ids = (gr * n_voc + ids)[ok]
            size = n_cls * n_voc
            cls_tok += np.bincount(cls_ids, (np.abs(flat) * w)[ok], size).reshape(n_cls, -1)
            cls_tok_cnt += np.bincount(cls_ids, w[ok], size).reshape(n_cls, -1)
        if "delta" in s:
            deltas.append(np.asarray(s["delta"], np.float64))
    cnt = f_cnt.value
    class_feature = _ratio(c_abs.value, c_m.value)
    summary = DatasetSummary(
        num_examples=n,
        feature_mean_abs=_ratio(f_abs.value, cnt),
        feature_mean=_ratio(f_sum.value, cnt),
        classes=np.arange(n_cls),
        class_counts=c_cnt,
        class_feature_mean_abs=class_feature,
        class_total_mean=_ratio(c_total, c_cnt),
    )
    if has_tokens:
        summary.token_mean_abs = _ratio(tok_abs, tok_cnt)
        summary.token_mean = _ratio(tok_sum, tok_cnt)
        summary.token_counts = tok_cnt
        summary.class_token_mean_abs = _ratio(cls_tok, cls_tok_cnt)
    if deltas:
        d = np.concatenate(deltas)
        ad = np.abs(d)
        counts, edges = np.histogram(ad, bins=bins)
        summary.delta = {
            "count": int(d.size),
            "mean": float(d.mean()),
            "mean_abs": float(ad.mean()),
            "max_abs": float(ad.max()),
            "p50_abs": float(np.percentile(ad, 50)),
            "p90_abs": float(np.percentile(ad, 90)),
            "p99_abs": float(np.percentile(ad, 99)),
            "histogram": counts,
            "edges": edges,
        }
    return summary


def _class_labels(labels):
    """`(B,)` classes from per-example labels, or None for other labels (per-position)."""
    g = np.asarray(labels)
    if g.ndim == 2 and g.shape[1] == 1:
        g = g[:, 0]
    elif g.ndim == 2 and np.issubdtype(g.dtype, np.number) and g.size:
        if np.any(g < 0) or not np.allclose(g.sum(axis=1), 1.0, atol=1e-3):
            return None
        g = np.argmax(g, axis=1)
    if g.ndim != 1 or not np.issubdtype(g.dtype, np.number) or np.any(g != np.round(g)):
        return None
    return g.astype(np.int64)


def _groups(shards):
    """Per-shard classes: the labels when every shard has class labels, else the targets."""
    labels = [_class_labels(s["labels"]) if "labels" in s else None for s in shards]
    if all(g is not None for g in labels):
        return labels
    return [np.asarray(s["targets"]).astype(np.int64) for s in shards]


def _shard_iter(store):
    for s in store.iter_shards():
        if "attributions" not in s:
            raise ValueError(
                "Received an invalid value for argument `store`: per-input attributions "
                "(multi-input models) are not summarized; summarize one input at a time."
            )
        yield s


def attention_statistics_dataset(
    model,
    dataset: tf.data.Dataset,
    *,
    pad_id: int | None = 0,
    special=None,
    special_ids=None,
    layers: list[str] | None = None,
    progress: bool = False,
) -> HeadStatistics:
    """Attention head statistics averaged over a whole dataset.

    For each batch, the weights of every attention layer are collected with
    `kerastrace.attention.collect` and reduced with
    `kerastrace.attention.head_statistics`; the per-batch means are combined
    per layer, weighted by that layer's number of unmasked queries, so the
    result equals `head_statistics` over the whole dataset at once, without
    holding all the `(N, H, T, T)` weights in memory. Entries that
    `head_statistics` leaves NaN (the distance of cross-attention layers,
    heads beyond a layer's head count) stay NaN; the others average over the
    batches where they are defined.

    Padding: dict features with a `"padding_mask"` (keras-hub) give the mask
    of real tokens; otherwise integer token ids `(B, T)` (the dict's
    `"token_ids"` or the only input) equal to `pad_id` are masked. Masked
    positions are excluded as queries and keys.

    Args:
        model: A Keras model with attention layers.
        dataset: A batched `tf.data.Dataset`: `x`, `(x,)` or `(x, y, ...)`
            elements with `x` an array, a tuple or a dict (keras-hub:
            `{"token_ids", "padding_mask", ...}`).
        pad_id: Padding id of token-id inputs without a `"padding_mask"`
            (None: no id-based mask).
        special: Special positions, as in `head_statistics` (e.g. `[0]`).
        special_ids: Special token ids, as in `head_statistics`.
        layers: Optional layer paths to keep (see `collect`).
        progress: Show a `keras.utils.Progbar`.

    Returns:
        A `HeadStatistics` with `(L, H)` entropy, distance (and special share).

    Raises:
        ValueError: for an empty dataset or elements that do not fit the model.

    Example:

    >>> import numpy as np, tensorflow as tf
    >>> from kerastrace.scale import attention_statistics_dataset
    >>> from kerastrace.testing.reference_models import build_text_classifier
    >>> model = build_text_classifier(20, 6, num_layers=1)
    >>> ids = np.array([[1, 5, 6, 0, 0, 0], [1, 7, 8, 9, 2, 0]], "int32")
    >>> stats = attention_statistics_dataset(model, tf.data.Dataset.from_tensor_slices(ids).batch(1))
    >>> stats.entropy.shape, bool(np.all(stats.entropy <= np.log(5) + 1e-6))
    ((1, 2), True)
    """
    if not isinstance(dataset, tf.data.Dataset):
        raise TypeError(
            "Received an invalid value for argument `dataset`, expected a batched "
            f"`tf.data.Dataset`. Received: dataset of type {type(dataset).__name__}"
        )
    check_structure(model, dataset.element_spec)
    cardinality = int(dataset.cardinality())
    bar = keras.utils.Progbar(cardinality if cardinality >= 0 else None) if progress else None
    acc = _StatsSum()
    for element in dataset:
        features, _ = split_element(element)
        inputs = model_inputs(features)
        call = list(inputs) if isinstance(inputs, tuple) else inputs
        weights = collect(model, call, layers=layers)
        ids = _token_ids(inputs)
        mask = _query_mask(inputs, ids, pad_id, weights)
        stats = head_statistics(
            weights,
            mask=mask,
            special=special,
            token_ids=ids if special_ids is not None else None,
            special_ids=special_ids,
        )
        acc.add(stats, _query_counts(weights, mask))
        if bar is not None:
            bar.add(1)
    return acc.result()


def _token_ids(inputs):
    if isinstance(inputs, dict):
        return inputs.get(TOKEN_KEY)
    return inputs[0] if isinstance(inputs, tuple) else inputs


def _self_length(weights):
    """The token axis `head_statistics` applies the mask to (first self-attention map)."""
    arrays = list(weights.values())
    square = [a.shape[-1] for a in arrays if a.shape[-1] == a.shape[-2]]
    return square[0] if square else arrays[0].shape[-1]


def _query_mask(inputs, ids, pad_id, weights):
    """`(B, T)` bool of real tokens, or None (no mask that fits the maps)."""
    b, t = next(iter(weights.values())).shape[0], _self_length(weights)
    mask = None
    if isinstance(inputs, dict) and "padding_mask" in inputs:
        mask = np.asarray(inputs["padding_mask"]).astype(bool)
    elif ids is not None and pad_id is not None:
        ids = np.asarray(ids)
        if np.issubdtype(ids.dtype, np.integer):
            mask = ids != pad_id
    return mask if mask is not None and mask.shape == (b, t) else None


def _query_counts(weights, mask):
    """Per layer: the number of queries `head_statistics` averaged over."""
    t = _self_length(weights)
    out = []
    for a in weights.values():
        b, tq = a.shape[0], a.shape[-2]
        out.append(float(mask.sum()) if mask is not None and tq == t else float(b * tq))
    return np.asarray(out)


class _StatsSum:
    """Query-weighted sums of per-batch `HeadStatistics`, NaN entries left out."""

    def __init__(self):
        self.layers = None
        self.num: dict[str, np.ndarray] = {}
        self.den: dict[str, np.ndarray] = {}

    def add(self, stats, counts):
        if self.layers is None:
            self.layers = list(stats.layers)
        elif list(stats.layers) != self.layers:
            raise ValueError(
                "Received an invalid value for argument `dataset`: its batches run "
                f"different attention sites ({self.layers} vs {list(stats.layers)})."
            )
        w = counts[:, None]
        for key in ("entropy", "distance", "special_share"):
            val = getattr(stats, key)
            if val is None:
                continue
            ok = np.isfinite(val)
            num = np.where(ok, val * w, 0.0)
            den = np.where(ok, np.broadcast_to(w, val.shape), 0.0)
            if key in self.num:
                self.num[key], self.den[key] = _padded_add(self.num[key], num), _padded_add(
                    self.den[key], den
                )
            else:
                self.num[key], self.den[key] = num, den

    def result(self) -> HeadStatistics:
        if self.layers is None:
            raise ValueError(
                "Received an invalid value for argument `dataset`: it is empty (no elements)."
            )
        out = {}
        for key, num in self.num.items():
            den = self.den[key]
            with np.errstate(divide="ignore", invalid="ignore"):
                out[key] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
        return HeadStatistics(
            layers=self.layers,
            entropy=out["entropy"],
            distance=out["distance"],
            special_share=out.get("special_share"),
        )


def _padded_add(a, b):
    shape = tuple(max(x, y) for x, y in zip(a.shape, b.shape))
    a = np.pad(a, [(0, s - c) for s, c in zip(shape, a.shape)])
    b = np.pad(b, [(0, s - c) for s, c in zip(shape, b.shape)])
    return a + b
