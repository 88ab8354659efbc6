"""The record format shared by kerastrace's data writers and its TensorBoard plugin.

Every record is one `tf.summary` tensor event of the plugin `"kerastrace"`:
a 1-D string tensor whose first element is a UTF-8 JSON object (the
payload) and whose optional second element is raw bytes (a blob, e.g. the
attention weights as little-endian float16). The summary metadata's
`plugin_data.content` is the JSON `{"kind": <kind>, "version": 1}`, and
its `data_class` is `DATA_CLASS_TENSOR`, so that TensorBoard's data
providers (the Python multiplexer and the Rust data server) list it.

This module imports neither TensorFlow nor Keras: TensorBoard imports the
plugin at start-up.
"""

from __future__ import annotations

import json
import math

PLUGIN_NAME = "kerastrace"
FORMAT_VERSION = 1
TAG_PREFIX = "kerastrace/"

ATTENTION = "attention"
ATTRIBUTION = "attribution"
GENERATION = "generation"
PROFILE = "profile"
GRADIENT_FLOW = "gradient_flow"
KINDS = (ATTENTION, ATTRIBUTION, GENERATION, PROFILE, GRADIENT_FLOW)


def tag_for(name: str) -> str:
    """The summary tag of a record called `name` (`"attention"` -> `"kerastrace/attention"`)."""
    return name if name.startswith(TAG_PREFIX) else TAG_PREFIX + name


def name_of(tag: str) -> str:
    """The record name shown to users: the tag without `"kerastrace/"`."""
    return tag[len(TAG_PREFIX):] if tag.startswith(TAG_PREFIX) else tag


def content(kind: str) -> bytes:
    """The `plugin_data.content` bytes of a record of `kind`."""
    return json.dumps({"kind": kind, "version": FORMAT_VERSION}).encode("utf-8")


def parse_content(data: bytes) -> dict:
    """`{"kind", "version"}` from `plugin_data.content`; `{}` when unreadable."""
    try:
        out = json.loads(bytes(data).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {}
    return out if isinstance(out, dict) else {}


def clean(value):
    """`value` as strict JSON data: numpy scalars and arrays converted, NaN/inf as None."""
    if isinstance(value, dict):
        return {str(k): clean(x) for k, x in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(x) for x in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return clean(value.tolist())
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f if math.isfinite(f) else None


def encode(payload: dict) -> bytes:
    """Strict JSON bytes of a payload (see `clean`)."""
    return json.dumps(clean(payload), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def decode(values) -> tuple[dict, bytes | None]:
    """`(payload, blob)` from the elements of a record's string tensor."""
    items = [bytes(x) for x in list(values)]
    if not items:
        raise ValueError("empty kerastrace record")
    payload = json.loads(items[0].decode("utf-8"))
    return payload, (items[1] if len(items) > 1 else None)
