"""Occlusion: the output change when sliding windows are replaced by a baseline."""

from __future__ import annotations

import itertools
import numbers

import numpy as np

from kerastrace._utils import validation as v
from kerastrace._utils.types import Inputs, Target
from kerastrace.attribution import _core
from kerastrace.attribution._base import Attribution


def _per_input(value, xs, name, default=None):
    """One shape tuple per input from an int/tuple or a tuple of them (None: `default` per axis)."""
    given = value
    if value is None:
        value = tuple(default for _ in xs) if len(xs) > 1 else default
    if len(xs) == 1 and (
        isinstance(value, numbers.Integral)
        or (
            isinstance(value, (tuple, list)) and all(isinstance(t, numbers.Integral) for t in value)
        )
    ):
        value = (value,)
    if not isinstance(value, (tuple, list)) or len(value) != len(xs):
        raise v.invalid(name, f"one entry per input ({len(xs)})", given)
    out = []
    for val, x in zip(value, xs):
        rank = x.ndim - 1
        if isinstance(val, numbers.Integral):
            val = (int(val),) * rank
        val = tuple(val)
        if len(val) != rank or not all(
            isinstance(t, numbers.Integral) and not isinstance(t, bool) and t >= 1 for t in val
        ):
            raise v.invalid(
                name, f"positive integers, one per non-batch axis (shape {x.shape[1:]})", given
            )
        if name == "sliding_window_shapes" and any(w > s for w, s in zip(val, x.shape[1:])):
            raise v.invalid(name, f"windows no larger than the input shape {x.shape[1:]}", given)
        out.append(tuple(int(t) for t in val))
    return out


def _check_strides(windows, steps, xs, strides):
    """Refuse a stride larger than its window (features between windows would be skipped).

    As in Captum, a stride may exceed the window only on an axis the window
    covers entirely (there is a single position).
    """
    for win, step, x in zip(windows, steps, xs):
        for w, st, s in zip(win, step, x.shape[1:]):
            if st > w and w < s:
                raise v.invalid(
                    "strides",
                    f"strides no larger than the window {win} on axes it does not cover "
                    "entirely (a larger stride skips features)",
                    strides,
                )


def window_starts(size: int, window: int, stride: int) -> list:
    """Start of every window position on one axis, the last one clipped at the end.

    `0, stride, 2 * stride, ...` while the window fits; if that leaves
    features uncovered at the end, one more position at the next stride,
    whose window is clipped to the input (Captum's rule).

    >>> window_starts(5, 2, 2), window_starts(6, 2, 2), window_starts(4, 4, 9)
    ([0, 2, 4], [0, 2, 4], [0])
    """
    count = -(-(size - window) // stride) + 1  # ceil((size - window) / stride) + 1
    return [i * stride for i in range(count)]


class Occlusion(Attribution):
    """Occlusion (sliding-window perturbation) attribution.

    Every window position of `sliding_window_shapes`, moved by `strides`
    over each input's non-batch axes, is replaced by the baseline; a
    feature's attribution is the mean over the windows covering it of
    `f(x) - f(x_occluded)`. All occluded copies are scored by one compiled
    forward function in chunks of `internal_batch_size` rows. Works on token
    ids too (occlude token positions with the pad id): no gradient is needed.

    Args:
        model: A Keras model or a callable.

    Example:

    >>> import numpy as np, keras
    >>> from kerastrace.attribution import Occlusion
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, use_bias=False)])
    >>> model.layers[0].set_weights([np.array([[1.0], [2.0], [3.0], [4.0]])])
    >>> Occlusion(model).attribute(np.ones((1, 4), "float32"), sliding_window_shapes=(2,),
    ...                            strides=2)
    array([[3., 3., 7., 7.]], dtype=float32)

    References:
        - [Zeiler & Fergus, 2014, Visualizing and Understanding Convolutional
          Networks](https://arxiv.org/abs/1311.2901)
    """

    def attribute(
        self,
        inputs: Inputs,
        sliding_window_shapes,
        strides=None,
        baselines=None,
        target: Target = None,
        internal_batch_size: int | None = None,
        additional_forward_args=None,
    ):
        """Compute occlusion attributions.

        Args:
            inputs: Array/tensor `(B, ...)` (token ids allowed) or a tuple.
            sliding_window_shapes: Window shape over the non-batch axes (a
                tuple per input for tuple inputs); an int means the same size
                on every axis.
            strides: Window steps, same forms; default 1 on every axis. A
                stride may not exceed its window (except on an axis the
                window covers entirely). When the steps do not tile an axis,
                a last window at the next step, clipped to the input, covers
                the remaining features (as in Captum).
            baselines: Values put in the window (scalar or broadcastable);
                default 0 (the pad id for token inputs).
            target: As in `IntegratedGradients.attribute`.
            internal_batch_size: Occluded copies per model call (default 256).
            additional_forward_args: Model inputs passed through unchanged.
                For dict inputs, keras-hub's auxiliary entries
                (`padding_mask`, `segment_ids`, ...) pass through by default
                and every other entry is occluded.

        Returns:
            Float32 array(s) of the input's shape.

        Raises:
            ValueError: for windows larger than the input, strides larger
                than the window, target errors, token ids outside the
                model's vocabulary, non-integral baselines of integer
                inputs, and NaN/inf model outputs (naming the example and
                the window).
        """
        flat, layout = _core.normalize_inputs(
            inputs, additional_forward_args=additional_forward_args
        )
        _core.check_finite(flat, names=self._names, layout=layout)
        self._check_inputs(flat, layout)
        layout = _core.select_perturbed_inputs(flat, layout)
        xs, ctx = layout.split(flat)
        windows = _per_input(sliding_window_shapes, xs, "sliding_window_shapes")
        steps = _per_input(strides, xs, "strides", default=1)
        _check_strides(windows, steps, xs, strides)
        bases = tuple(
            b.astype(x.dtype)
            for b, x in zip(
                _core.broadcast_baselines(baselines, xs, dtype=None, layout=layout), xs
            )
        )
        _core.check_token_inputs(
            self.model, layout.merge(bases, ctx), layout, "baselines", self._names
        )
        chunk = v.check_positive_int(
            "internal_batch_size", 256 if internal_batch_size is None else internal_batch_size
        )
        tgt = self._target(target, flat, layout)
        batch = xs[0].shape[0]
        f_x = self._scores(flat, tgt, chunk, layout)
        out = []
        for j, (x, win, step) in enumerate(zip(xs, windows, steps)):
            shape = x.shape[1:]
            starts = [window_starts(s, w, st) for s, w, st in zip(shape, win, step)]
            positions = list(itertools.product(*starts))
            acc = np.zeros(x.shape, np.float64)
            count = np.zeros(shape, np.float64)
            per_block = max(1, chunk // batch)
            for k in range(0, len(positions), per_block):
                block = positions[k : k + per_block]
                occluded = np.repeat(x[None], len(block), axis=0)  # (W, B, ...)
                masks = np.zeros((len(block), *shape), bool)
                for i, pos in enumerate(block):
                    sl = tuple(slice(p, p + w) for p, w in zip(pos, win))
                    masks[i][sl] = True
                m = np.broadcast_to(masks[:, None], occluded.shape)
                occluded = np.where(m, np.broadcast_to(bases[j][None], occluded.shape), occluded)
                rows = occluded.reshape(len(block) * batch, *shape)
                others = [np.tile(o, (len(block),) + (1,) * (o.ndim - 1)) for o in xs]
                others[j] = rows
                rep_ctx = [np.tile(c, (len(block),) + (1,) * (c.ndim - 1)) for c in ctx]
                t = tgt.tile(len(block))

                def where(r, block=block, j=j):
                    w, b = divmod(r, batch)
                    return f"example {b}, occlusion window at {block[w]} of {layout.label(layout.diff[j])}"

                f_o = self._scores(layout.merge(others, rep_ctx), t, chunk, layout, where)
                f_o = f_o.reshape(len(block), batch)
                diff = f_x[None, :] - f_o  # (W, B)
                mf = masks.astype(np.float64)
                acc += np.einsum("wb,w...->b...", diff, mf)
                count += mf.sum(axis=0)
            out.append((acc / np.maximum(count, 1.0)).astype(np.float32))
        return _core.restore(out, layout)
