"""Fingerprints that tell whether a stored run still describes the same data, model and method.

- `example_digests(features, labels)`: one 16-byte BLAKE2b digest per
  example (as `(B, 2)` int64) of its features and label. Trailing zero
  padding of the first axis is ignored (the same token ids padded to 8 or
  to 12 positions by `padded_batch` give the same digest) and integer and
  bool arrays are hashed as int64, so re-batching the same data does not
  change them; any other change of a value, of the order of the examples or
  of their labels does.
- `model_fingerprint(model)`: SHA-256 of the model's weights (values,
  shapes and dtypes, in `model.weights` order) and of its configuration
  (`get_config()`, with layer names replaced by their order of appearance so
  that a rebuilt model whose auto-generated names moved on, `dense_7`
  instead of `dense_1`, is the same model).
- `method_settings(method)`: the attribution object's class and its public
  settings (`layer_path`, `multiply_by_inputs`, a wrapped method's own
  settings, ...).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

_SKIP_SETTINGS = frozenset({"model", "run_eagerly"})


# ------------------------------------------------------------------ examples
def _leaf_bytes(h, a: np.ndarray) -> None:
    if a.dtype.kind in "iub":
        a = a.astype(np.int64)
    if a.ndim >= 1 and a.dtype.kind in "iufcb" and a.shape[0]:
        rows = a.reshape(a.shape[0], -1)
        nonzero = np.flatnonzero(rows.any(axis=1))
        a = a[: (nonzero[-1] + 1) if nonzero.size else 0]
    h.update(f"{a.dtype.str}{a.shape}".encode())
    if a.dtype.kind == "O":
        for x in a.ravel():
            b = x if isinstance(x, bytes) else str(x).encode()
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
    else:
        h.update(np.ascontiguousarray(a).tobytes())


def _leaves(value, path):
    """`[(path, array)]` of a nested structure, dict keys sorted."""
    if isinstance(value, dict):
        out = []
        for key in sorted(value, key=str):
            out += _leaves(value[key], f"{path}/{key}")
        return out
    if isinstance(value, (tuple, list)):
        out = []
        for i, x in enumerate(value):
            out += _leaves(x, f"{path}/{i}")
        return out
    return [(path, np.asarray(value))]


def example_digests(features, labels=None) -> np.ndarray:
    """`(B, 2)` int64: a 128-bit digest of each example's features and label.

    Args:
        features: An array, or a (nested) tuple or dict of arrays, batch first.
        labels: The batch's labels (any structure), or None.

    Example:

    >>> import numpy as np
    >>> a = example_digests(np.array([[3, 4, 0], [5, 0, 0]]), np.array([1, 0]))
    >>> b = example_digests(np.array([[3, 4], [5, 0]], "int32"), np.array([1, 0]))
    >>> a.shape, bool((a == b).all()), bool((a[0] == a[1]).all())
    ((2, 2), True, False)
    """
    leaves = _leaves(features, "x")
    if labels is not None:
        leaves += _leaves(labels, "y")
    b = int(leaves[0][1].shape[0]) if leaves and leaves[0][1].ndim else 0
    out = np.empty((b, 2), np.int64)
    for i in range(b):
        h = hashlib.blake2b(digest_size=16)
        for path, a in leaves:
            h.update(path.encode() + b"\0")
            row = a[i] if a.ndim else a
            _leaf_bytes(h, row if isinstance(row, np.ndarray) else np.asarray(row, a.dtype))
        out[i] = np.frombuffer(h.digest(), "<i8")
    return out


def combine(digests: np.ndarray) -> str:
    """One hex SHA-256 of an ordered `(N, 2)` digest array (a shard's inputs)."""
    return hashlib.sha256(np.ascontiguousarray(digests, "<i8").tobytes()).hexdigest()


# ------------------------------------------------------------------ model
def _weight_value(w) -> np.ndarray:
    value = w.numpy() if hasattr(w, "numpy") else w
    return np.asarray(value)


def _canonical(config):
    """`config` with every layer name replaced by `<name:i>` (order of appearance)."""
    names: dict[str, int] = {}

    def collect(obj):
        if isinstance(obj, dict):
            if isinstance(obj.get("name"), str):
                names.setdefault(obj["name"], len(names))
            for value in obj.values():
                collect(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                collect(value)

    def canon(obj):
        if isinstance(obj, dict):
            return {str(k): canon(x) for k, x in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [canon(x) for x in obj]
        if isinstance(obj, str) and obj in names:
            return f"<name:{names[obj]}>"
        return obj

    collect(config)
    return canon(config)


def _config_text(model) -> str:
    try:
        config = model.get_config()
    except Exception:  # noqa: BLE001 - subclassed models without a config
        config = None
    if config is None:
        from kerastrace._utils import instrument

        try:
            config = [type(n.layer).__qualname__ for n in instrument.walk(model)]
        except Exception:  # noqa: BLE001
            config = []
    config = {"class": type(model).__qualname__, "config": _canonical(config)}
    return json.dumps(config, sort_keys=True, default=lambda o: type(o).__qualname__)


def model_fingerprint(model) -> dict | None:
    """`{"weights": sha256, "config": sha256}` of a Keras model, or None for a plain callable."""
    weights = getattr(model, "weights", None)
    if weights is None or not hasattr(model, "get_config"):
        return None
    h = hashlib.sha256()
    for w in weights:
        a = _weight_value(w)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    config = hashlib.sha256(_config_text(model).encode()).hexdigest()
    return {"weights": h.hexdigest(), "config": config}


# ------------------------------------------------------------------ method
def _simple(value) -> bool:
    """Scalars and tuples of them: settings (lists and dicts are state that changes)."""
    if isinstance(value, (str, int, float, bool, type(None))):
        return True
    return isinstance(value, tuple) and all(_simple(x) for x in value)


def method_settings(method, depth: int = 0) -> dict:
    """The class and public settings of an attribution object (wrapped methods included).

    Settings are the public attributes holding scalars or tuples of them
    (`layer_path`, `multiplies_by_inputs`, ...), and the settings of a
    wrapped attribution object (`NoiseTunnel(IntegratedGradients(m))`).
    """
    out = {"class": type(method).__qualname__}
    for key, value in sorted(getattr(method, "__dict__", {}).items()):
        if key.startswith("_") or key in _SKIP_SETTINGS:
            continue
        if _simple(value):
            out[key] = list(value) if isinstance(value, tuple) else value
        elif hasattr(value, "attribute") and depth < 4:
            out[key] = method_settings(value, depth + 1)
    return out
