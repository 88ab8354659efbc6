"""Running `attribute_dataset` on the replicas of a `tf.distribute` strategy.

One worker (no strategy, `MirroredStrategy`, `OneDeviceStrategy`): the rows
of each batch that need computing are split into `num_replicas_in_sync`
contiguous shares, `strategy.run` attributes each share on its device, and
the results are put back together in replica order, which is the dataset
order.

Several workers (`MultiWorkerMirroredStrategy`): every worker reads the whole
dataset itself (no `tf.data` auto-sharding) and takes the shares of its own
replicas (replica ids are global, worker 0's first); the results of all
replicas are then exchanged with one all-gather per batch (`strategy.gather`
of the serialized results), so every worker holds every row, in dataset
order, and only the chief (`strategy.extended.should_checkpoint`) writes
the store. Decisions taken by the chief alone (what to resume, errors found
while checking the stored run) and the final manifest are broadcast to the
other workers the same way, so every worker takes the same steps and raises
the same errors.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging

import numpy as np
import tensorflow as tf


class RemoteError(ValueError):
    """An error raised on another worker, re-raised on this one with the same message."""


def _to_blob(data: bytes) -> np.ndarray:
    """`bytes` -> int64 array `[len, payload padded to 8 bytes...]`."""
    pad = (-len(data)) % 8
    body = np.frombuffer(data + b"\0" * pad, "<i8")
    return np.concatenate([[len(data)], body]).astype(np.int64)


def _from_blobs(flat: np.ndarray) -> list[bytes]:
    """Split a concatenation of `_to_blob` arrays back into their payloads."""
    out, pos = [], 0
    while pos < len(flat):
        n = int(flat[pos])
        words = (n + 7) // 8
        out.append(flat[pos + 1 : pos + 1 + words].astype("<i8").tobytes()[:n])
        pos += 1 + words
    return out


def _pack(result: dict | None) -> bytes:
    if result is None:
        return b""
    buf = io.BytesIO()
    np.savez(buf, **result)
    return buf.getvalue()


def _unpack(data: bytes) -> dict | None:
    if not data:
        return None
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


@contextlib.contextmanager
def quiet_tf_warnings():
    # `strategy.run` logs "Using MirroredStrategy eagerly has significant overhead"
    # on every eager call; the per-replica work here is compiled attribution calls,
    # so the warning does not apply.
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)


def _replica_id(ctx_or_none=None) -> int:
    if ctx_or_none is None:
        ctx_or_none = tf.distribute.get_replica_context()
    rid = ctx_or_none.replica_id_in_sync_group
    return int(rid.numpy() if hasattr(rid, "numpy") else rid)


class Cluster:
    """Where `attribute_dataset` runs: this process alone, or one worker of several."""

    def __init__(self, strategy):
        self.strategy = strategy
        if strategy is None:
            self.replicas, self.multi_worker, self.is_writer = 1, False, True
            return
        self.replicas = int(strategy.num_replicas_in_sync)
        local = len(strategy.extended.worker_devices)
        self.multi_worker = self.replicas > local
        self.is_writer = bool(strategy.extended.should_checkpoint)

    # ------------------------------------------------------------ compute
    def compute(self, fn, rows: int, take) -> list[dict]:
        """`fn(share)` for every replica's share of `rows` rows; the results in replica order.

        `take(lo, hi)` returns the share of rows `[lo, hi)`. Shares are
        contiguous and balanced (`rows // replicas` or one more). Errors raised
        by `fn` on any worker are raised on every worker.
        """
        if self.strategy is None:
            return [fn(take(0, rows))]
        bounds = [rows * r // self.replicas for r in range(self.replicas + 1)]
        local: dict[int, object] = {}

        def replica_fn():
            rid = _replica_id()
            lo, hi = bounds[rid], bounds[rid + 1]
            try:
                local[rid] = fn(take(lo, hi)) if hi > lo else None
            except Exception as exc:  # noqa: BLE001 - shipped to every worker below
                if not self.multi_worker:
                    raise
                local[rid] = exc
            return tf.constant(0)

        with quiet_tf_warnings():
            self.strategy.run(replica_fn)
        if not self.multi_worker:
            return [local[r] for r in range(self.replicas) if local.get(r) is not None]
        return self._exchange(local)

    def _exchange(self, local: dict) -> list[dict]:
        """All-gather every replica's result (or error) to every worker, in replica order."""

        def blob(ctx):
            value = local.get(_replica_id(ctx))
            if isinstance(value, Exception):
                data = json.dumps({"type": type(value).__name__, "message": str(value)}).encode()
                data = b"E" + data
            else:
                data = b"R" + _pack(value) if value is not None else b""
            return tf.constant(_to_blob(data))

        with quiet_tf_warnings():
            values = self.strategy.experimental_distribute_values_from_function(blob)
            gathered = self.strategy.gather(values, axis=0).numpy()
        out = []
        for data in _from_blobs(gathered):
            if data[:1] == b"E":
                err = json.loads(data[1:].decode())
                raise RemoteError(f"{err['message']} (raised as {err['type']} by a worker)")
            if data[:1] == b"R":
                out.append(_unpack(data[1:]))
        return out

    # ------------------------------------------------------------ broadcast
    def broadcast(self, payload) -> object:
        """The chief's JSON-serializable `payload`, on every worker (itself on one worker).

        The chief passes the value; the other workers pass anything (ignored)
        and receive the chief's. A payload `{"error": message}` is raised as
        `RemoteError` on the other workers.
        """
        if not self.multi_worker:
            return payload
        sent = {"done": False}

        def blob(ctx):
            if self.is_writer and not sent["done"]:
                sent["done"] = True
                return tf.constant(_to_blob(json.dumps(payload).encode()))
            return tf.zeros((0,), tf.int64)

        with quiet_tf_warnings():
            values = self.strategy.experimental_distribute_values_from_function(blob)
            gathered = self.strategy.gather(values, axis=0).numpy()
        (data,) = _from_blobs(gathered)
        received = json.loads(data.decode())
        if not self.is_writer and isinstance(received, dict) and "error" in received:
            raise RemoteError(f"The chief worker stopped the run: {received['error']}")
        return received
