"""Keras callbacks that log attention, attributions, gradient flow and profiles.

Failures. Each monitor checks what it needs when training starts
(`on_train_begin`). With `strict=True` any failure, then or later, raises out
of `fit`. With `strict=False` (default) a failure is counted in `.failures`
and logged with `logging.error` (what failed and what to do) once per
distinct failure (same exception type and message); a check that fails when
training starts disables the part of the monitor that cannot work, so it does
not fail again every epoch; a later failure is retried at the next logged
epoch.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from kerastrace._utils import instrument, tf_compat
from kerastrace._utils import validation as v
from kerastrace.attribution._token import describe_inputs as _describe
from kerastrace.attribution._token import gradient_x_embedding
from kerastrace.attribution.metrics import jaccard_top_k
from kerastrace.tensorboard._plugin_data import (
    method_name,
    model_probabilities,
    write_attention_data,
    write_attribution_data,
    write_gradient_flow_data,
)
from kerastrace.tensorboard._writers import (
    get_writer,
    write_attention,
    write_error,
    write_head_statistics,
    write_token_attributions,
)

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------ failures


def _unsupported(message: str) -> ValueError:
    """A check failure whose message already says what to do (logged without traceback)."""
    exc = ValueError(message)
    exc.kerastrace_check = True
    return exc


class _Guarded(keras.callbacks.Callback):
    """Strict or loud-once failure handling shared by the kerastrace callbacks."""

    def __init__(self, strict: bool = False):
        super().__init__()
        self.strict = v.check_bool("strict", strict)
        self.failures = 0
        #: `{part: reason}` of what a failed check turned off for this run.
        self.disabled: dict[str, str] = {}
        self._reported: set[tuple[str, str]] = set()

    def _failed(self, exc: Exception, part: str, hook: str, disable: bool) -> None:
        """Count a failure of `part`, log it once, and optionally disable `part`."""
        self.failures += 1
        reason = f"{type(exc).__name__}: {exc}"
        if disable:
            self.disabled[part] = reason
        key = (type(exc).__name__, str(exc))
        if key in self._reported:
            return
        self._reported.add(key)
        name = type(self).__name__
        if disable:
            effect = f"{name} logs no {part} in this training run"
        else:
            effect = f"{name} retries at its next logged epoch"
        logger.error(
            "%s.%s failed: %s\nTraining continues; %s. Fix the cause above, or pass "
            "strict=True to %s to raise this error out of `fit` (a repeat of this failure "
            "is counted in `.failures`, not logged again).",
            name,
            hook,
            reason,
            effect,
            name,
            exc_info=None if getattr(exc, "kerastrace_check", False) else exc,
        )

    @contextlib.contextmanager
    def _guard(self, part: str, hook: str, disable: bool = False):
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - a monitor only stops training if strict
            # A summary that could not be written (deleted, unwritable or full log
            # directory) is a failure like any other, under one stable message.
            written = write_error(exc, getattr(self, "logdir", None), any_oserror=False)
            if self.strict:
                if written is not None and written is not exc:
                    raise written from exc
                raise
            self._failed(exc if written is None else written, part, hook, disable)

    def _check_at_start(self, part: str, check: Callable[[], None]) -> None:
        """Run `check` when training starts; on failure disable `part` (unless strict)."""
        self.disabled = {}
        with self._guard(part, "on_train_begin", disable=True):
            check()


def _guarded(part: str):
    """Decorator for a callback hook: skipped while `part` is disabled, failures handled."""

    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            if part in self.disabled:
                return None
            with self._guard(part, method.__name__):
                return method(self, *args, **kwargs)
            return None

        return wrapper

    return decorate


class _Monitor(_Guarded):
    def __init__(self, logdir, every_n_epochs=1, strict=False):
        super().__init__(strict)
        if not isinstance(logdir, (str, os.PathLike)):
            raise v.invalid("logdir", "a log directory path", logdir)
        self.logdir = os.fspath(logdir)
        self.every_n_epochs = v.check_positive_int("every_n_epochs", every_n_epochs)

    def _due(self, epoch):
        return (epoch + 1) % self.every_n_epochs == 0

    @property
    def writer(self):
        return get_writer(self.logdir)


# ------------------------------------------------------------ probe helpers


def _token_ids(probe_inputs):
    """The `(B, T)` integer token ids of a probe (array or keras-hub dict), or None."""
    if isinstance(probe_inputs, dict):
        ids = probe_inputs.get("token_ids")
    elif isinstance(probe_inputs, tuple):
        return None
    else:
        ids = probe_inputs
    try:
        arr = np.asarray(ids)
    except (TypeError, ValueError):
        return None
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        return None
    return arr


def _probe_mask(probe_inputs, mask, pad_id):
    """`(B, T)` bool, True on real tokens: `mask`, ids != `pad_id`, or a dict's padding_mask."""
    if mask is not None:
        return np.asarray(mask, bool)
    if pad_id is not None:
        ids = _token_ids(probe_inputs)
        if ids is None:
            raise v.invalid(
                "pad_id",
                "None unless probe_inputs holds (B, T) integer token ids (an array, or a dict "
                "with 'token_ids')",
                pad_id,
                hint=f"probe_inputs: {_describe(probe_inputs)}; pass `mask=` instead",
            )
        return ids != pad_id
    if isinstance(probe_inputs, dict) and "padding_mask" in probe_inputs:
        return np.asarray(probe_inputs["padding_mask"]).astype(bool)
    return None


def _default_tokens(probe_inputs):
    """Token ids as strings, one list per example, when the probe holds token ids."""
    ids = _token_ids(probe_inputs)
    return None if ids is None else [[str(t) for t in row] for row in ids]


def _model_name(model) -> str:
    return getattr(model, "name", type(model).__name__)


# ---------------------------------------------------------------- attention


class AttentionMonitor(_Monitor):
    """Log attention pictures and per-head statistics for a fixed probe batch.

    Every `every_n_epochs` epochs, collects the attention weights of all
    attention layers (`kerastrace.attention.collect`) on `probe_inputs`, and
    writes the layer x head picture of the first example (images
    `attention/...`) and the head statistics as scalars
    (`heads/entropy/<layer>/head_<h>`, `heads/distance/...`,
    `heads/special_share/...`). Padding is excluded via `mask`, `pad_id`, or
    the `padding_mask` of a keras-hub dict probe.

    When training starts the monitor checks that the model has attention
    layers kerastrace can read and that one `collect` on the probe works.
    Failures: see `strict`.

    Args:
        logdir: Log directory (open with `tensorboard --logdir <logdir>`).
        probe_inputs: Model inputs of a small fixed batch: an array, a tuple,
            or a dict (keras-hub: `{"token_ids", "padding_mask", ...}`).
        every_n_epochs: Logging period in epochs.
        tokens: Token strings for the picture (one list, or one per
            example). Defaults to the token ids, or positions.
        mask: Optional `(B, T)` boolean array, True on real tokens.
        pad_id: Alternative to `mask`: positions where the probe's token ids
            equal `pad_id` are masked. Without either, a dict probe's
            `padding_mask` is used.
        special: Special positions for `special_share` (see
            `kerastrace.attention.head_statistics`), e.g. `[0]`.
        special_ids: Alternative to `special`: token ids counted as special
            (e.g. the ids of `[CLS]` and `[SEP]`), found in the probe's ids.
        write_images: Write the pictures (scalars are always written).
        image_style: `"fast"` (default; heatmap grid rendered straight to
            pixels, tokens as text, cheap enough for every epoch) or
            `"figure"` (labelled matplotlib figures, slower). See
            `write_attention`.
        strict: Raise any failure out of `fit` (True), or log it once with
            `logging.error`, count it in `.failures` and keep training
            (False; a failed start-of-training check turns the monitor off).

    Raises:
        ValueError: for invalid arguments; with `strict=True`, from `fit`
            when the model has no readable attention layer or the probe does
            not fit it.

    Example:

    >>> import tempfile, numpy as np, keras
    >>> from kerastrace.layers import TransformerBlock
    >>> from kerastrace.tensorboard import AttentionMonitor
    >>> inp = keras.Input((4,), dtype="int32")
    >>> x, _ = TransformerBlock(2, 8, name="block")(keras.layers.Embedding(10, 8)(inp))
    >>> model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.Flatten()(x)))
    >>> model.compile("sgd", "mse")
    >>> ids = np.array([[1, 2, 3, 4]])
    >>> mon = AttentionMonitor(tempfile.mkdtemp(), ids, write_images=False)
    >>> _ = model.fit(ids, np.zeros((1, 1)), epochs=1, verbose=0, callbacks=[mon])
    >>> mon.failures, sorted(mon.last_statistics.scalars())[0]
    (0, 'distance/block/attention/head_0')
    """

    def __init__(
        self,
        logdir,
        probe_inputs,
        every_n_epochs: int = 1,
        tokens: Sequence[str] | Sequence[Sequence[str]] | None = None,
        *,
        mask=None,
        pad_id: int | None = None,
        special=None,
        special_ids: Sequence[int] | None = None,
        write_images: bool = True,
        image_style: str = "fast",
        strict: bool = False,
    ):
        super().__init__(logdir, every_n_epochs, strict)
        self.probe_inputs = probe_inputs
        self.tokens = _default_tokens(probe_inputs) if tokens is None else tokens
        self.mask = _probe_mask(probe_inputs, mask, pad_id)
        self.special = special
        self.special_ids = None if special_ids is None else [int(i) for i in special_ids]
        self._ids = None
        if self.special_ids is not None:
            self._ids = _token_ids(probe_inputs)
            if self._ids is None:
                raise v.invalid(
                    "special_ids",
                    "None unless probe_inputs holds (B, T) integer token ids",
                    special_ids,
                    hint=f"probe_inputs: {_describe(probe_inputs)}; pass `special=` instead",
                )
        self.write_images = v.check_bool("write_images", write_images)
        self.image_style = v.check_one_of("image_style", image_style, ("fast", "figure"))
        self.last_statistics = None

    def _statistics(self):
        from kerastrace.attention import collect, head_statistics

        weights = collect(self.model, self.probe_inputs)
        stats = head_statistics(
            weights,
            mask=self.mask,
            special=self.special,
            token_ids=self._ids,
            special_ids=self.special_ids,
        )
        return weights, stats

    def _check(self):
        if not instrument.attention_layers(self.model):
            raise _unsupported(
                f"Model {_model_name(self.model)!r} has no attention layer kerastrace can read "
                "(kerastrace SelfAttention/TransformerBlock, keras.layers.MultiHeadAttention "
                "and its subclasses, or a keras-hub attention layer), so AttentionMonitor "
                "has nothing to log. Remove it from the callbacks of this model."
            )
        self._statistics()

    def on_train_begin(self, logs=None):
        self._check_at_start("attention", self._check)

    @_guarded("attention")
    def on_epoch_end(self, epoch, logs=None):
        if not self._due(epoch):
            return
        weights, stats = self._statistics()
        self.last_statistics = stats
        write_head_statistics(self.writer, stats, step=epoch)
        write_attention_data(  # the kerastrace dashboard's attention view
            self.writer, weights, self.tokens, step=epoch, mask=self.mask, stats=stats,
            stats_prefix="heads",
            special=self.special if self._ids is None else np.isin(self._ids, self.special_ids),
        )
        if self.write_images:
            write_attention(
                self.writer,
                weights,
                self.tokens,
                step=epoch,
                mask=self.mask,
                style=self.image_style,
            )


# -------------------------------------------------------------- attribution


def _special_spec(probe_inputs, special, special_ids):
    """Validate `special` / `special_ids`; `(positions or (B, T) bool, ids-based (B, T) bool)`."""
    if special is not None:
        arr = np.asarray(special)
        if arr.dtype != bool and not (arr.ndim == 1 and np.issubdtype(arr.dtype, np.integer)):
            raise v.invalid("special", "a (B, T) boolean array or a list of positions", special)
        special = arr
    found = None
    if special_ids is not None:
        ids = _token_ids(probe_inputs)
        if ids is None:
            raise v.invalid(
                "special_ids",
                "None unless probe_inputs holds (B, T) integer token ids",
                special_ids,
                hint=f"probe_inputs: {_describe(probe_inputs)}; pass `special=` instead",
            )
        found = np.isin(ids, np.asarray(list(special_ids), ids.dtype))
    return special, found


def _rows(name, value, shape):
    """`value` (bool) broadcast to the scores' `(B, T)` shape, or a clear error."""
    if value is None:
        return None
    arr = np.asarray(value, bool)
    try:
        return np.broadcast_to(arr, shape)
    except ValueError:
        raise ValueError(
            f"Received an invalid value for argument `{name}`: its shape {arr.shape} does "
            f"not fit the (B, T)={shape} token scores of `attribution_fn`."
        ) from None


def _special_rows(special, found, shape):
    """`(B, T)` bool of the special tokens for scores of `shape`, or None."""
    out = None
    if special is not None and special.dtype != bool:
        if special.size and (special.min() < -shape[1] or special.max() >= shape[1]):
            raise ValueError(
                "Received an invalid value for argument `special`: positions out of range "
                f"for {shape[1]} tokens. Received: special={special.tolist()}"
            )
        out = np.zeros(shape, bool)
        out[:, special] = True
    elif special is not None:
        out = _rows("special", special, shape)
    if found is not None:
        found = _rows("special_ids", found, shape)
        out = found if out is None else (out | found)
    return out


class AttributionMonitor(_Monitor):
    """Log token attributions for a probe batch and the stability of the top tokens.

    Every `every_n_epochs` epochs, computes `attribution_fn(model, probe_inputs)
    -> (B, T)` token scores (default: gradient x input on the token
    embedding, `gradient_x_embedding`), writes them as coloured-text images
    and markdown text (`attributions/example_<i>`), and the mean Jaccard
    index of the top-`top_k` token sets against the previous logged epoch as
    the scalar `attributions/top_<k>_jaccard` (1 = the same tokens matter).

    Special tokens (`special_ids` such as the ids of `[CLS]` and `[SEP]`, or
    `special` positions) are left out of the top-`top_k` sets and of the
    ranking shown in the text summaries, unless `include_special=True`:
    they often carry the largest scores and would push the words that matter
    out. Padding (`mask`, `pad_id`, or the `padding_mask` of a keras-hub dict
    probe) is left out everywhere.

    When training starts, with the default `attribution_fn`, the monitor
    checks that the model has a token embedding or float `(B, T, D)` inputs
    (an image model does not: pass your own `attribution_fn`) and that the
    scores fit the probe. Failures: see `strict`.

    Args:
        logdir: Log directory.
        probe_inputs: Model inputs of a small fixed batch: an array, a tuple,
            or a keras-hub dict.
        attribution_fn: Callable `fn(model, probe_inputs) -> (B, T)` scores,
            e.g. wrapping a `kerastrace.attribution` method.
        top_k: Size of the top token sets.
        every_n_epochs: Logging period in epochs.
        tokens: Token strings, one list or one per example (default: the
            token ids).
        mask: Optional `(B, T)` boolean array, True on real tokens; or use
            `pad_id`.
        pad_id: Integer id of padding in the probe's token ids.
        special_ids: Token ids to leave out of the rankings (looked up in the
            probe's token ids, or a dict probe's `"token_ids"`).
        special: Special positions to leave out of the rankings: a `(B, T)`
            boolean array or a list of positions (e.g. `[0]`).
        include_special: Rank special tokens like the others.
        write_images: Write the images and text (the scalar is always written).
        strict: Raise any failure out of `fit` (True), or log it once with
            `logging.error`, count it in `.failures` and keep training
            (False; a failed start-of-training check turns the monitor off).

    Raises:
        ValueError: for invalid arguments; with `strict=True`, from `fit`
            when the default attribution cannot work for the model (the
            message says what to pass as `attribution_fn`).

    Example:

    >>> import tempfile, numpy as np, keras
    >>> from kerastrace.tensorboard import AttributionMonitor
    >>> inp = keras.Input((3,), dtype="int32")
    >>> x = keras.layers.Flatten()(keras.layers.Embedding(10, 4)(inp))
    >>> model = keras.Model(inp, keras.layers.Dense(2)(x))
    >>> model.compile("sgd", "mse")
    >>> ids = np.array([[1, 2, 3]])
    >>> mon = AttributionMonitor(tempfile.mkdtemp(), ids, write_images=False)
    >>> _ = model.fit(ids, np.zeros((1, 2)), epochs=2, verbose=0, callbacks=[mon])
    >>> mon.failures, mon.last_scores.shape, len(mon.history)
    (0, (1, 3), 1)
    """

    def __init__(
        self,
        logdir,
        probe_inputs,
        attribution_fn: Callable | None = None,
        top_k: int = 3,
        *,
        every_n_epochs: int = 1,
        tokens=None,
        mask=None,
        pad_id: int | None = None,
        special_ids: Sequence[int] | None = None,
        special=None,
        include_special: bool = False,
        write_images: bool = True,
        strict: bool = False,
    ):
        super().__init__(logdir, every_n_epochs, strict)
        if attribution_fn is not None and not callable(attribution_fn):
            raise v.invalid(
                "attribution_fn", "a callable fn(model, inputs) -> (B, T)", attribution_fn
            )
        self.probe_inputs = probe_inputs
        self.attribution_fn = attribution_fn or gradient_x_embedding
        self.top_k = v.check_positive_int("top_k", top_k)
        self.tokens = _default_tokens(probe_inputs) if tokens is None else tokens
        self.mask = _probe_mask(probe_inputs, mask, pad_id)
        self.special, self._special_found = _special_spec(probe_inputs, special, special_ids)
        self.special_ids = special_ids
        self.include_special = v.check_bool("include_special", include_special)
        self.write_images = v.check_bool("write_images", write_images)
        self.last_scores = None
        self.history: list[float] = []

    def _scores(self):
        """`(scores, shown, special)`: the `(B, T)` scores and their masks, checked."""
        scores = np.asarray(self.attribution_fn(self.model, self.probe_inputs), np.float64)
        if scores.ndim == 1:
            scores = scores[None]
        if scores.ndim != 2:
            raise ValueError(
                "Received an invalid value from `attribution_fn`, expected (B, T) token "
                f"scores. Received: shape={scores.shape}"
            )
        shown = _rows("mask", self.mask, scores.shape)
        special = None
        if not self.include_special:
            special = _special_rows(self.special, self._special_found, scores.shape)
        return scores, shown, special

    @staticmethod
    def _ranked(shown, special):
        """`(B, T)` bool of the positions that enter the top-k sets, or None for all."""
        if special is None:
            return shown
        return ~special if shown is None else (shown & ~special)

    def _check(self):
        if self.attribution_fn is gradient_x_embedding:
            self._scores()

    def on_train_begin(self, logs=None):
        self._check_at_start("attributions", self._check)

    @_guarded("attributions")
    def on_epoch_end(self, epoch, logs=None):
        if not self._due(epoch):
            return
        scores, shown, special = self._scores()
        tag = f"attributions/top_{self.top_k}_jaccard"
        with self.writer.as_default():
            if self.last_scores is not None and self.last_scores.shape == scores.shape:
                ranked = self._ranked(shown, special)
                jac = jaccard_top_k(self.last_scores, scores, self.top_k, ranked)
                self.history.append(jac)
                tf.summary.scalar(tag, jac, step=epoch)
        self.last_scores = scores
        write_attribution_data(  # the kerastrace dashboard's attribution view
            self.writer, {method_name(self.attribution_fn): scores}, self.tokens, step=epoch,
            mask=shown, special=special,
            probabilities=model_probabilities(self.model, self.probe_inputs),
        )
        if self.write_images:
            write_token_attributions(
                self.writer,
                scores,
                self.tokens,
                step=epoch,
                mask=shown,
                special=special,
                top_k=self.top_k,
            )
        self.writer.flush()


# ------------------------------------------------------------ gradient flow


def _gradient_groups(model):
    """`({path: [variable index]}, [(histogram tag, variable index)])` by the path scheme.

    Each trainable weight belongs to the layer that owns it
    (`instrument.own_weights`), at that layer's path; weights no layer of
    the walk owns (the model's own) go under the model's name.
    """
    index = {id(w): i for i, w in enumerate(model.trainable_variables)}
    taken: set[int] = set()
    groups: dict[str, list[int]] = {}
    histograms: list[tuple[str, int]] = []

    def add(path, weights):
        names: set[str] = set()
        for w in weights:
            i = index.get(id(w))
            if i is None or i in taken:
                continue
            taken.add(i)
            groups.setdefault(path, []).append(i)
            name = getattr(w, "name", f"weight_{i}").split("/")[-1].replace(":", "_")
            unique, n = name, 1
            while unique in names:
                unique, n = f"{name}_{n}", n + 1
            names.add(unique)
            histograms.append((f"gradient/{path}/{unique}", i))

    for node in instrument.walk(model):
        add(node.path, instrument.own_weights(node.layer, trainable_only=True))
    add(_model_name(model), model.trainable_variables)
    return groups, histograms


def _probe_gradients(model, x, y, sample_weight=None, training: bool = True):
    """Gradients of the compiled loss on `(x, y)` without changing the model.

    Runs what a training step computes, `model(x, training=training)` then
    `model.compute_loss` (with regularization and `add_loss` terms), inside
    a `keras.StatelessScope` (the mechanism of `Model.stateless_call`) that
    maps every variable to its current value: BatchNormalization's moving
    statistics, dropout seeds and metric states are read but never updated,
    and the gradients are taken with a `tf.GradientTape` on the trainable
    values. Works eagerly and inside `tf.function`.

    Args:
        model: A compiled, built Keras model.
        x: Model inputs (array, tuple or dict).
        y: Targets.
        sample_weight: Optional sample weights.
        training: Forward mode. True (default) is what `fit` differentiates:
            BatchNormalization uses batch statistics, dropout is active.

    Returns:
        `(loss, gradients)`: a scalar and one float32 tensor per
        `model.trainable_variables` (zeros where no gradient flows).

    Raises:
        ValueError: when the model has no loss to compute (not compiled).
    """
    variables = list(model.trainable_variables)
    others = list(model.non_trainable_variables) + list(model.metrics_variables)
    values = [tf.convert_to_tensor(w) for w in variables]
    mapping = list(zip(variables, values)) + [(w, tf.convert_to_tensor(w)) for w in others]
    kwargs = {}
    if "training" in inspect.signature(model.compute_loss).parameters:
        kwargs["training"] = training
    with tf.GradientTape() as tape:
        tape.watch(values)
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True):
            y_pred = model(x, training=training)
            loss = model.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, **kwargs
            )
    if loss is None:
        raise ValueError(
            f"Model {_model_name(model)!r} computed no loss on the probe batch; compile it "
            "with a `loss` first."
        )
    grads = tape.gradient(loss, values)
    grads = [
        tf.zeros(w.shape, tf.float32) if g is None else tf.cast(tf.convert_to_tensor(g), tf.float32)
        for w, g in zip(variables, grads)
    ]
    return loss, grads


class GradientFlow(_Monitor):
    """Log per-layer gradient norms (scalars) and gradient histograms for a probe batch.

    Every `every_n_epochs` epochs, computes the gradients of the compiled
    loss on `probe_batch = (x, y)` with the training-mode forward pass (what
    `fit` differentiates; `training=False` for the inference-mode one)
    without changing the model (inside a `keras.StatelessScope`, the
    mechanism of `Model.stateless_call`: BatchNormalization's moving
    statistics, dropout seeds and metrics are not updated), in a cached
    `tf.function`, and
    writes, for each layer that owns trainable weights,
    `gradient_norm/<layer path>` (the L2 norm over the weights the layer
    owns itself; paths as everywhere in kerastrace, e.g.
    `"bert_backbone/transformer_layer_0/feedforward_output_dense"`) and
    `gradient/<layer path>/<weight name>` histograms. A layer whose norm is
    below `vanish_threshold` or above `explode_threshold` (or not finite) is
    reported with `logging.warning`.

    When training starts the monitor checks that the probe batch runs
    through the model and `compute_loss`. Failures: see `strict`.

    Args:
        logdir: Log directory.
        probe_batch: `(x, y)` (or `(x, y, sample_weight)`) of a fixed batch;
            `x` may be a dict (keras-hub models).
        every_n_epochs: Logging period in epochs.
        vanish_threshold: Norm below which a layer's gradient counts as vanished.
        explode_threshold: Norm above which it counts as exploding.
        histograms: Write histograms (scalars are always written).
        training: Forward mode of the probe (True: batch statistics and
            dropout, as in `fit`; False: inference mode).
        strict: Raise any failure out of `fit` (True), or log it once with
            `logging.error`, count it in `.failures` and keep training
            (False; a failed start-of-training check turns the monitor off).

    Example:

    >>> import tempfile, numpy as np, keras
    >>> from kerastrace.tensorboard import GradientFlow
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
    >>> model.compile("sgd", "mse")
    >>> x, y = np.ones((4, 3), "float32"), np.zeros((4, 2), "float32")
    >>> cb = GradientFlow(tempfile.mkdtemp(), (x, y))
    >>> _ = model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])
    >>> list(cb.last_norms)
    ['d']
    """

    def __init__(
        self,
        logdir,
        probe_batch,
        every_n_epochs: int = 1,
        vanish_threshold: float = 1e-7,
        explode_threshold: float = 1e3,
        *,
        histograms: bool = True,
        training: bool = True,
        strict: bool = False,
    ):
        super().__init__(logdir, every_n_epochs, strict)
        if not isinstance(probe_batch, (tuple, list)) or len(probe_batch) not in (2, 3):
            raise v.invalid("probe_batch", "a tuple (x, y) or (x, y, sample_weight)", probe_batch)
        self.probe_batch = tuple(probe_batch)
        self.vanish_threshold = v.check_non_negative_float("vanish_threshold", vanish_threshold)
        self.explode_threshold = v.check_non_negative_float("explode_threshold", explode_threshold)
        if self.explode_threshold <= self.vanish_threshold:
            raise v.invalid(
                "explode_threshold",
                f"a value above vanish_threshold={vanish_threshold}",
                explode_threshold,
            )
        self.histograms = v.check_bool("histograms", histograms)
        self.training = v.check_bool("training", training)
        self.last_norms: dict[str, float] = {}
        self._fn = None
        self._fn_writer = None

    def _build(self):
        """One cached tf.function: gradients, per-layer norms and all summaries."""
        model = self.model
        groups, hist_tags = _gradient_groups(model)
        writer = self.writer
        histograms = self.histograms
        training = self.training

        @functools.partial(tf_compat.function, reduce_retracing=True)
        def fn(x, y, sample_weight, step, record):
            _, grads = _probe_gradients(model, x, y, sample_weight, training=training)
            norms = {}
            with writer.as_default(step=step), tf.summary.record_if(record):
                for path, idx in groups.items():
                    sq = tf.add_n([tf.reduce_sum(tf.square(grads[i])) for i in idx])
                    norms[path] = tf.sqrt(sq)
                    tf.summary.scalar(f"gradient_norm/{path}", norms[path])
                if histograms:
                    for tag, i in hist_tags:
                        tf.summary.histogram(tag, grads[i])
            return norms

        return fn

    def compute_norms(self, step: int = 0, record: bool = True) -> dict[str, float]:
        """Run the probe once: `{layer path: gradient norm}`, written when `record`."""
        if self._fn is None or self._fn_writer is not self.writer:
            self._fn_writer = self.writer  # a new writer (log directory recreated): rebuild
            self._fn = self._build()
        sw = self.probe_batch[2] if len(self.probe_batch) == 3 else None
        out = self._fn(
            self.probe_batch[0],
            self.probe_batch[1],
            sw,
            tf.constant(step, tf.int64),
            tf.constant(record),
        )
        if record:
            self.writer.flush()
        return {k: float(val) for k, val in out.items()}

    def _check(self):
        self._fn = None
        self.compute_norms(record=False)

    def on_train_begin(self, logs=None):
        self._check_at_start("gradients", self._check)

    @_guarded("gradients")
    def on_epoch_end(self, epoch, logs=None):
        if not self._due(epoch):
            return
        norms = self.compute_norms(step=epoch)
        self.last_norms = norms
        write_gradient_flow_data(  # the kerastrace dashboard's gradient-flow view
            self.writer, norms, step=epoch, vanish_threshold=self.vanish_threshold,
            explode_threshold=self.explode_threshold,
        )
        for layer_path, norm in norms.items():
            if not np.isfinite(norm) or norm > self.explode_threshold:
                logger.warning(
                    "GradientFlow: exploding gradient in layer %r at epoch %d: norm=%.3g > %.3g",
                    layer_path,
                    epoch,
                    norm,
                    self.explode_threshold,
                )
            elif norm < self.vanish_threshold:
                logger.warning(
                    "GradientFlow: vanishing gradient in layer %r at epoch %d: norm=%.3g < %.3g",
                    layer_path,
                    epoch,
                    norm,
                    self.vanish_threshold,
                )


# ---------------------------------------------------------------- profiling


class ProfileCallback(_Guarded):
    """Trace chosen training batches for TensorBoard's profile plugin.

    Starts `tf.profiler.experimental.start(logdir)` before batch `batches[0]`
    and stops after batch `batches[1]` (inclusive, 0-based) of the first
    epoch; the trace lands under `<logdir>/plugins/profile/`. A failure (e.g.
    another profiler already running) raises with `strict=True`, else is
    logged once and counted in `.failures`.

    Args:
        logdir: Log directory.
        batches: `(first, last)` batch indices to trace.
        strict: Raise failures out of `fit`.

    Example:

    >>> from kerastrace.tensorboard import ProfileCallback
    >>> ProfileCallback("/tmp/logs", batches=(2, 4)).batches
    (2, 4)
    """

    def __init__(self, logdir, batches: tuple[int, int] = (2, 4), *, strict: bool = False):
        super().__init__(strict)
        if not isinstance(logdir, (str, os.PathLike)):
            raise v.invalid("logdir", "a log directory path", logdir)
        self.logdir = os.fspath(logdir)
        if (
            not isinstance(batches, (tuple, list))
            or len(batches) != 2
            or not all(isinstance(b, (int, np.integer)) and b >= 0 for b in batches)
            or batches[0] > batches[1]
        ):
            raise v.invalid(
                "batches", "a pair (first, last) of batch indices, first <= last", batches
            )
        self.batches = (int(batches[0]), int(batches[1]))
        self.traced = False
        self._active = False
        self._epoch = 0

    @_guarded("profile")
    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    @_guarded("profile")
    def on_train_batch_begin(self, batch, logs=None):
        if self._epoch == 0 and batch == self.batches[0] and not self.traced and not self._active:
            tf.profiler.experimental.start(self.logdir)
            self._active = True

    @_guarded("profile")
    def on_train_batch_end(self, batch, logs=None):
        if self._active and batch >= self.batches[1]:
            self._stop()

    @_guarded("profile")
    def on_train_end(self, logs=None):
        if self._active:
            self._stop()

    def _stop(self):
        self._active = False
        tf.profiler.experimental.stop()
        self.traced = True
