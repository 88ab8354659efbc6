"""Head importance (Michel et al., 2019) and what-if head masking."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from kerastrace._utils import instrument, tf_compat
from kerastrace._utils import validation as v
from kerastrace.generation._results import HeadImportance


class HeadGates:
    """Gate every attention head of a model: `gate = 1` leaves it as it is, `0` removes it.

    A gate `g[l, h]` multiplies head `h`'s contribution to layer `l`'s output:
    the layer's attention weights `A` are shifted by `(g - 1) * A` at the
    attention seam (`kerastrace._utils.instrument.attention_seams`), so the
    head's context becomes `g * A V`. With all gates 1 the model is unchanged.

    Args:
        model: A Keras model with attention layers kerastrace can read.
        layers: Attention layer paths (default: all).
    """

    def __init__(self, model, layers=None):
        found = instrument.attention_layers(model)
        if layers is not None:
            found = {p: instrument.resolve_layer(model, p, "layers")[1] for p in layers}
        if not found:
            raise v.invalid("model", "a model with attention layers", getattr(model, "name", model))
        self.model = model
        self.layers = found
        self.paths = list(found)
        self.num_heads = self._heads()

    def _heads(self):
        import keras

        out = []
        for layer in self.layers.values():
            h = getattr(layer, "num_heads", None) or getattr(layer, "_num_heads", None)
            h = h or getattr(layer, "num_query_heads", None)
            if h is None:
                raise v.invalid("layers", "attention layers with a known number of heads",
                                type(layer).__name__)
            out.append(int(h))
        del keras
        return out

    def gated_call(self, inputs, gates, training=False):
        """Call the model with `gates` (`(L, H_max)` tensor) applied at every attention layer."""
        index = {p: i for i, p in enumerate(self.paths)}

        def hook(site, w):
            g = gates[index[site.path], : w.shape[1]]
            return (tf.cast(g, w.dtype)[None, :, None, None] - 1.0) * w

        with instrument.attention_seams(self.layers, hook):
            return self.model(inputs, training=training)


def _lm_loss(inputs, outputs, labels, sample_mask):
    """Mean next-token cross-entropy (labels: `(B, T)` next tokens; mask: real positions)."""
    logits = tf.cast(outputs, tf.float32)
    ce = tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    m = tf.cast(sample_mask, tf.float32)
    return tf.reduce_sum(ce * m) / tf.maximum(tf.reduce_sum(m), 1.0)


def _classifier_loss(outputs, labels, from_logits):
    ce = tf.keras.losses.sparse_categorical_crossentropy(
        labels, tf.cast(outputs, tf.float32), from_logits=from_logits
    )
    return tf.reduce_mean(ce)


def _batches(data, batch_size):
    """`(inputs, labels[, mask])` batches from a tf.data.Dataset or a tuple of arrays."""
    if isinstance(data, tf.data.Dataset):
        yield from data
        return
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
        raise v.invalid("data", "a tf.data.Dataset or a tuple (inputs, labels[, mask])",
                        type(data).__name__)
    x = data[0]
    n = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
    for i in range(0, n, batch_size):
        sl = slice(i, i + batch_size)
        xb = {k: np.asarray(a)[sl] for k, a in x.items()} if isinstance(x, dict) else x[sl]
        yield (xb, *(np.asarray(d)[sl] for d in data[1:]))


def head_importance(model, data, task: str = "auto", layers=None, batch_size: int = 32,
                    from_logits: bool = True) -> HeadImportance:
    """Importance of every attention head: mean |d loss / d gate| over `data`.

    Michel et al. (2019) gate each head's output with a scalar `g = 1` and
    score the head by the magnitude of the loss gradient with respect to `g`,
    accumulated over a data set; a head whose gate barely moves the loss can be
    masked at little cost. The gradients are taken in one compiled function
    per batch shape.

    Args:
        model: A Keras model with attention layers.
        data: `(inputs, labels)` or `(inputs, labels, mask)` arrays, or a
            `tf.data.Dataset` of such tuples. For a language model (`task="lm"`)
            labels are the next tokens `(B, T)` and the optional mask `(B, T)`
            marks the positions that count; for a classifier, class ids `(B,)`.
        task: `"lm"`, `"classifier"` or `"auto"` (`"lm"` when the output is
            `(B, T, V)`).
        layers: Attention layer paths (default: all).
        batch_size: Rows per batch for array data.
        from_logits: Whether a classifier's outputs are logits.

    Returns:
        A `HeadImportance`.

    References:
        - [Michel et al., 2019, Are Sixteen Heads Really Better than
          One?](https://arxiv.org/abs/1905.10650)
    """
    gates = HeadGates(model, layers)
    width = max(gates.num_heads)
    g = tf.Variable(tf.ones((len(gates.paths), width)), trainable=False)
    v.check_one_of("task", task, ("auto", "lm", "classifier"))
    total = np.zeros((len(gates.paths), width))
    loss_sum, n_batches = 0.0, 0
    fn = None
    for batch in _batches(data, v.check_positive_int("batch_size", batch_size)):
        x, y = batch[0], batch[1]
        mask = batch[2] if len(batch) > 2 else None
        if fn is None:
            fn = _grad_fn(gates, g, task, from_logits)
        if mask is None:
            mask = np.ones(np.shape(y), bool)
        loss, grad = fn(x, y, mask)
        total += np.abs(grad.numpy())
        loss_sum += float(loss)
        n_batches += 1
    if n_batches == 0:
        raise v.invalid("data", "at least one batch", "an empty data set")
    imp = total / n_batches
    for i, h in enumerate(gates.num_heads):
        imp[i, h:] = np.nan
    norm = imp / np.maximum(np.sqrt(np.nansum(imp ** 2, axis=1, keepdims=True)), 1e-20)
    return HeadImportance(gates.paths, imp, norm, loss_sum / n_batches)


def _grad_fn(gates, g, task, from_logits):
    def body(x, y, mask):
        with tf.GradientTape() as tape:
            tape.watch(g)
            out = gates.gated_call(x, g)
            if task == "lm" or (task == "auto" and len(out.shape) == 3):
                loss = _lm_loss(x, out, y, mask)
            else:
                loss = _classifier_loss(out, y, from_logits)
        return loss, tape.gradient(loss, g)

    return tf_compat.function(body, reduce_retracing=True)


def mask_heads(model, heads, data, task: str = "auto", batch_size: int = 32,
               from_logits: bool = True, profile=None) -> dict:
    """What-if: loss and accuracy on `data` with `heads` masked, and the FLOPs saved.

    Args:
        model: A Keras model with attention layers.
        heads: `(layer path, head)` pairs to mask (e.g.
            `head_importance(...).least_important(4)`).
        data: As in `head_importance`.
        task, batch_size, from_logits: As in `head_importance`.
        profile: Optional `kerastrace.profiling.ModelProfile` of the model; the
            FLOPs saved are each masked head's share of its attention layer's
            FLOPs (`flops / num_heads`), taken from the profile's rows.

    Returns:
        `{"masked": [...], "loss": ..., "accuracy": ..., "loss_all_heads": ...,
        "accuracy_all_heads": ..., "flops_saved": ..., "flops_total": ...}`.
    """
    gates = HeadGates(model)
    width = max(gates.num_heads)
    off = np.ones((len(gates.paths), width), np.float32)
    for path, h in heads:
        if path not in gates.paths:
            raise v.invalid("heads", f"(layer, head) pairs with layers among {gates.paths}",
                            (path, h))
        i = gates.paths.index(path)
        if not 0 <= int(h) < gates.num_heads[i]:
            raise v.invalid("heads", f"head indices in [0, {gates.num_heads[i]}) for {path!r}",
                            (path, h))
        off[i, int(h)] = 0.0
    result = {"masked": [[p, int(h)] for p, h in heads]}
    for name, gate in (("all_heads", np.ones_like(off)), ("masked", off)):
        loss, acc = _evaluate(gates, tf.constant(gate), data, task, batch_size, from_logits)
        suffix = "" if name == "masked" else "_all_heads"
        result[f"loss{suffix}"], result[f"accuracy{suffix}"] = loss, acc
    if profile is not None:
        saved = 0
        for path, _ in heads:
            i = gates.paths.index(path)
            saved += profile[path].flops / gates.num_heads[i]
        result["flops_saved"] = float(saved)
        result["flops_total"] = float(profile.total_flops)
    return result


def _evaluate(gates, gate, data, task, batch_size, from_logits):
    losses, correct, count = [], 0.0, 0.0
    for batch in _batches(data, batch_size):
        x, y = batch[0], np.asarray(batch[1])
        mask = np.asarray(batch[2], bool) if len(batch) > 2 else np.ones(y.shape, bool)
        out = gates.gated_call(x, gate)
        if task == "lm" or (task == "auto" and len(out.shape) == 3):
            losses.append(float(_lm_loss(x, out, y, mask)))
            pred = np.asarray(out).argmax(-1)
            correct += float(((pred == y) & mask).sum())
            count += float(mask.sum())
        else:
            losses.append(float(_classifier_loss(out, y, from_logits)))
            correct += float((np.asarray(out).argmax(-1) == y).sum())
            count += float(len(y))
    return float(np.mean(losses)), correct / max(count, 1.0)
