"""`attribute_dataset`: any attribution method over a whole `tf.data.Dataset`."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from kerastrace._utils import instrument
from kerastrace._utils import store as fs
from kerastrace._utils import validation as v
from kerastrace.scale import _fingerprint, _resume
from kerastrace.scale._distributed import Cluster, quiet_tf_warnings
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


def _example(start, i: int) -> int:
    """The dataset index of row `i`: `start + i`, or `start[i]` for an index array."""
    return int(start[i]) if isinstance(start, np.ndarray) else int(start) + i


def _per_position_error(y, n_out, start, why=""):
    b = y.shape[0] if y.ndim else 0
    first, last = _example(start, 0), _example(start, max(b - 1, 0))
    outs = "an unknown number of" if n_out is None else str(n_out)
    return ValueError(
        "Received an invalid value for argument `target`: target='label' needs one class "
        "per example: labels of shape (B,), (B, 1), or one-hot/probability rows (B, C) "
        f"with C equal to the model's {outs} outputs per example. Received labels of shape "
        f"{y.shape} (examples {first}..{last}){why}, which look like per-position "
        "(sequence) labels; one attribution cannot explain every position at once. Pass "
        "target=<int> (one output index), target='predicted', or a callable target that "
        "selects one position's class score, e.g. `target=lambda out: out[:, 0, 1]`."
    )


def labels_to_targets(labels, n_out, start):
    """Per-example class indices `(B,)` int32 from a batch of labels.

    Accepts `(B,)` integer labels (or integral floats), `(B, 1)`, and
    one-hot/probability rows `(B, C)` when `C == n_out` and every row is
    non-negative and sums to 1. Anything else of rank >= 2 (per-position
    sequence labels `(B, T)`, `(B, T, C)`) is refused. `start` is the
    dataset index of the first row, or the index of every row (for errors).
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
            f"{int(y[bad])} of example {_example(start, bad)} is out of range for a model with "
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
    if hasattr(value, "numpy") and hasattr(value, "shape"):  # a tensor: its values
        return np.asarray(value).tolist()
    # no memory addresses: the description must be the same in the next process
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))


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

    def _attribute(self, inputs, tgt, index):
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
                f"{e}\n(while attributing examples {int(index[0])}..{int(index[-1])} of the "
                f"dataset with {type(self.method).__name__}.attribute)"
            ) from e

    def _reduce(self, a):
        a = np.asarray(a, np.float32)
        if self.reduce_hidden is not None and a.ndim >= 3:
            a = np.sqrt((a * a).sum(-1)) if self.reduce_hidden == "norm" else a.sum(-1)
        return a

    def __call__(self, inputs, labels, index):
        """Attribute one batch (numpy `inputs` as `model_inputs` gives them) -> per-row dict."""
        batch = len(index)
        if batch == 0:
            return None
        tgt, stored = self.targets_for(inputs, labels, index)
        out = self._attribute(inputs, tgt, index)
        delta = None
        if self.with_delta:
            out, delta = out
        if isinstance(out, dict):
            items = list(out.items())
        else:
            items = list(enumerate(out)) if isinstance(out, tuple) else [(0, out)]
        res = {"index": np.asarray(index, np.int64), "targets": stored}
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




# ------------------------------------------------------------------ batches
class Batch:
    """One batch as numpy: `index` (dataset positions), model `inputs` and `labels`."""

    def __init__(self, index, inputs, labels):
        self.index = index
        self.inputs = inputs
        self.labels = labels
        self._digests = None

    def __len__(self) -> int:
        return len(self.index)

    @property
    def digests(self) -> np.ndarray:
        """`(B, 2)` int64 per-example digests of the inputs and labels (see `_fingerprint`)."""
        if self._digests is None:
            self._digests = _fingerprint.example_digests(self.inputs, self.labels)
        return self._digests

    def rows(self, sel) -> Batch:
        def pick(a):
            return a[sel]

        labels = None if self.labels is None else tf.nest.map_structure(pick, self.labels)
        out = Batch(self.index[sel], tf.nest.map_structure(pick, self.inputs), labels)
        if self._digests is not None:
            out._digests = self._digests[sel]
        return out


def _leading_sizes(inputs, labels):
    leaves = tf.nest.flatten(inputs) + ([] if labels is None else tf.nest.flatten(labels))
    return [np.asarray(a).shape[0] if np.ndim(a) else None for a in leaves]


class Batches:
    """Iterate a dataset as `Batch`es numbered from 0; a batch can be pushed back."""

    def __init__(self, dataset):
        self._it = iter(dataset)
        self.pos = 0  # examples read from the dataset
        self.count = 0  # dataset elements read
        self._pending: list[Batch] = []

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        if self._pending:
            return self._pending.pop()
        element = next(self._it)
        self.count += 1
        features, labels = split_element(element)
        inputs = model_inputs(features)
        labels = None if labels is None else to_numpy(labels)
        sizes = _leading_sizes(inputs, labels)
        if None in sizes or len(set(sizes)) != 1:
            raise ValueError(
                "Received an invalid value for argument `dataset`: element "
                f"{self.count - 1} is not a batch: the leading sizes of its features (and "
                f"labels) are {sizes}; every entry needs the same batch size. Batch the "
                "dataset (`dataset.batch(n)`) and keep features and labels aligned."
            )
        b = sizes[0]
        batch = Batch(np.arange(self.pos, self.pos + b, dtype=np.int64), inputs, labels)
        self.pos += b
        return batch

    def push_back(self, batch: Batch) -> None:
        self._pending.append(batch)


# ------------------------------------------------------------------ run
def _empty_error():
    return ValueError(
        "Received an invalid value for argument `dataset`: it is empty (no elements). "
        "Check the input pipeline (e.g. filters, `take`, or a file pattern that matched "
        "nothing)."
    )


def _check_output_dir(directory):
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(
            "Received an invalid value for argument `output_dir`, expected a directory (new "
            f"or holding a run): it is a file. Received: output_dir={directory!r}"
        )


class _Run:
    """Resume (chief), verify, compute and write one `attribute_dataset` call."""

    def __init__(self, runner, dataset, cluster, directory, config, fingerprints, *,
                 shard_size, resume, on_mismatch, on_shard, progress):  # fmt: skip
        self.runner = runner
        self.dataset = dataset
        self.cluster = cluster
        self.directory = directory
        self.config = config
        self.fingerprints = fingerprints
        self.shard_size = shard_size
        self.resume = resume
        self.on_mismatch = on_mismatch
        self.on_shard = on_shard
        self.progress = progress

    # -- resume: what is stored and still valid (the chief decides)
    def _plan(self, batches):
        manifest, stored = _resume.open_run(
            self.directory, self.config, self.fingerprints, self.resume, self.on_mismatch
        )
        if stored:
            _resume.verify(batches, stored, self.on_mismatch, self.directory)
        return manifest, stored

    def _shared_plan(self, batches):
        """`(manifest, stored, plan)`; the plan (what to compute) is the chief's on every worker."""
        manifest, stored, plan = None, [], None
        if self.cluster.is_writer:
            try:
                manifest, stored = self._plan(batches)
            except Exception as exc:
                if self.cluster.multi_worker:
                    self.cluster.broadcast({"error": f"{type(exc).__name__}: {exc}"})
                raise
            plan = {
                "stored_end": stored[-1].stop if stored else 0,
                "redo": [[s.start, s.stop] for s in stored if s.recompute],
            }
        plan = self.cluster.broadcast(plan)
        if manifest is None:
            manifest = _resume.new_manifest(self.config, self.fingerprints)
        return manifest, stored, plan

    # -- compute one share of rows on this replica
    def _share(self, share: Batch) -> dict:
        res = self.runner(share.inputs, share.labels, share.index)
        res["_digest"] = share.digests
        return res

    def _compute(self, work: Batch):
        results = self.cluster.compute(self._share, len(work),
                                       lambda lo, hi: work.rows(slice(lo, hi)))  # fmt: skip
        if self.cluster.multi_worker and self.cluster.is_writer and results:
            theirs = np.concatenate([r["_digest"] for r in results])
            if theirs.shape != work.digests.shape or not np.array_equal(theirs, work.digests):
                raise ValueError(
                    "Received an invalid value for argument `dataset`: another worker read "
                    f"other examples than the chief (examples {int(work.index[0])}.."
                    f"{int(work.index[-1])}). Every worker must build the same dataset in "
                    "the same order, without `tf.data` sharding."
                )
        return results

    # -- loop and write
    def execute(self) -> AttributionStore:
        batches = Batches(self.dataset)
        manifest, stored, plan = self._shared_plan(batches)
        was = json.dumps(manifest, sort_keys=True)
        directory = self.directory
        if directory is None:
            mode = "memory"
        else:
            mode = "disk" if self.cluster.is_writer else "discard"
        store = AttributionStore(
            directory if mode != "memory" else None, manifest, [] if mode == "memory" else None
        )
        writer = _resume.Writer(store, stored, self.shard_size, self.on_shard, mode)
        stored_end, redo = plan["stored_end"], plan["redo"]
        again = bool(stored) and (bool(redo) or self.cluster.multi_worker)
        if again or (self.cluster.multi_worker and not self.cluster.is_writer):
            batches = Batches(self.dataset)  # a second pass, from the first example

        def todo(index):
            m = index >= stored_end
            for lo, hi in redo:
                m |= (index >= lo) & (index < hi)
            return m

        bar = _progress_bar(self.dataset) if self.progress else None
        with quiet_tf_warnings() if self.cluster.strategy is not None else contextlib.nullcontext():
            for batch in batches:
                if again and self.cluster.is_writer:
                    _resume.check_unchanged(batch, stored, stored_end, directory)
                mask = todo(batch.index)
                if mask.any():
                    work = batch if mask.all() else batch.rows(mask)
                    for res in self._compute(work):
                        writer.add(res)
                if bar is not None:
                    bar.update(batches.count, values=[("examples", batches.pos)])
        if bar is not None and bar.target is None:  # unknown length: end the bar's line
            bar.update(batches.count, values=[("examples", batches.pos)], finalize=True)
        if batches.pos == 0:
            raise _empty_error()
        writer.finish(batches.pos)
        manifest["complete"] = True
        manifest["num_examples"] = len(store)
        if mode == "disk" and (writer.changed or json.dumps(manifest, sort_keys=True) != was):
            fs.write_manifest(directory, manifest)
            _resume.remove_unlisted_shards(directory, manifest)
        final = self.cluster.broadcast(manifest if self.cluster.is_writer else None)
        if mode == "discard":
            return AttributionStore(directory, final)
        return store


def _progress_bar(dataset):
    cardinality = int(dataset.cardinality())
    return keras.utils.Progbar(
        cardinality if cardinality >= 0 else None,
        unit_name="batch",
        stateful_metrics=["examples"],
    )


def _fingerprints(method, model, config) -> dict:
    text = json.dumps(config, sort_keys=True, default=repr).encode()
    return {
        "method": hashlib.sha256(text).hexdigest(),
        "model": _fingerprint.model_fingerprint(model),
    }


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
    on_mismatch: str = "error",
    progress: bool = True,
    on_shard: Callable[[int, AttributionStore], None] | None = None,
    **attribute_kwargs,
) -> AttributionStore:
    """Run an attribution method over a whole `tf.data.Dataset`, batch by batch.

    Each batch of the dataset goes to one batched `method.attribute` call (no
    per-example loop), and the per-example results are buffered into shards
    of `shard_size` examples. With `output_dir`, every shard is written as a
    `.npz` file (to a temporary name, then atomically renamed; readable,
    mode `0644` under the usual umask) and a JSON manifest is rewritten
    atomically after each shard, so an interrupted run (an exception,
    Ctrl-C, a killed process) leaves only complete shards behind, and the
    temporary files of an interrupted write are removed by the next run.

    Resuming: calling again with the same arguments resumes. Finished shards
    are neither recomputed nor rewritten, and the result equals an
    uninterrupted run, because the stored run is checked first:

    - the settings (method class and settings, target, `attribute_kwargs`,
      ...) and the model (a SHA-256 of its weights and of its configuration)
      must be the run's: a different setting, or a model whose weights
      changed (more training, `set_weights`), is refused with a message that
      says which;
    - every stored shard's checksum is verified: a truncated or damaged
      shard is logged and recomputed;
    - the dataset is read once over the stored range (nothing is attributed)
      and each shard's inputs are compared with what the dataset holds now
      (a digest of every example's features and label): another order (a
      reshuffled dataset), other data, or a shorter dataset is refused with
      a message that says which, naming the first shard that differs;
    - a longer dataset continues: the examples beyond the stored ones are
      attributed and appended, also after a complete run.

    With `on_mismatch="recompute"`, what does not fit is recomputed instead
    of refused: the shards whose inputs differ (all of them for other
    settings or another model). Another process writing the same
    `output_dir` at the same time is refused (an advisory lock).

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

    Distribution: with a `tf.distribute` strategy, the examples of each
    global batch (each dataset element) are split into
    `num_replicas_in_sync` contiguous shares, each replica attributes its
    share on its device (`strategy.run`), and the results are put back in
    replica order, which is the dataset order: the result equals the
    single-device one, example by example. The model must be created (or
    loaded) under `strategy.scope()`.

    Several machines (`tf.distribute.MultiWorkerMirroredStrategy`): every
    worker runs the same program with the same arguments and builds the
    same dataset (same order; no `tf.data` sharding: each worker reads the
    whole dataset and takes its replicas' shares). The results of all
    replicas are exchanged after each batch (one all-gather), and only the
    chief (worker 0) writes `output_dir`: shards are written once, by one
    process, and an interrupted run (any worker killed) resumes from the
    chief's `output_dir` when all workers are started again. The chief
    checks the stored run alone and sends its decision (or its error) to
    the others; it also checks that every worker read the same examples.
    An error raised while attributing on any worker is raised on every
    worker. Other workers return an `AttributionStore` for the same `output_dir`
    (readable there when the directory is shared) or, without
    `output_dir`, every worker returns all the results in memory. To launch
    on several machines, set `TF_CONFIG` on each one, e.g. on machine `i`
    of `host0:12345, host1:12345`:
    `TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]},
    "task": {"type": "worker", "index": i}}'`, then run the same command
    on every machine; create the strategy first thing in the program
    (`strategy = tf.distribute.MultiWorkerMirroredStrategy()`) and the
    model under `strategy.scope()`.

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
        on_mismatch: What to do when the run in `output_dir` does not fit
            (other settings, another model, other data or order):
            `"error"` (default: refuse, saying what differs) or
            `"recompute"` (recompute what does not fit).
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
            that does not fit (other settings, model, data, order or length,
            saying which; unless `on_mismatch="recompute"`), an `output_dir`
            another run is writing, or a model not built under
            `strategy.scope()`.
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
    on_mismatch = v.check_one_of("on_mismatch", on_mismatch, _resume.MISMATCH)
    progress = v.check_bool("progress", progress)
    if on_shard is not None and not callable(on_shard):
        raise v.invalid("on_shard", "a callable on_shard(shard_index, store) or None", on_shard)
    if int(dataset.cardinality()) == 0:
        raise _empty_error()
    model = model_of(method)
    check_structure(model, dataset.element_spec)
    strategy = _check_strategy(strategy, model)
    directory = None if output_dir is None else os.fspath(output_dir)
    if directory is not None:
        _check_output_dir(directory)

    # -- fingerprints of what the results depend on
    config = {
        "method": type(method).__name__,
        "method_settings": _fingerprint.method_settings(method),
        "target": _describe(target),
        "reduce_hidden": reduce_hidden,
        "shard_size": shard_size,
        "delta": with_delta,
        "keep_inputs": keep_inputs,
        "attribute_kwargs": {k: _describe(val) for k, val in sorted(attribute_kwargs.items())},
    }
    runner = _BatchRunner(method, target, reduce_hidden, with_delta, attribute_kwargs, keep_inputs)
    cluster = Cluster(strategy)
    run = _Run(runner, dataset, cluster, directory, config, _fingerprints(method, model, config),
               shard_size=shard_size, resume=resume, on_mismatch=on_mismatch,
               on_shard=on_shard, progress=progress)  # fmt: skip

    # -- resume, loop and write (one writer per directory)
    if directory is None or not cluster.is_writer:
        return run.execute()
    created = not os.path.exists(directory)
    os.makedirs(directory, exist_ok=True)
    try:
        with fs.exclusive_lock(directory):
            return run.execute()
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(directory)  # only while still empty: nothing was written
        raise
