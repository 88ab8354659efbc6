"""`attribute_dataset`: any attribution method over a whole `tf.data.Dataset`."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from kerastrace._utils import instrument
from kerastrace._utils import validation as v
from kerastrace.scale import _store
from kerastrace.scale._store import AttributionStore

_REDUCE = ("sum", "norm")
#: The dict entry stored as `inputs` (what the per-token summaries read).
TOKEN_KEY = "token_ids"


# ------------------------------------------------------------------ elements
def split_element(element, name="dataset"):
    """Split a dataset element into `(features, labels)` the way Keras `fit` does.

    An element is `x`, `(x,)`, `(x, y)` or `(x, y, sample_weight)`. The
    features `x` are an array, a nested tuple for a multi-input model
    (`((x1, x2), y)`), or a dict of arrays (keras-hub text models:
    `({"token_ids": ..., "padding_mask": ...}, y)`, or the dict alone).
    """
    if isinstance(element, dict):
        return element, None
    if isinstance(element, (tuple, list)):
        if len(element) == 1:
            return element[0], None
        if len(element) in (2, 3):
            return element[0], element[1]
        raise ValueError(
            f"Received an invalid value for argument `{name}`: elements must be `x`, `(x,)`, "
            f"`(x, y)` or `(x, y, sample_weight)`. Received: a tuple of {len(element)}; for "
            "a multi-input model nest the features: `((x1, x2), y)`, or use a dict."
        )
    return element, None


def batch_size(features) -> int:
    """The leading (batch) size of a feature structure."""
    return int(tf.nest.flatten(features)[0].shape[0])


def to_numpy(value):
    """The same structure with numpy arrays (from tensors)."""
    return tf.nest.map_structure(
        lambda t: np.asarray(t.numpy() if hasattr(t, "numpy") else t), value
    )


def model_inputs(features):
    """What the attribution method gets: an array, a tuple of arrays, or a dict."""
    x = to_numpy(features)
    if isinstance(x, (tuple, list)):
        return x[0] if len(x) == 1 else tuple(x)
    return x


def kept_inputs(inputs):
    """The features stored as `inputs`, or None.

    The array of a single-input model; for dict features the `token_ids`
    entry (the only entry of a one-entry dict); nothing for several
    positional inputs.
    """
    if isinstance(inputs, dict):
        if TOKEN_KEY in inputs:
            return inputs[TOKEN_KEY]
        return next(iter(inputs.values())) if len(inputs) == 1 else None
    return None if isinstance(inputs, tuple) else inputs


def call_model(model, inputs):
    """`model(inputs)` for what `model_inputs` returns (a list for several inputs)."""
    if isinstance(model, keras.layers.Layer):
        return model(list(inputs) if isinstance(inputs, tuple) else inputs, training=False)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def model_of(method):
    return getattr(method, "model", method)


def _model_specs(model):
    if not isinstance(model, keras.Model):
        return None
    try:
        return instrument.input_specs(model)
    except Exception:  # noqa: BLE001 - subclassed model without inputs
        return None


def check_structure(model, element_spec, name="dataset"):
    """Compare a dataset's feature specs with a functional model's inputs.

    Dict features are matched with the model's dict inputs key by key
    (missing and unexpected keys are named); positional features one by one.
    Subclassed models (no symbolic inputs) are not checked.
    """
    features_spec, _ = split_element(element_spec, name)
    want = _model_specs(model)
    if want is None:
        return
    if isinstance(want, dict):
        pairs = _dict_pairs(want, features_spec, element_spec, name)
    else:
        pairs = _positional_pairs(tf.nest.flatten(want), features_spec, element_spec, name)
    for label, got, expected in pairs:
        _check_shape(label, got, tuple(expected.shape), element_spec, name)


def _dict_pairs(want, features_spec, element_spec, name):
    if not isinstance(features_spec, dict):
        raise ValueError(
            f"Received an invalid value for argument `{name}`: the model takes a dict of "
            f"inputs with keys {list(want)}, but the dataset's features are not a dict. Map "
            "the dataset to `(features_dict, labels)` elements, e.g. "
            "`dataset.map(lambda ids, y: ({'token_ids': ids, 'padding_mask': ids != 0, "
            f"...}}, y))`. Received: element_spec={element_spec}"
        )
    missing = [k for k in want if k not in features_spec]
    unexpected = [k for k in features_spec if k not in want]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing key(s) {missing}")
        if unexpected:
            parts.append(f"unexpected key(s) {unexpected}")
        raise ValueError(
            f"Received an invalid value for argument `{name}`: its feature dicts do not "
            f"match the model's inputs: {' and '.join(parts)}. The model takes the keys "
            f"{list(want)}; the dataset has {list(features_spec)}."
        )
    return [(repr(k), features_spec[k], want[k]) for k in want]


def _positional_pairs(want, features_spec, element_spec, name):
    if isinstance(features_spec, dict):
        raise TypeError(
            f"Received an invalid value for argument `{name}`: its features are dicts (keys "
            f"{list(features_spec)}) but the model takes {len(want)} positional input(s), "
            "not a dict. Map the dataset to `(features, labels)` tuples (features in the "
            "model's input order), e.g. `dataset.map(lambda d: (d['tokens'], d['label']))`."
        )
    specs = tuple(features_spec) if isinstance(features_spec, (tuple, list)) else (features_spec,)
    if len(specs) != len(want):
        raise ValueError(
            f"Received an invalid value for argument `{name}`: its elements have "
            f"{len(specs)} feature tensor(s) but the model has {len(want)} input(s). "
            f"Received: element_spec={element_spec}"
        )
    return [(str(i), s, w) for i, (s, w) in enumerate(zip(specs, want))]


def _check_shape(label, spec, want, element_spec, name):
    got = getattr(spec, "shape", None)
    if got is None or got.rank is None:
        return
    if got.rank == len(want) - 1:
        raise ValueError(
            f"Received an invalid value for argument `{name}`: feature {label} has shape "
            f"{tuple(got)} per element but the model expects batches of shape {want}. "
            "The dataset looks unbatched: call `dataset.batch(batch_size)` (or "
            "`padded_batch`) first."
        )
    if got.rank != len(want) or any(
        w is not None and g is not None and w != g for w, g in zip(want[1:], tuple(got)[1:])
    ):
        raise ValueError(
            f"Received an invalid value for argument `{name}`: feature {label} has shape "
            f"{tuple(got)} but the model expects {want}. Received: element_spec={element_spec}"
        )


def num_outputs(model) -> int | None:
    """Number of elements per example of a single-output functional model."""
    try:
        outs = model.outputs if isinstance(model, keras.Model) else None
    except Exception:  # noqa: BLE001
        return None
    if not outs or len(outs) != 1:
        return None
    return _per_example(tuple(outs[0].shape))


def _per_example(shape) -> int | None:
    shape = tuple(shape)[1:]
    if any(d is None for d in shape):
        return None
    return int(np.prod(shape)) if shape else 1


def _per_position_error(y, n_out, start, why=""):
    b = y.shape[0] if y.ndim else 0
    outs = "an unknown number of" if n_out is None else str(n_out)
    return ValueError(
        "Received an invalid value for argument `target`: target='label' needs one class "
        "per example: labels of shape (B,), (B, 1), or one-hot/probability rows (B, C) "
        f"with C equal to the model's {outs} outputs per example. Received labels of shape "
        f"{y.shape} (examples {start}..{start + b - 1}){why}, which look like per-position "
        "(sequence) labels; one attribution cannot explain every position at once. Pass "
        "target=<int> (one output index), target='predicted', or a callable target that "
        "selects one position's class score, e.g. `target=lambda out: out[:, 0, 1]`."
    )


def labels_to_targets(labels, n_out, start):
    """Per-example class indices `(B,)` int32 from a batch of labels.

    Accepts `(B,)` integer labels (or integral floats), `(B, 1)`, and
    one-hot/probability rows `(B, C)` when `C == n_out` and every row is
    non-negative and sums to 1. Anything else of rank >= 2 (per-position
    sequence labels `(B, T)`, `(B, T, C)`) is refused.
    """
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2 and n_out is not None and n_out > 1 and y.shape[1] == n_out:
        ok = np.issubdtype(y.dtype, np.number) and y.size and np.all(y >= 0)
        if not (ok and np.allclose(y.sum(axis=1), 1.0, atol=1e-3)):
            raise _per_position_error(
                y, n_out, start, ": rows that are not non-negative and do not sum to 1"
            )
        y = np.argmax(y, axis=1)
    elif y.ndim >= 2:
        raise _per_position_error(y, n_out, start)
    if y.ndim != 1:
        raise ValueError(
            "Received an invalid value for argument `target`: target='label' needs one "
            f"label per example, shape (B,). Received labels with shape {y.shape}"
        )
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ValueError(
                "Received an invalid value for argument `target`: target='label' needs "
                f"integer class labels. Received labels of dtype {y.dtype}"
            )
    if y.size and n_out is not None and (y.min() < 0 or y.max() >= n_out):
        bad = int(np.flatnonzero((y < 0) | (y >= n_out))[0])
        raise ValueError(
            "Received an invalid value for argument `dataset`: label "
            f"{int(y[bad])} of example {start + bad} is out of range for a model with "
            f"{n_out} outputs (valid labels: 0..{n_out - 1})."
        )
    return y.astype(np.int32)


# ------------------------------------------------------------------ config
def _describe(value):
    if callable(value):
        return f"callable:{getattr(value, '__qualname__', type(value).__name__)}"
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    if isinstance(value, dict):
        return {str(k): _describe(x) for k, x in value.items()}
    if isinstance(value, (tuple, list)):
        return [_describe(x) for x in value]
    return repr(value)


def _check_strategy(strategy, model):
    if strategy is None:
        return None
    if not isinstance(strategy, tf.distribute.Strategy):
        raise TypeError(
            "Received an invalid value for argument `strategy`, expected a "
            f"`tf.distribute.Strategy` or None. Received: strategy={strategy!r}"
        )
    variables = list(getattr(model, "variables", []) or [])
    outside = [
        var.path if hasattr(var, "path") else var.name
        for var in variables
        if not strategy.extended.variable_created_in_scope(getattr(var, "value", var))
    ]
    if outside and strategy.num_replicas_in_sync > 1:
        raise ValueError(
            "Received an invalid value for argument `strategy`: the model's variables were "
            f"not created under this strategy's scope ({len(outside)} of {len(variables)}, "
            f"e.g. {outside[0]!r}); the strategy was probably created after the model. "
            "Build or load the model inside `with strategy.scope():` (e.g. "
            "`model = keras.models.load_model(path)` there), then build the attribution "
            "method from that model."
        )
    return strategy


@contextlib.contextmanager
def _quiet_tf_warnings():
    # MirroredStrategy.run logs "Using MirroredStrategy eagerly has significant
    # overhead" on every eager call; the per-replica work here is compiled
    # attribution calls, so the warning does not apply.
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)


# ------------------------------------------------------------------ runner
class _BatchRunner:
    """Runs `method.attribute` on one batch (one replica's share) -> per-example dict."""

    def __init__(self, method, target, reduce_hidden, with_delta, kwargs, keep_inputs):
        self.method = method
        self.model = model_of(method)
        self.target = target
        self.reduce_hidden = reduce_hidden
        self.with_delta = with_delta
        self.kwargs = kwargs
        self.keep_inputs = keep_inputs
        self.n_out = num_outputs(self.model)
        self._warm: set = set()
        self._lock = threading.Lock()

    def _outputs(self, inputs):
        out = tf.nest.flatten(call_model(self.model, inputs))[0]
        return np.asarray(out)

    def targets_for(self, inputs, labels, start):
        batch = batch_size(inputs)
        t = self.target
        if isinstance(t, str) and t == "label":
            if labels is None:
                raise ValueError(
                    "Received an invalid value for argument `target`: target='label' needs "
                    "dataset elements `(features, labels)`, but the dataset yields features "
                    "only. Pass target=<class index>, target='predicted' or a callable."
                )
            if not isinstance(labels, np.ndarray):
                raise ValueError(
                    "Received an invalid value for argument `target`: target='label' needs "
                    "one label array per element; the dataset's labels are a "
                    f"{type(labels).__name__}. Pass a callable target instead."
                )
            if labels.ndim >= 2 and labels.shape[1:] != (1,) and self.n_out is None:
                self.n_out = _per_example(self._outputs(inputs).shape)
            idx = labels_to_targets(labels, self.n_out, start)
            return idx, idx
        if isinstance(t, str) and t == "predicted":
            out = self._outputs(inputs).reshape(batch, -1)
            idx = np.argmax(out, axis=1).astype(np.int32)
            return idx, idx
        if t is None:  # single-output models: element 0
            return t, np.zeros(batch, np.int32)
        if callable(t):
            return t, np.full(batch, -1, np.int32)
        return int(t), np.full(batch, int(t), np.int32)

    def _attribute(self, inputs, tgt, start, batch):
        kwargs = dict(self.kwargs)
        if self.with_delta:
            kwargs["return_convergence_delta"] = True
        key = repr(tf.nest.map_structure(lambda a: (a.shape, a.dtype.str), inputs))
        try:
            if key in self._warm:
                return self.method.attribute(inputs, target=tgt, **kwargs)
            # The first call per shape traces the method's tf.functions; replicas
            # running in threads must not trace concurrently.
            with self._lock:
                out = self.method.attribute(inputs, target=tgt, **kwargs)
                self._warm.add(key)
            return out
        except (ValueError, TypeError) as e:
            raise type(e)(
                f"{e}\n(while attributing examples {start}..{start + batch - 1} of the "
                f"dataset with {type(self.method).__name__}.attribute)"
            ) from e

    def _reduce(self, a):
        a = np.asarray(a, np.float32)
        if self.reduce_hidden is not None and a.ndim >= 3:
            a = np.sqrt((a * a).sum(-1)) if self.reduce_hidden == "norm" else a.sum(-1)
        return a

    def __call__(self, features, labels, start):
        inputs = model_inputs(features)
        batch = batch_size(inputs)
        if batch == 0:
            return None
        labels = None if labels is None else to_numpy(labels)
        tgt, stored = self.targets_for(inputs, labels, start)
        out = self._attribute(inputs, tgt, start, batch)
        delta = None
        if self.with_delta:
            out, delta = out
        if isinstance(out, dict):
            items = list(out.items())
        else:
            items = list(enumerate(out)) if isinstance(out, tuple) else [(0, out)]
        res = {"index": np.arange(start, start + batch, dtype=np.int64), "targets": stored}
        for key, a in items:
            res["attributions" if len(items) == 1 else f"attributions_{key}"] = self._reduce(a)
        if delta is not None:
            res["delta"] = np.asarray(delta, np.float32).reshape(batch)
        if isinstance(labels, np.ndarray):
            res["labels"] = labels
        kept = kept_inputs(inputs) if self.keep_inputs else None
        if kept is not None:
            res["inputs"] = kept
        return res


def _slice(res, lo):
    return {k: a[lo:] for k, a in res.items()}


def _take(buffer, n):
    """Pop the first `n` examples of a list of per-batch dicts."""
    out, left, rest = [], n, []
    for i, part in enumerate(buffer):
        m = len(part["index"])
        if left == 0:
            rest.extend(buffer[i:])
            break
        if m <= left:
            out.append(part)
            left -= m
        else:
            out.append({k: a[:left] for k, a in part.items()})
            rest.append({k: a[left:] for k, a in part.items()})
            rest.extend(buffer[i + 1 :])
            left = 0
            break
    buffer[:] = rest
    return {k: _store.pad_concat([p[k] for p in out]) for k in out[0]}


def attribute_dataset(
    method,
    dataset: tf.data.Dataset,
    target="label",
    *,
    output_dir: str | os.PathLike | None = None,
    shard_size: int = 1024,
    strategy: tf.distribute.Strategy | None = None,
    reduce_hidden: str | None = None,
    return_convergence_delta: bool | str = "auto",
    keep_inputs: bool = True,
    resume: bool = True,
    progress: bool = True,
    on_shard: Callable[[int, AttributionStore], None] | None = None,
    **attribute_kwargs,
) -> AttributionStore:
    """Run an attribution method over a whole `tf.data.Dataset`, batch by batch.

    Each batch of the dataset goes to one batched `method.attribute` call (no
    per-example loop), and the per-example results are buffered into shards
    of `shard_size` examples. With `output_dir`, every shard is written as a
    `.npz` file (to a temporary name, then atomically renamed) and a JSON
    manifest is rewritten atomically after each shard, so an interrupted run
    (an exception, Ctrl-C, a killed process) leaves only complete shards
    behind. Calling again with the same arguments resumes: finished shards
    are neither recomputed nor rewritten, and the result equals an
    uninterrupted run.

    Dataset elements follow Keras `fit`: `x`, `(x,)`, `(x, y)` or
    `(x, y, sample_weight)` (sample weights are ignored). The features `x`
    are an array, a nested tuple for multi-input models (`((x1, x2), y)`),
    or a dict of arrays, as keras-hub text models take them:
    `({"token_ids": ..., "padding_mask": ..., "segment_ids": ...}, y)` or
    the dict alone. The method receives the features in that structure
    (e.g. `LayerIntegratedGradients(model, "bert_backbone/token_embedding")`
    gets the dict; `IntegratedGradients` attributes its float entries and
    passes the others through). The dict keys must be the model's input
    keys. The dataset must be batched (`padded_batch` is fine: shorter
    batches are zero-padded when loaded).

    Targets: `target="label"` explains each example's class label, given as
    `(B,)` integers, `(B, 1)`, or one-hot/probability rows `(B, C)` where
    `C` is the model's number of outputs per example (rows non-negative,
    summing to 1). Per-position labels such as `(B, T)` token labels are
    refused: one attribution explains one score per example, so pick it
    with an int, `"predicted"`, or a callable target.

    Distribution: with a `tf.distribute` strategy, the dataset is split with
    `strategy.experimental_distribute_dataset`, each replica's share of the
    global batch is attributed by `strategy.run` on its device, and the shares
    are gathered back in replica order, which is the dataset order for
    `MirroredStrategy` (the result equals the single-device one, example by
    example). `MultiWorkerMirroredStrategy` and `TPUStrategy` use the same
    code path; with several workers each worker sees its own part of the
    data (auto-sharding), so give each worker its own `output_dir`. The model
    must be created (or loaded) under `strategy.scope()`.

    Stored fields (see `AttributionStore`): `attributions` (one attributed
    input; several give `attributions_<i>` for tuples and
    `attributions_<key>` for dict entries), `index`, `targets`, `labels`,
    `delta` and `inputs`.

    Args:
        method: An attribution object with `attribute(inputs, target=...)`,
            e.g. `IntegratedGradients(model)` or
            `LayerIntegratedGradients(model, "embedding")`.
        dataset: A batched `tf.data.Dataset`.
        target: `"label"` (each example's label), `"predicted"` (the model's
            argmax), an int, a callable `f(outputs) -> (B,)`, or None (single
            output models).
        output_dir: Directory for the shards and `manifest.json`; None keeps
            the results in memory.
        shard_size: Examples per shard.
        strategy: Optional `tf.distribute.Strategy`.
        reduce_hidden: `"sum"` or `"norm"` over the last axis of
            attributions with 3 or more dimensions (e.g. `(B, T, hidden)` ->
            per-token scores `(B, T)`), or None to keep them.
        return_convergence_delta: Store per-example completeness deltas;
            `"auto"` does when the method supports them.
        keep_inputs: Store the features next to the attributions as
            `inputs` (needed for per-token aggregates): the array of a
            single-input model, or for dict features the `"token_ids"`
            entry (the only entry of a one-entry dict). Several positional
            inputs are not stored.
        resume: Continue a run found in `output_dir`. With False an existing
            run there is an error (nothing is overwritten).
        progress: Show a `keras.utils.Progbar` (batches, and the number of
            examples done).
        on_shard: Called as `on_shard(shard_index, store)` after each shard is
            written (e.g. to log, or to stop the run by raising).
        **attribute_kwargs: Passed to `method.attribute` (`n_steps`,
            `baselines`, `internal_batch_size`, ...).

    Returns:
        An `AttributionStore` (the loaded results with `.load()`,
        `.attributions`, `.labels`, `.delta`, ...).

    Raises:
        ValueError: for an empty dataset, elements that do not fit the model
            (naming a missing or unexpected dict key), labels out of range or
            per-position labels with `target="label"`, a run in `output_dir`
            with other settings, or a model not built under `strategy.scope()`.
        TypeError: for dict features given to a model without dict inputs,
            or a wrong `strategy`.

    Example:

    >>> import numpy as np, keras, tensorflow as tf
    >>> from kerastrace.attribution import IntegratedGradients
    >>> from kerastrace.scale import attribute_dataset
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> x = np.random.default_rng(0).normal(size=(10, 4)).astype("float32")
    >>> y = np.arange(10) % 3
    >>> ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    >>> store = attribute_dataset(IntegratedGradients(model), ds, n_steps=8,
    ...                           shard_size=6, progress=False)
    >>> store.attributions.shape, store.num_shards, bool(np.abs(store.delta).max() < 1e-4)
    ((10, 4), 2, True)
    """
    # -- validate
    _check_arguments(method, dataset, target)
    shard_size = v.check_positive_int("shard_size", shard_size)
    if reduce_hidden is not None:
        v.check_one_of("reduce_hidden", reduce_hidden, _REDUCE)
    if return_convergence_delta == "auto":
        with_delta = bool(getattr(method, "has_convergence_delta", False)) and bool(
            getattr(method, "multiplies_by_inputs", True)
        )
    else:
        with_delta = v.check_bool("return_convergence_delta", return_convergence_delta)
    keep_inputs = v.check_bool("keep_inputs", keep_inputs)
    resume = v.check_bool("resume", resume)
    model = model_of(method)
    check_structure(model, dataset.element_spec)
    strategy = _check_strategy(strategy, model)

    # -- resume
    config = {
        "method": type(method).__name__,
        "target": _describe(target),
        "reduce_hidden": reduce_hidden,
        "shard_size": shard_size,
        "delta": with_delta,
        "keep_inputs": keep_inputs,
        "attribute_kwargs": {k: _describe(val) for k, val in sorted(attribute_kwargs.items())},
    }
    directory = None if output_dir is None else os.fspath(output_dir)
    manifest = _open_run(directory, config, resume)
    if manifest.get("complete"):
        return AttributionStore(directory, manifest)
    store = AttributionStore(directory, manifest, None if directory is not None else [])

    # -- loop and write
    runner = _BatchRunner(method, target, reduce_hidden, with_delta, attribute_kwargs, keep_inputs)
    writer = _ShardWriter(store, on_shard)
    cardinality = int(dataset.cardinality())
    bar = (
        keras.utils.Progbar(
            cardinality if cardinality >= 0 else None,
            unit_name="batch",
            stateful_metrics=["examples"],
        )
        if progress
        else None
    )
    n_done = len(store)
    pos = 0
    with _quiet_tf_warnings() if strategy is not None else contextlib.nullcontext():
        for size, results in _iterate(dataset, runner, strategy, n_done):
            for lo, res in results:
                if res is not None:
                    writer.buffer.append(_slice(res, lo))
            pos += size
            writer.flush_full(shard_size)
            if bar is not None:
                bar.add(1, values=[("examples", pos)])
    if pos == 0:
        raise ValueError(
            "Received an invalid value for argument `dataset`: it is empty (no elements). "
            "Check the input pipeline (e.g. filters, `take`, or a file pattern that matched "
            "nothing)."
        )
    if pos < n_done:
        raise ValueError(
            f"Received an invalid value for argument `dataset`: it has {pos} examples but "
            f"the run in `output_dir` already holds {n_done}; it is not the same dataset."
        )
    writer.flush_rest()
    manifest["complete"] = True
    manifest["num_examples"] = len(store)
    if directory is not None:
        _store.write_manifest(directory, manifest)
    return store


def _check_arguments(method, dataset, target):
    if not hasattr(method, "attribute"):
        raise TypeError(
            "Received an invalid value for argument `method`, expected an attribution "
            f"object with an `attribute` method. Received: method={method!r}"
        )
    if not isinstance(dataset, tf.data.Dataset):
        raise TypeError(
            "Received an invalid value for argument `dataset`, expected a batched "
            f"`tf.data.Dataset`. Received: dataset of type {type(dataset).__name__}"
        )
    if not (
        target is None
        or callable(target)
        or (isinstance(target, str) and target in ("label", "predicted"))
        or (isinstance(target, (int, np.integer)) and not isinstance(target, bool))
    ):
        raise v.invalid("target", "'label', 'predicted', an int, a callable or None", target)


def _open_run(directory, config, resume) -> dict:
    """The manifest to continue: a new one, or the run found in `directory`."""
    manifest = {
        "format": "kerastrace.scale.attributions",
        "version": _store.FORMAT_VERSION,
        "config": config,
        "shards": [],
        "complete": False,
    }
    if directory is None:
        return manifest
    os.makedirs(directory, exist_ok=True)
    old = _store.read_manifest(directory)
    if old is None:
        return manifest
    if not resume:
        raise ValueError(
            "Received an invalid value for argument `output_dir`: it already holds "
            f"a run ({len(old['shards'])} shards); with resume=False nothing is "
            "overwritten. Use a new directory, delete this one, or pass resume=True. "
            f"Received: output_dir={directory!r}"
        )
    if old["config"] != config:
        diff = sorted(k for k in config if old["config"].get(k) != config[k])
        raise ValueError(
            "Received an invalid value for argument `output_dir`: it holds a run "
            f"with different settings ({', '.join(diff)}: {old['config']} vs "
            f"{config}). Use a new directory to start another run. "
            f"Received: output_dir={directory!r}"
        )
    _adopt_orphans(directory, old)
    return old


class _ShardWriter:
    """Buffers per-batch results and writes them as shards of the store."""

    def __init__(self, store, on_shard):
        self.store = store
        self.on_shard = on_shard
        self.buffer: list = []

    def buffered(self) -> int:
        return sum(len(p["index"]) for p in self.buffer)

    def flush_full(self, shard_size):
        while self.buffered() >= shard_size:
            self.flush(shard_size)

    def flush_rest(self):
        if self.buffered():
            self.flush(self.buffered())

    def flush(self, n):
        store, manifest, directory = self.store, self.store.manifest, self.store.directory
        k = len(manifest["shards"])
        part = _take(self.buffer, n)
        entry = {"file": _store.shard_name(k), "start": int(part["index"][0]), "count": int(n)}
        if directory is not None:
            _store.write_shard(os.path.join(directory, entry["file"]), part)
        else:
            store._memory.append(part)
        manifest["shards"].append(entry)
        if directory is not None:
            _store.write_manifest(directory, manifest)
        store._cache = None
        if self.on_shard is not None:
            self.on_shard(k, store)


def _adopt_orphans(directory, manifest):
    """Take over shards written just before an interruption hit the manifest update."""
    shard_size = manifest["config"]["shard_size"]
    while True:
        k = len(manifest["shards"])
        path = os.path.join(directory, _store.shard_name(k))
        if not os.path.exists(path):
            return
        start = k * shard_size
        try:
            index = _store.load_shard(path)["index"]
        except Exception:  # noqa: BLE001 - unreadable: it is recomputed
            return
        if index.size != shard_size or index[0] != start or index[-1] != start + shard_size - 1:
            return
        manifest["shards"].append({"file": _store.shard_name(k), "start": start, "count": shard_size})
        _store.write_manifest(directory, manifest)


def _iterate(dataset, runner, strategy, n_done):
    """Yield `(batch_size, [(rows_to_drop, result), ...])` per global batch."""
    if strategy is None:
        yield from _iterate_local(dataset, runner, n_done)
    else:
        yield from _iterate_distributed(dataset, runner, strategy, n_done)


def _iterate_local(dataset, runner, n_done):
    pos = 0
    for element in dataset:
        features, labels = split_element(element)
        b = batch_size(features)
        if pos + b <= n_done:
            pos += b
            yield b, []
            continue
        lo = max(0, n_done - pos)
        if lo:
            features = tf.nest.map_structure(lambda t, lo=lo: t[lo:], features)
            if labels is not None:
                labels = tf.nest.map_structure(lambda t, lo=lo: t[lo:], labels)
        yield b, [(0, runner(features, labels, pos + lo))]
        pos += b


def _iterate_distributed(dataset, runner, strategy, n_done):
    pos = 0
    n_rep = strategy.num_replicas_in_sync
    for element in strategy.experimental_distribute_dataset(dataset):
        features, labels = split_element(element)
        # Any entry of the (possibly dict) features gives each replica's share.
        local = strategy.experimental_local_results(tf.nest.flatten(features)[0])
        sizes = [int(t.shape[0]) for t in local]
        b = sum(sizes)
        if pos + b <= n_done:
            pos += b
            yield b, []
            continue
        starts = np.concatenate([[0], np.cumsum(sizes)])[:-1] + pos
        results: dict = {}

        def replica_fn(f, y, starts=starts, results=results):
            rid = tf.distribute.get_replica_context().replica_id_in_sync_group
            rid = int(rid.numpy() if hasattr(rid, "numpy") else rid)
            results[rid] = runner(f, y, int(starts[rid]))
            return tf.constant(0)

        strategy.run(replica_fn, args=(features, labels))
        out = []
        for r in range(n_rep):
            if r not in results:
                continue
            s = int(starts[r])
            lo = max(0, min(n_done - s, sizes[r]))  # rows already written
            out.append((lo, results[r]))
        pos += b
        yield b, out
