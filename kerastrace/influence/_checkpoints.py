"""Training checkpoints for TracIn: recording them, finding them, loading them safely."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import io
import json
import math
import numbers
import os
import re
import tempfile
import uuid
import warnings
import zipfile
from collections.abc import Sequence

import keras
import numpy as np

from kerastrace._utils import store as _store
from kerastrace._utils import validation as v

RECORD_FORMAT = "kerastrace.influence.checkpoint"
_WEIGHT_SUFFIXES = (".weights.h5", ".keras")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One set of weights saved during training, and the learning rate then.

    Attributes:
        path: The weights file: a `.weights.h5` file (`model.save_weights`,
            `CheckpointRecorder`, `keras.callbacks.ModelCheckpoint(...,
            save_weights_only=True)`) or a `.keras` model file
            (`ModelCheckpoint` default).
        learning_rate: The optimizer's learning rate at that point of
            training (TracIn weights each checkpoint's gradient dot products
            by it), or None when unknown.
        epoch: The epoch (1-based) after which it was saved, if known.
        step: The optimizer's iteration count when it was saved, if known.
    """

    path: str
    learning_rate: float | None = None
    epoch: int | None = None
    step: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------ recording
def current_learning_rate(optimizer) -> float:
    """The learning rate the optimizer applies now, as a Python float.

    A `keras.optimizers.schedules.LearningRateSchedule` is evaluated at the
    optimizer's current iteration (what Keras' `optimizer.learning_rate`
    property does); a callable learning rate is called.

    Raises:
        ValueError: when the optimizer has no learning rate.
    """
    if optimizer is None:
        raise ValueError(
            "CheckpointRecorder needs a compiled model: the model has no optimizer, so there "
            "is no learning rate to record. Call `model.compile(optimizer=...)` first."
        )
    try:
        lr = optimizer.learning_rate
    except (AttributeError, TypeError, ValueError) as exc:
        raise ValueError(
            f"CheckpointRecorder could not read the learning rate of the optimizer "
            f"{type(optimizer).__name__} ({exc}); TracIn needs it for every checkpoint."
        ) from None
    if callable(lr) and not hasattr(lr, "numpy"):
        lr = lr()
    value = float(np.asarray(keras.ops.convert_to_numpy(lr)))
    if not math.isfinite(value):
        raise ValueError(f"CheckpointRecorder read a non-finite learning rate: {value}.")
    return value


class CheckpointRecorder(keras.callbacks.Callback):
    """Save the weights and the learning rate during training, for TracIn.

    Every `every_n_epochs` epochs, writes `epoch-<E>.weights.h5`
    (`model.save_weights`) and `epoch-<E>.json`, a record of the epoch, the
    optimizer's iteration count and its current learning rate (a
    `LearningRateSchedule` is evaluated at the current iteration). Both are
    written to a temporary name and renamed, weights first, so a record
    always points at complete weights. `TracIn(model, directory)` reads the
    records back.

    Args:
        directory: Directory for the checkpoints (created if missing).
        every_n_epochs: Save period in epochs.

    Raises:
        ValueError: for invalid arguments; from `fit`, when the model has no
            optimizer (not compiled).

    Example:

    >>> import tempfile, numpy as np, keras
    >>> from kerastrace.influence import CheckpointRecorder, load_checkpoints
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(keras.optimizers.SGD(0.1), "mse")
    >>> ckpt_dir = tempfile.mkdtemp()
    >>> _ = model.fit(np.ones((4, 2)), np.ones((4, 1)), epochs=2, batch_size=2, verbose=0,
    ...               callbacks=[CheckpointRecorder(ckpt_dir)])
    >>> [(c.epoch, c.step, round(c.learning_rate, 6)) for c in load_checkpoints(ckpt_dir)]
    [(1, 2, 0.1), (2, 4, 0.1)]
    """

    def __init__(self, directory: str | os.PathLike, every_n_epochs: int = 1):
        super().__init__()
        if not isinstance(directory, (str, os.PathLike)):
            raise v.invalid("directory", "a directory path", directory)
        self.directory = os.fspath(directory)
        self.every_n_epochs = v.check_positive_int("every_n_epochs", every_n_epochs)
        #: The checkpoints written in this run, in order.
        self.saved: list[Checkpoint] = []

    def on_train_begin(self, logs=None):
        current_learning_rate(getattr(self.model, "optimizer", None))
        os.makedirs(self.directory, exist_ok=True)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        self.saved.append(save_checkpoint(self.model, self.directory, epoch + 1))


def save_checkpoint(model, directory: str, epoch: int) -> Checkpoint:
    """Write `epoch-<E>.weights.h5` and its `epoch-<E>.json` record atomically."""
    optimizer = getattr(model, "optimizer", None)
    lr = current_learning_rate(optimizer)
    step = int(np.asarray(keras.ops.convert_to_numpy(optimizer.iterations)))
    stem = f"epoch-{epoch:04d}"
    weights = os.path.join(directory, stem + ".weights.h5")
    tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}.weights.h5")
    try:
        model.save_weights(tmp)
        os.replace(tmp, weights)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    record = {
        "format": RECORD_FORMAT,
        "weights": os.path.basename(weights),
        "epoch": int(epoch),
        "step": step,
        "learning_rate": lr,
    }
    text = json.dumps(record, indent=1).encode()
    _store.atomic_write_bytes(os.path.join(directory, stem + ".json"), lambda f: f.write(text))
    return Checkpoint(weights, lr, int(epoch), step)


# ------------------------------------------------------------------ finding
def _natural_key(path: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", os.path.basename(path))]


def _read_record(path: str) -> Checkpoint:
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"Received an invalid value for argument `checkpoints`: the record {path!r} "
            f"cannot be read ({exc})."
        ) from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise ValueError(
            f"Received an invalid value for argument `checkpoints`: {path!r} is not a "
            "checkpoint record written by kerastrace's CheckpointRecorder."
        )
    weights = os.path.join(os.path.dirname(path), record["weights"])
    lr = record.get("learning_rate")
    return Checkpoint(weights, None if lr is None else float(lr), record.get("epoch"),
                      record.get("step"))  # fmt: skip


def _records(directory: str) -> list[str]:
    out = []
    for path in glob.glob(os.path.join(directory, "*.json")):
        with contextlib.suppress(OSError, json.JSONDecodeError, UnicodeDecodeError):
            with open(path, encoding="utf-8") as f:
                if json.load(f).get("format") == RECORD_FORMAT:
                    out.append(path)
    return out


def _from_directory(directory: str) -> list[Checkpoint]:
    records = _records(directory)
    if records:
        found = [_read_record(p) for p in records]
        return sorted(found, key=lambda c: (c.epoch or 0, c.step or 0, _natural_key(c.path)))
    files = [p for s in _WEIGHT_SUFFIXES for p in glob.glob(os.path.join(directory, "*" + s))]
    files = [p for p in files if not os.path.basename(p).startswith(".tmp-")]
    return [Checkpoint(p) for p in sorted(files, key=_natural_key)]


def _from_item(item, i) -> Checkpoint:
    if isinstance(item, Checkpoint):
        return item
    if not isinstance(item, (str, os.PathLike)):
        raise TypeError(
            "Received an invalid value for argument `checkpoints`, expected a directory, or "
            f"a list of weight files, records or Checkpoint objects. Received: item {i} = "
            f"{item!r}"
        )
    path = os.fspath(item)
    return _read_record(path) if path.endswith(".json") else Checkpoint(path)


def _check_rates(learning_rates, n, found):
    if isinstance(learning_rates, numbers.Real) and not isinstance(learning_rates, bool):
        rates = [float(learning_rates)] * n
    elif isinstance(learning_rates, (Sequence, np.ndarray)) and not isinstance(
        learning_rates, str
    ):
        rates = list(learning_rates)
        if len(rates) != n:
            raise ValueError(
                "Received an invalid value for argument `learning_rates`: one learning rate "
                f"per checkpoint is needed, {n} checkpoint(s) found ({found}). Received: "
                f"learning_rates={learning_rates!r}"
            )
    else:
        raise v.invalid("learning_rates", "a positive number or a list of them", learning_rates)
    for r in rates:
        if (
            not isinstance(r, numbers.Real)
            or isinstance(r, bool)
            or not math.isfinite(float(r))
            or float(r) <= 0
        ):
            raise v.invalid(
                "learning_rates", "positive finite numbers, one per checkpoint", learning_rates
            )
    return [float(r) for r in rates]


def load_checkpoints(checkpoints, learning_rates=None) -> list[Checkpoint]:
    """The checkpoints of a training run, in training order, each with its learning rate.

    Args:
        checkpoints: A directory, or a list. A directory holding records of
            `CheckpointRecorder` gives those checkpoints (by epoch);
            otherwise its `*.weights.h5` and `*.keras` files (e.g. of
            `keras.callbacks.ModelCheckpoint`), in natural name order
            (`epoch-2` before `epoch-10`). A list holds weight files,
            `CheckpointRecorder` records (`.json`) or `Checkpoint` objects,
            in training order.
        learning_rates: The learning rate of each checkpoint (a list), or one
            number for all. Needed for checkpoints that do not record it
            (Keras' `ModelCheckpoint` files); when given, it replaces the
            recorded rates.

    Returns:
        A list of `Checkpoint`s with their learning rates.

    Raises:
        ValueError: when no checkpoint is found, a weight file is missing or
            has another format, or a learning rate is missing or invalid
            (naming `learning_rates`).
        TypeError: for an item that is not a path or a `Checkpoint`.

    Example:

    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> for name in ("ckpt-10.weights.h5", "ckpt-2.weights.h5"):
    ...     open(os.path.join(d, name), "wb").close()
    >>> [(os.path.basename(c.path), c.learning_rate)
    ...  for c in load_checkpoints(d, learning_rates=[0.1, 0.01])]
    [('ckpt-2.weights.h5', 0.1), ('ckpt-10.weights.h5', 0.01)]
    """
    if isinstance(checkpoints, (str, os.PathLike)):
        path = os.fspath(checkpoints)
        if os.path.isdir(path):
            found = _from_directory(path)
            where = f"in {path!r}"
        elif os.path.exists(path):
            found = [_from_item(path, 0)]
            where = repr(path)
        else:
            raise ValueError(
                "Received an invalid value for argument `checkpoints`: no such directory or "
                f"file. Received: checkpoints={path!r}"
            )
    elif isinstance(checkpoints, (list, tuple)):
        found = [_from_item(item, i) for i, item in enumerate(checkpoints)]
        where = "in the list"
    else:
        raise TypeError(
            "Received an invalid value for argument `checkpoints`, expected a directory or a "
            f"list of checkpoint files. Received: checkpoints={checkpoints!r}"
        )
    if not found:
        raise ValueError(
            "Received an invalid value for argument `checkpoints`: no checkpoint found "
            f"{where} (expected CheckpointRecorder records, or *.weights.h5 / *.keras files). "
            f"Received: checkpoints={checkpoints!r}"
        )
    for c in found:
        if not c.path.endswith(_WEIGHT_SUFFIXES):
            raise ValueError(
                "Received an invalid value for argument `checkpoints`: expected `.weights.h5` "
                f"or `.keras` files. Received: {c.path!r}"
            )
        if not os.path.isfile(c.path):
            raise ValueError(
                f"Received an invalid value for argument `checkpoints`: no weights file at "
                f"{c.path!r}."
            )
    if learning_rates is not None:
        rates = _check_rates(learning_rates, len(found), where)
        return [dataclasses.replace(c, learning_rate=r) for c, r in zip(found, rates)]
    missing = [c.path for c in found if c.learning_rate is None]
    if missing:
        raise ValueError(
            "Received an invalid value for argument `learning_rates`: TracIn weights each "
            f"checkpoint by its learning rate, and {len(missing)} of the {len(found)} "
            f"checkpoint(s) {where} do not record it (e.g. {missing[0]!r}; Keras' "
            "ModelCheckpoint files do not). Pass learning_rates=[...] (one per checkpoint, "
            "in training order) or one number, or record checkpoints with "
            "kerastrace.influence.CheckpointRecorder. Received: learning_rates=None"
        )
    for c in found:
        if not math.isfinite(c.learning_rate) or c.learning_rate <= 0:
            raise ValueError(
                "Received an invalid value for argument `learning_rates`: the checkpoint "
                f"{c.path!r} records the learning rate {c.learning_rate}; pass "
                "learning_rates=[...] with positive values."
            )
    return found


# ------------------------------------------------------------------ loading
def _h5_layout(handle) -> dict[str, tuple]:
    import h5py

    layout: dict[str, tuple] = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and not name.startswith("optimizer/"):
            layout[name] = tuple(obj.shape)

    with h5py.File(handle, "r") as f:
        f.visititems(visit)
    return layout


def weights_layout(path: str) -> dict[str, tuple]:
    """`{dataset path: shape}` of the model weights in a `.weights.h5` or `.keras` file.

    The optimizer's variables are left out (a checkpoint of a compiled model
    holds them; they do not describe the architecture).
    """
    try:
        if path.endswith(".keras"):
            with zipfile.ZipFile(path) as zf:
                data = zf.read("model.weights.h5")
            return _h5_layout(io.BytesIO(data))
        return _h5_layout(path)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise ValueError(
            f"Received an invalid value for argument `checkpoints`: {path!r} is not a Keras "
            f"weights file ({type(exc).__name__}: {exc})."
        ) from None


def _describe_mismatch(ref: dict, got: dict) -> str:
    missing = [k for k in ref if k not in got]
    extra = [k for k in got if k not in ref]
    shapes = [k for k in ref if k in got and ref[k] != got[k]]
    parts = []
    if shapes:
        k = shapes[0]
        parts.append(
            f"{len(shapes)} weight(s) of another shape (e.g. {k}: {got[k]} in the checkpoint, "
            f"{ref[k]} in the model)"
        )
    if missing:
        parts.append(f"{len(missing)} weight(s) of the model missing (e.g. {missing[0]})")
    if extra:
        parts.append(f"{len(extra)} weight(s) the model does not have (e.g. {extra[0]})")
    return "; ".join(parts)


class CheckpointLoader:
    """Loads checkpoints into the user's model and puts its own weights back.

    The model's weights file layout (every weight's path and shape) is
    compared with each checkpoint's before anything is loaded, so a
    checkpoint of another architecture is refused with a clear error.
    `loading()` snapshots every variable of the model and of its optimizer
    (a checkpoint of a compiled model also holds optimizer variables) and
    restores them on exit, also on error. The weights of a checkpoint are
    kept in memory after its first load (up to `CACHE_BYTES` in all), so
    repeated queries do not read the files again.
    """

    #: Checkpoint weights kept in memory after their first load (bytes, all together).
    CACHE_BYTES = 1 << 28

    def __init__(self, model, checkpoints: list[Checkpoint]):
        self.model = model
        self.checkpoints = checkpoints
        self.reference = self._reference_layout()
        for c in checkpoints:
            self.check(c)
        self._cache: dict[str, list[np.ndarray]] = {}
        self._cached_bytes = 0

    def _reference_layout(self) -> dict[str, tuple]:
        with tempfile.TemporaryDirectory(prefix="kerastrace-tracin-") as tmp:
            path = os.path.join(tmp, "reference.weights.h5")
            self.model.save_weights(path)
            return weights_layout(path)

    def check(self, checkpoint: Checkpoint) -> None:
        got = weights_layout(checkpoint.path)
        if got != self.reference:
            raise ValueError(
                "Received an invalid value for argument `checkpoints`: "
                f"{checkpoint.path!r} was saved from a different architecture than `model` "
                f"({_describe_mismatch(self.reference, got)}). Pass the checkpoints saved "
                "while training this model."
            )

    def _variables(self) -> list:
        variables = list(self.model.variables)
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:
            variables += list(getattr(optimizer, "variables", []) or [])
        return variables

    @contextlib.contextmanager
    def loading(self):
        """Inside the block `load(c)` may be called; the model is restored on exit."""
        variables = self._variables()
        saved = [np.array(keras.ops.convert_to_numpy(x)) for x in variables]
        try:
            yield self.load
        finally:
            for x, value in zip(variables, saved):
                x.assign(value)

    def load(self, checkpoint: Checkpoint) -> None:
        weights = self.model.weights
        cached = self._cache.get(checkpoint.path)
        if cached is not None:
            for w, value in zip(weights, cached):
                w.assign(value)
            return
        with warnings.catch_warnings():
            # The optimizer's state in the file is not needed (and is restored).
            warnings.filterwarnings("ignore", message=r"Skipping variable loading for optimizer")
            self.model.load_weights(checkpoint.path)
        values = [np.array(keras.ops.convert_to_numpy(w)) for w in weights]
        size = sum(a.nbytes for a in values)
        if self._cached_bytes + size <= self.CACHE_BYTES:
            self._cache[checkpoint.path] = values
            self._cached_bytes += size
