"""Keras callbacks that log attention, attributions, gradient flow and profiles."""

from __future__ import annotations

import functools
import logging
import os
import weakref
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from kerastrace._utils import validation as v
from kerastrace._utils.models import find_token_embedding
from kerastrace.tensorboard._writers import (
    get_writer,
    write_attention,
    write_head_statistics,
    write_token_attributions,
)

logger = logging.getLogger(__name__)


def _safe(method):
    """Run a callback hook; log and count any exception instead of raising it."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception:  # noqa: BLE001 - a monitor must never stop training
            self.failures += 1
            logger.exception(
                "%s.%s failed; training continues without it.",
                type(self).__name__,
                method.__name__,
            )
            return None

    return wrapper


class _Monitor(keras.callbacks.Callback):
    def __init__(self, logdir, every_n_epochs=1):
        super().__init__()
        if not isinstance(logdir, (str, os.PathLike)):
            raise v.invalid("logdir", "a log directory path", logdir)
        self.logdir = os.fspath(logdir)
        self.every_n_epochs = v.check_positive_int("every_n_epochs", every_n_epochs)
        self.failures = 0

    def _due(self, epoch):
        return (epoch + 1) % self.every_n_epochs == 0

    @property
    def writer(self):
        return get_writer(self.logdir)


def _mask_from(probe_inputs, mask, pad_id):
    if mask is not None:
        return np.asarray(mask, bool)
    if pad_id is not None:
        return np.asarray(probe_inputs) != pad_id
    return None


class AttentionMonitor(_Monitor):
    """Log attention pictures and per-head statistics for a fixed probe batch.

    Every `every_n_epochs` epochs, collects the attention weights of all
    attention layers (`kerastrace.attention.collect`) on `probe_inputs`, and
    writes the layer x head picture of the first example (images
    `attention/...`) and the head statistics as scalars
    (`heads/entropy/<layer>/head_<h>`, `heads/distance/...`,
    `heads/special_share/...`). Padding is excluded via `mask` or `pad_id`.
    A failure is logged and never stops training.

    Args:
        logdir: Log directory (open with `tensorboard --logdir <logdir>`).
        probe_inputs: Model inputs of a small fixed batch.
        every_n_epochs: Logging period in epochs.
        tokens: Token strings for the picture (one list, or one per example).
        mask: Optional `(B, T)` boolean array, True on real tokens.
        pad_id: Alternative to `mask`: positions where the (integer) probe
            input equals `pad_id` are masked.
        special: Special positions for `special_share` (see
            `kerastrace.attention.head_statistics`), e.g. `[0]`.
        write_images: Write the pictures (scalars are always written).
        image_style: `"fast"` (default; heatmap grid rendered straight to
            pixels, tokens as text, cheap enough for every epoch) or
            `"figure"` (labelled matplotlib figures, slower). See
            `write_attention`.

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
        write_images: bool = True,
        image_style: str = "fast",
    ):
        super().__init__(logdir, every_n_epochs)
        self.probe_inputs = probe_inputs
        self.tokens = tokens
        self.mask = _mask_from(probe_inputs, mask, pad_id)
        self.special = special
        self.write_images = v.check_bool("write_images", write_images)
        self.image_style = v.check_one_of("image_style", image_style, ("fast", "figure"))
        self.last_statistics = None

    @_safe
    def on_epoch_end(self, epoch, logs=None):
        if not self._due(epoch):
            return
        from kerastrace.attention import collect, head_statistics

        weights = collect(self.model, self.probe_inputs)
        stats = head_statistics(weights, mask=self.mask, special=self.special)
        self.last_statistics = stats
        write_head_statistics(self.writer, stats, step=epoch)
        if self.write_images:
            write_attention(
                self.writer,
                weights,
                self.tokens,
                step=epoch,
                mask=self.mask,
                style=self.image_style,
            )


def _top_logit(outputs):
    """The largest output of each example (the predicted class's logit)."""
    out = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
    out = tf.reshape(tf.cast(out, tf.float32), (tf.shape(out)[0], -1))
    return tf.reduce_max(out, axis=-1)


# One attribution object (so one compiled function) per model, kept weakly:
# AttributionMonitor calls gradient_x_embedding every epoch.
_GXE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def gradient_x_embedding(model, probe_inputs, target=None) -> np.ndarray:
    """Default token attribution: gradient x input on the embedding output, summed.

    Returns `(B, T)` scores: `sum_d (d score / d e_td) * e_td` where `e` is
    the output of the model's first `keras.layers.Embedding` and `score` the
    `target` logit (default: the predicted one). Models without an Embedding
    layer get gradient x input on float `(B, T, D)` inputs. Computed with
    `kerastrace.attribution.LayerGradientXActivation` (or `InputXGradient`).
    """
    from kerastrace.attribution import InputXGradient, LayerGradientXActivation, token_scores

    method = _GXE.get(model)
    if method is None:
        emb = find_token_embedding(model)
        method = InputXGradient(model) if emb is None else LayerGradientXActivation(model, emb)
        _GXE[model] = method
    attr = method.attribute(probe_inputs, target=_top_logit if target is None else target)
    return token_scores(np.asarray(attr))


def jaccard_top_k(a: np.ndarray, b: np.ndarray, k: int, mask=None) -> float:
    """Mean Jaccard index of the top-`k` (by |score|) token sets of two `(B, T)` arrays."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    vals = []
    for i in range(a.shape[0]):
        keep = np.arange(a.shape[1]) if mask is None else np.flatnonzero(mask[i])
        kk = min(k, keep.size)
        if kk == 0:
            continue
        ta = set(keep[np.argsort(-np.abs(a[i, keep]), kind="stable")[:kk]].tolist())
        tb = set(keep[np.argsort(-np.abs(b[i, keep]), kind="stable")[:kk]].tolist())
        vals.append(len(ta & tb) / len(ta | tb))
    return float(np.mean(vals)) if vals else 1.0


class AttributionMonitor(_Monitor):
    """Log token attributions for a probe batch and the stability of the top tokens.

    Every `every_n_epochs` epochs, computes `attribution_fn(model, probe_inputs)
    -> (B, T)` token scores (default: gradient x input on the embedding output,
    `gradient_x_embedding`), writes them as coloured-text images and markdown
    text (`attributions/example_<i>`), and the mean Jaccard index of the
    top-`top_k` token sets against the previous logged epoch as the scalar
    `attributions/top_<k>_jaccard` (1 = the same tokens matter). A failure is
    logged and never stops training.

    Args:
        logdir: Log directory.
        probe_inputs: Model inputs of a small fixed batch.
        attribution_fn: Callable `fn(model, probe_inputs) -> (B, T)` scores,
            e.g. wrapping a `kerastrace.attribution` method.
        top_k: Size of the top token sets.
        every_n_epochs: Logging period in epochs.
        tokens: Token strings, one list or one per example.
        mask: Optional `(B, T)` boolean array; or use `pad_id`.
        pad_id: Integer id of padding in `probe_inputs`.
        write_images: Write the images and text (the scalar is always written).

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
        write_images: bool = True,
    ):
        super().__init__(logdir, every_n_epochs)
        if attribution_fn is not None and not callable(attribution_fn):
            raise v.invalid(
                "attribution_fn", "a callable fn(model, inputs) -> (B, T)", attribution_fn
            )
        self.probe_inputs = probe_inputs
        self.attribution_fn = attribution_fn or gradient_x_embedding
        self.top_k = v.check_positive_int("top_k", top_k)
        self.tokens = tokens
        self.mask = _mask_from(probe_inputs, mask, pad_id)
        self.write_images = v.check_bool("write_images", write_images)
        self.last_scores = None
        self.history: list[float] = []

    @_safe
    def on_epoch_end(self, epoch, logs=None):
        if not self._due(epoch):
            return
        scores = np.asarray(self.attribution_fn(self.model, self.probe_inputs), np.float64)
        if scores.ndim == 1:
            scores = scores[None]
        if scores.ndim != 2:
            raise ValueError(
                "Received an invalid value from `attribution_fn`, expected (B, T) token "
                f"scores. Received: shape={scores.shape}"
            )
        tag = f"attributions/top_{self.top_k}_jaccard"
        with self.writer.as_default():
            if self.last_scores is not None:
                jac = jaccard_top_k(self.last_scores, scores, self.top_k, self.mask)
                self.history.append(jac)
                tf.summary.scalar(tag, jac, step=epoch)
        if self.write_images:
            tokens = self.tokens
            if tokens is None:
                tokens = (
                    [[str(t) for t in row] for row in np.asarray(self.probe_inputs)]
                    if (np.asarray(self.probe_inputs).ndim == 2)
                    else None
                )
            write_token_attributions(
                self.writer, scores, tokens, step=epoch, mask=self.mask, top_k=self.top_k
            )
        self.writer.flush()
        self.last_scores = scores


class GradientFlow(_Monitor):
    """Log per-layer gradient norms (scalars) and gradient histograms for a probe batch.

    Every `every_n_epochs` epochs, computes the gradients of the compiled loss
    on `probe_batch = (x, y)` (in a cached `tf.function`) and writes, for each
    layer that owns trainable weights, `gradient_norm/<layer path>` (the L2
    norm over its own weights) and `gradient/<weight path>` histograms. A
    layer whose norm is below `vanish_threshold` or above `explode_threshold`
    (or not finite) is reported with `logging.warning`. A failure is logged
    and never stops training.

    Args:
        logdir: Log directory.
        probe_batch: `(x, y)` (or `(x, y, sample_weight)`) of a fixed batch.
        every_n_epochs: Logging period in epochs.
        vanish_threshold: Norm below which a layer's gradient counts as vanished.
        explode_threshold: Norm above which it counts as exploding.
        histograms: Write histograms (scalars are always written).

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
    ):
        super().__init__(logdir, every_n_epochs)
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
        self.last_norms: dict[str, float] = {}
        self._fn = None

    def _layer_path(self, var):
        path = getattr(var, "path", var.name)
        if path.startswith(self.model.name + "/"):
            path = path[len(self.model.name) + 1 :]
        return path

    def _build(self):
        """One cached tf.function: gradients, per-layer norms and all summaries."""
        model = self.model
        variables = list(model.trainable_weights)
        paths = [self._layer_path(var) for var in variables]
        layer_of = [p.rsplit("/", 1)[0] if "/" in p else p for p in paths]
        groups: dict[str, list[int]] = {}
        for i, lp in enumerate(layer_of):
            groups.setdefault(lp, []).append(i)
        sw = self.probe_batch[2] if len(self.probe_batch) == 3 else None
        writer = self.writer
        histograms = self.histograms

        @tf.function(reduce_retracing=True)
        def fn(x, y, step):
            with tf.GradientTape() as tape:
                y_pred = model(x, training=False)
                loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sw)
            grads = tape.gradient(loss, variables)
            grads = [
                tf.zeros_like(var) if g is None else tf.cast(tf.convert_to_tensor(g), tf.float32)
                for var, g in zip(variables, grads)
            ]
            norms = {}
            with writer.as_default(step=step):
                for lp, idx in groups.items():
                    sq = tf.add_n([tf.reduce_sum(tf.square(grads[i])) for i in idx])
                    norms[lp] = tf.sqrt(sq)
                    tf.summary.scalar(f"gradient_norm/{lp}", norms[lp])
                if histograms:
                    for path, g in zip(paths, grads):
                        tf.summary.histogram(f"gradient/{path}", g)
            return norms

        return fn

    @_safe
    def on_train_begin(self, logs=None):
        self._fn = None

    @_safe
    def on_epoch_end(self, epoch, logs=None):
        if not self._due(epoch):
            return
        if self._fn is None:
            self._fn = self._build()
        out = self._fn(self.probe_batch[0], self.probe_batch[1], tf.constant(epoch, tf.int64))
        self.writer.flush()
        norms = {k: float(val) for k, val in out.items()}
        self.last_norms = norms
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


class ProfileCallback(keras.callbacks.Callback):
    """Trace chosen training batches for TensorBoard's profile plugin.

    Starts `tf.profiler.experimental.start(logdir)` before batch `batches[0]`
    and stops after batch `batches[1]` (inclusive, 0-based) of the first
    epoch; the trace lands under `<logdir>/plugins/profile/`. A failure (e.g.
    another profiler already running) is logged and never stops training.

    Args:
        logdir: Log directory.
        batches: `(first, last)` batch indices to trace.

    Example:

    >>> from kerastrace.tensorboard import ProfileCallback
    >>> ProfileCallback("/tmp/logs", batches=(2, 4)).batches
    (2, 4)
    """

    def __init__(self, logdir, batches: tuple[int, int] = (2, 4)):
        super().__init__()
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
        self.failures = 0
        self.traced = False
        self._active = False
        self._epoch = 0

    @_safe
    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    @_safe
    def on_train_batch_begin(self, batch, logs=None):
        if self._epoch == 0 and batch == self.batches[0] and not self.traced and not self._active:
            tf.profiler.experimental.start(self.logdir)
            self._active = True

    @_safe
    def on_train_batch_end(self, batch, logs=None):
        if self._active and batch >= self.batches[1]:
            self._stop()

    @_safe
    def on_train_end(self, logs=None):
        if self._active:
            self._stop()

    def _stop(self):
        self._active = False
        tf.profiler.experimental.stop()
        self.traced = True
