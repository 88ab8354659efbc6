"""Read TensorBoard event files back for assertions."""

import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator


def read_events(logdir):
    """{tag: [(step, value)]} with scalars as floats, text as str, images as PNG bytes list."""
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["tensors"]:
        rows = []
        for ev in acc.Tensors(tag):
            arr = tf.make_ndarray(ev.tensor_proto)
            if arr.dtype == object:
                val = (
                    [
                        x.decode("utf-8", "replace") if i < 2 else x
                        for i, x in enumerate(arr.ravel())
                    ]
                    if arr.size > 1
                    else arr.ravel()[0].decode()
                )
            else:
                val = float(arr) if arr.ndim == 0 else arr
            rows.append((ev.step, val))
        out[tag] = rows
    return out
