"""Reading kerastrace records (and the scalars they refer to) through a TensorBoard data provider.

`Reader` turns what the data provider holds into the JSON-ready answers of
the plugin's routes. It knows nothing of HTTP; the plugin (`_plugin`) wraps
it in WSGI routes.
"""

from __future__ import annotations

import collections
import math
import threading

import numpy as np
from tensorboard.data import provider

from kerastrace.tensorboard.plugin import _format as fmt

SCALARS_PLUGIN = "scalars"
#: At most this many points per series are requested from the data provider
#: (TensorBoard's ingester keeps fewer unless `--samples_per_plugin` says otherwise).
MAX_POINTS = 100_000


class NotFound(LookupError):
    """A run, tag, step or layer that the log directory does not hold."""


class BadRequest(ValueError):
    """A request with a missing or malformed argument."""


class _LRU:
    def __init__(self, size):
        self.size = size
        self.items: collections.OrderedDict = collections.OrderedDict()
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        return None

    def put(self, key, value):
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)


def _float(x):
    x = float(x)
    return x if math.isfinite(x) else None


def clean_tag_part(name: str) -> str:
    """A layer path as `write_head_statistics` puts it in a tag (`:` and spaces -> `_`)."""
    return str(name).replace(":", "_").replace(" ", "_")


class Reader:
    """The plugin's data: kerastrace records and related scalars of one experiment."""

    def __init__(self, data_provider, downsample: int = MAX_POINTS):
        self._provider = data_provider
        self._downsample = downsample
        self._cache = _LRU(48)

    # ------------------------------------------------------------ listing
    def index(self, ctx, eid) -> dict:
        """`{"series": [{"run", "tag", "name", "kind", "max_step", "max_wall_time"}]}`."""
        mapping = self._provider.list_tensors(ctx, experiment_id=eid, plugin_name=fmt.PLUGIN_NAME)
        series = []
        for run in sorted(mapping, key=lambda r: (r is None, r or "")):
            for tag, ts in sorted(mapping[run].items()):
                kind = fmt.parse_content(ts.plugin_content).get("kind")
                if kind not in fmt.KINDS:
                    continue
                series.append({
                    "run": run if run is not None else ".",
                    "tag": tag,
                    "name": fmt.name_of(tag),
                    "kind": kind,
                    "max_step": int(ts.max_step),
                    "max_wall_time": float(ts.max_wall_time),
                })
        return {"series": series}

    def _kind(self, ctx, eid, run, tag) -> str:
        mapping = self._provider.list_tensors(
            ctx, experiment_id=eid, plugin_name=fmt.PLUGIN_NAME,
            run_tag_filter=provider.RunTagFilter(runs=[run], tags=[tag]),
        )
        ts = mapping.get(run, {}).get(tag)
        if ts is None:
            raise NotFound(f"no kerastrace data for run {run!r} and tag {tag!r}")
        return fmt.parse_content(ts.plugin_content).get("kind", "")

    def _data(self, ctx, eid, run, tag) -> list:
        """The retained `TensorDatum`s of one series, by step."""
        out = self._provider.read_tensors(
            ctx, experiment_id=eid, plugin_name=fmt.PLUGIN_NAME, downsample=self._downsample,
            run_tag_filter=provider.RunTagFilter(runs=[run], tags=[tag]),
        )
        data = out.get(run, {}).get(tag)
        if not data:
            raise NotFound(f"no kerastrace data for run {run!r} and tag {tag!r}")
        return sorted(data, key=lambda d: d.step)

    def steps(self, ctx, eid, run, tag) -> list:
        return [{"step": int(d.step), "wall_time": float(d.wall_time)}
                for d in self._data(ctx, eid, run, tag)]

    # ------------------------------------------------------------ records
    def _decode(self, run, tag, datum):
        key = (run, tag, int(datum.step), float(datum.wall_time))
        hit = self._cache.get(key)
        if hit is None:
            try:
                hit = fmt.decode(np.asarray(datum.numpy).ravel())
            except (ValueError, UnicodeDecodeError) as exc:
                raise NotFound(f"unreadable record at step {datum.step} of {tag!r}: {exc}") from None
            self._cache.put(key, hit)
        return hit

    def _pick(self, data, step):
        if step is None:
            return data[-1]
        for d in data:
            if d.step == step:
                return d
        raise NotFound(f"no record at step {step}; steps: {[d.step for d in data]}")

    def record(self, ctx, eid, run, tag, step=None) -> dict:
        """The payload of one record (latest step by default), blob left out."""
        kind = self._kind(ctx, eid, run, tag)
        datum = self._pick(self._data(ctx, eid, run, tag), step)
        payload, blob = self._decode(run, tag, datum)
        out = dict(payload)
        out.update(kind=kind, run=run, tag=tag, name=fmt.name_of(tag), step=int(datum.step),
                   wall_time=float(datum.wall_time), has_blob=blob is not None)
        return out

    def attention_weights(self, ctx, eid, run, tag, step, layer) -> dict:
        """`{"layer", "name", "heads", "weights": (H, T_q, T_k) nested lists}` of one layer."""
        datum = self._pick(self._data(ctx, eid, run, tag), step)
        payload, blob = self._decode(run, tag, datum)
        layers = payload.get("layers") or []
        if blob is None or not layers:
            raise NotFound(f"record {tag!r} at step {datum.step} holds no attention weights")
        if not 0 <= layer < len(layers):
            raise NotFound(f"no layer {layer}; the record has {len(layers)} layers")
        info = layers[layer]
        h, q, k = info["heads"], info["query_len"], info["key_len"]
        flat = np.frombuffer(blob, dtype="<f2")
        w = flat[info["offset"]: info["offset"] + h * q * k].astype(np.float32).reshape(h, q, k)
        return {"layer": layer, "name": info["name"], "heads": h, "step": int(datum.step),
                "weights": np.round(w, 4).tolist()}

    # ------------------------------------------------------------ scalars
    def _scalars(self, ctx, eid, run, wanted) -> dict:
        """`{tag: [(step, value)]}` of the scalar tags `wanted(tag)` accepts in `run`."""
        listing = self._provider.list_scalars(
            ctx, experiment_id=eid, plugin_name=SCALARS_PLUGIN,
            run_tag_filter=provider.RunTagFilter(runs=[run]),
        )
        tags = [t for t in listing.get(run, {}) if wanted(t)]
        if not tags:
            return {}
        out = self._provider.read_scalars(
            ctx, experiment_id=eid, plugin_name=SCALARS_PLUGIN, downsample=self._downsample,
            run_tag_filter=provider.RunTagFilter(runs=[run], tags=tags),
        )
        return {t: [(int(d.step), _float(d.value)) for d in sorted(pts, key=lambda d: d.step)]
                for t, pts in out.get(run, {}).items()}

    def head_statistics(self, ctx, eid, run, tag) -> dict:
        """Per-head statistics over the steps for an attention series.

        From the `"<stats_prefix>/<stat>/<layer>/head_<h>"` scalars when the
        records name a prefix and the run holds them, else from the records.
        Returns `{"layers", "source", "stats": {stat: [layer][head] -> [[step, value]]}}`.
        """
        data = self._data(ctx, eid, run, tag)
        records = [(int(d.step), self._decode(run, tag, d)[0]) for d in data]
        latest = records[-1][1]
        layers = [x["name"] for x in latest.get("layers", [])]
        heads = [x["heads"] for x in latest.get("layers", [])]
        prefix = latest.get("stats_prefix")
        stats: dict = {}
        source = "records"
        if prefix:
            lead = prefix.rstrip("/") + "/"
            found = self._scalars(ctx, eid, run, lambda t: t.startswith(lead))
            cleaned = {clean_tag_part(n): i for i, n in enumerate(layers)}
            for t, pts in found.items():
                stat, _, rest = t[len(lead):].partition("/")
                layer, _, head = rest.rpartition("/head_")
                if layer not in cleaned or not head.isdigit():
                    continue
                li, h = cleaned[layer], int(head)
                if h >= heads[li]:
                    continue
                table = stats.setdefault(stat, [[[] for _ in range(n)] for n in heads])
                table[li][h] = [[s, x] for s, x in pts]
            if stats:
                source = "scalars"
        if not stats:
            for step, payload in records:
                names = [x["name"] for x in payload.get("layers", [])]
                for stat, rows in (payload.get("stats") or {}).items():
                    table = stats.setdefault(stat, [[[] for _ in range(n)] for n in heads])
                    for name, row in zip(names, rows):
                        if row is None or name not in layers:
                            continue
                        li = layers.index(name)
                        for h, x in enumerate(row[: heads[li]]):
                            table[li][h].append([step, x])
        return {"run": run, "tag": tag, "layers": layers, "heads": heads, "source": source,
                "stats": stats}

    def gradient_flow(self, ctx, eid, run, tag) -> dict:
        """Per-layer gradient norms over the steps, with each layer's status.

        Returns `{"layers", "steps", "series": {layer: [[step, norm or null]]},
        "status": {layer: "ok"|"vanishing"|"exploding"}, "flagged": {layer:
        [[step, status]]}, "vanish_threshold", "explode_threshold", "source"}`.
        A norm that is not finite is null and counts as exploding.
        """
        data = self._data(ctx, eid, run, tag)
        records = [(int(d.step), self._decode(run, tag, d)[0]) for d in data]
        latest = records[-1][1]
        vanish = float(latest.get("vanish_threshold", 1e-7))
        explode = float(latest.get("explode_threshold", 1e3))
        layers: list = []
        series: dict = {}
        for step, payload in records:
            nonfinite = set(payload.get("nonfinite") or [])
            for layer, x in (payload.get("norms") or {}).items():
                if layer not in series:
                    layers.append(layer)
                    series[layer] = {}
                series[layer][step] = None if layer in nonfinite or x is None else _float(x)
        source = "records"
        prefix = latest.get("scalar_prefix")
        if prefix:
            lead = prefix.rstrip("/") + "/"
            found = self._scalars(ctx, eid, run, lambda t: t[len(lead):] in series
                                  if t.startswith(lead) else False)
            for t, pts in found.items():
                layer = t[len(lead):]
                for s, x in pts:
                    series[layer][s] = x
                source = "scalars+records"
        steps = sorted({s for pts in series.values() for s in pts})

        def status(x):
            if x is None or x > explode:
                return "exploding"
            return "vanishing" if x < vanish else "ok"

        out_series, flagged, current = {}, {}, {}
        for layer in layers:
            pts = sorted(series[layer].items())
            out_series[layer] = [[s, x] for s, x in pts]
            flagged[layer] = [[s, status(x)] for s, x in pts if status(x) != "ok"]
            current[layer] = status(pts[-1][1]) if pts else "ok"
        return {"run": run, "tag": tag, "layers": layers, "steps": steps, "series": out_series,
                "status": current, "flagged": flagged, "vanish_threshold": vanish,
                "explode_threshold": explode, "source": source}
