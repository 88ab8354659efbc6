"""Result objects of `profile_model`: `LayerProfile` rows and the `ModelProfile` table."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from typing import Any

from kerastrace._utils import validation as v

FLOPS_CONVENTION = (
    "Conventions (forward pass): FLOPs = every floating-point operation, one "
    "multiply-accumulate = 2 FLOPs. MACs = multiply-accumulates of MatMul, BatchMatMul, "
    "convolutions and Einsum contractions only (the 'multiply-adds' of published model "
    "figures). Elem FLOPs = all other FLOPs (bias adds, activations, normalization, pooling, "
    "reductions: one per element; softmax: 5 per element). FLOPs = 2 x MACs + Elem FLOPs."
)

_SORT_KEYS = {
    "path": ("path", False),
    "flops": ("flops", True),
    "self_flops": ("self_flops", True),
    "macs": ("macs", True),
    "self_macs": ("self_macs", True),
    "elementwise_flops": ("elementwise_flops", True),
    "params": ("params", True),
    "self_params": ("self_params", True),
    "output_bytes": ("output_bytes", True),
    "time": ("time_ms", True),
    "time_ms": ("time_ms", True),
    "self_time": ("self_time_ms", True),
    "self_time_ms": ("self_time_ms", True),
    "share": ("time_share", True),
}


@dataclasses.dataclass
class LayerProfile:
    """One layer of a `ModelProfile`.

    Totals (`params`, `flops`, `time_ms`) include the layer's sublayers; the
    `self_*` values count only what the layer does outside its sublayers, so
    summing `self_*` over all rows counts everything exactly once.

    Attributes:
        path: The layer's path in kerastrace's one path scheme: layer names
            joined by `/` without the model's name, e.g. `"block/attention"`
            (`kerastrace._utils.instrument.walk`); `""` for the model itself.
        class_name: The layer's class name.
        depth: 0 for the model, 1 for its layers, 2 for their sublayers, ...
        output_shape: Output shape(s) of the first call, batch included.
        trainable_params: Trainable parameters (sublayers included).
        non_trainable_params: Non-trainable parameters (sublayers included).
        self_params: Parameters owned by the layer itself.
        param_bytes: Bytes of the parameters (sublayers included).
        flops: Forward FLOPs (sublayers included) at the profiled batch size:
            every floating-point operation, one multiply-accumulate = 2 FLOPs.
        self_flops: Forward FLOPs of the layer's own ops.
        macs: Multiply-accumulates (sublayers included) of the MAC ops only:
            MatMul, BatchMatMul, convolutions and Einsum contractions. The
            remaining FLOPs are `elementwise_flops`
            (`flops == 2 * macs + elementwise_flops`).
        self_macs: Multiply-accumulates of the layer's own ops.
        uncounted_ops: Floating-point ops (sublayers included) without a
            FLOP count, left out of `flops`: when not 0, `flops` is a lower
            bound (see `ModelProfile.uncounted_details`).
        output_bytes: Bytes of the layer's outputs over all its calls.
        calls: How many times the layer is called in one forward pass.
        time_ms: Measured op time per step (sublayers included), `None` when not traced.
        self_time_ms: Measured time of the layer's own ops per step.
        time_share: `time_ms` over the whole traced op time.
        name: The layer's name (the model's name for the root row); by
            default the last part of `path`.
    """

    path: str
    class_name: str
    depth: int
    output_shape: Any
    trainable_params: int
    non_trainable_params: int
    self_params: int
    param_bytes: int
    flops: int
    self_flops: int
    macs: int
    self_macs: int
    uncounted_ops: int
    output_bytes: int
    calls: int
    time_ms: float | None = None
    self_time_ms: float | None = None
    time_share: float | None = None
    name: str = ""

    def __post_init__(self):
        if not self.name:
            self.name = self.path.rsplit("/", 1)[-1]

    @property
    def label(self) -> str:
        """The path, or the model's name for the root row (whose path is `""`)."""
        return self.path or self.name

    @property
    def params(self) -> int:
        return self.trainable_params + self.non_trainable_params

    @property
    def elementwise_flops(self) -> int:
        """FLOPs of the ops that are not multiply-accumulates: `flops - 2 * macs`."""
        return self.flops - 2 * self.macs

    @property
    def self_elementwise_flops(self) -> int:
        """`self_flops - 2 * self_macs`."""
        return self.self_flops - 2 * self.self_macs

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["params"] = self.params
        d["elementwise_flops"] = self.elementwise_flops
        d["self_elementwise_flops"] = self.self_elementwise_flops
        return d


def _human(n, unit="") -> str:
    if n is None:
        return "n/a"
    n = float(n)
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}" if n == int(n) else f"{n:.2f}{unit}"


def _bytes(n) -> str:
    if n is None:
        return "n/a"
    for suffix, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {suffix}"
    return f"{int(n)} B"


def _shape(s) -> str:
    if s is None:
        return ""
    if isinstance(s, tuple) and all(isinstance(d, (int, type(None))) for d in s):
        return "(" + ", ".join("None" if d is None else str(d) for d in s) + ")"
    if isinstance(s, (list, tuple)):
        return "[" + ", ".join(_shape(x) for x in s) + "]"
    if isinstance(s, dict):
        return "{" + ", ".join(f"{k}: {_shape(x)}" for k, x in s.items()) + "}"
    return str(s)


@dataclasses.dataclass
class ModelProfile:
    """Per-layer parameters, FLOPs, memory and measured time of a Keras model.

    Rows are in model order (depth first). Everything the profiler measured
    but could not tie to a layer is kept in `unassigned_flops` and
    `unassigned_time_ms`, shown in the table footer and in the exports.

    Attributes:
        model_name: The model's name.
        batch_size: Batch size of the profiled forward pass.
        input_shapes: Shapes of the inputs that were profiled: a list (one per
            input, in the model's order), or a dict by name for dict inputs.
        layers: The `LayerProfile` rows; `layers[0]` is the model itself
            (path `""`, named after the model).
        total_flops: Forward FLOPs of the whole traced graph (one
            multiply-accumulate = 2 FLOPs).
        unassigned_flops: FLOPs of ops outside every layer's name scope.
        total_macs: Multiply-accumulates of the MAC ops (MatMul,
            BatchMatMul, convolutions, Einsum contractions) of the whole graph.
        unassigned_macs: Multiply-accumulates outside every layer's name scope.
        total_params: `model.count_params()`.
        trainable_params: Trainable parameters.
        non_trainable_params: Non-trainable parameters.
        param_bytes: Bytes of all parameters.
        activation_bytes: Sum of the output bytes of the leaf layers.
        uncounted_ops: Op type -> number of floating-point ops with no FLOP
            count (left out of the totals).
        uncounted_details: One dict per such op: `name` (the graph op),
            `type`, `layer` (its row's path, None outside every layer) and
            `reason`.
        counted_by_kerastrace: Op type -> number of ops counted by kerastrace
            because the TF profiler registry has no count for them (e.g. `Einsum`).
        time_available: Whether the measured-time columns are filled.
        time_note: Why time is unavailable (or where it came from).
        total_time_ms: Traced op time per step.
        unassigned_time_ms: Traced op time per step outside every layer.
        assigned_time_share: Share of the traced op time assigned to a layer.
        step_time_ms: Wall time of a traced step (mean), `None` if not traced.
        trace_dir: Folder holding the trace (TensorBoard profile plugin run).
        peak_memory_bytes: Peak device memory during the profiled steps, when reported.
        memory_note: What the device said about memory.
        flops_convention: How FLOPs are counted.
    """

    model_name: str
    batch_size: int
    input_shapes: list
    layers: list[LayerProfile]
    total_flops: int
    unassigned_flops: int
    total_macs: int
    unassigned_macs: int
    total_params: int
    trainable_params: int
    non_trainable_params: int
    param_bytes: int
    activation_bytes: int
    uncounted_ops: dict = dataclasses.field(default_factory=dict)
    uncounted_details: list = dataclasses.field(default_factory=list)
    counted_by_kerastrace: dict = dataclasses.field(default_factory=dict)
    time_available: bool = False
    time_note: str = ""
    total_time_ms: float | None = None
    unassigned_time_ms: float | None = None
    assigned_time_share: float | None = None
    step_time_ms: float | None = None
    trace_dir: str | None = None
    peak_memory_bytes: int | None = None
    memory_note: str = ""
    flops_convention: str = FLOPS_CONVENTION

    # ------------------------------------------------------------------ access
    @property
    def total_elementwise_flops(self) -> int:
        """FLOPs that are not multiply-accumulates: `total_flops - 2 * total_macs`."""
        return self.total_flops - 2 * self.total_macs

    @property
    def unassigned_elementwise_flops(self) -> int:
        return self.unassigned_flops - 2 * self.unassigned_macs

    def __getitem__(self, path_or_name: str) -> LayerProfile:
        """Row by path (`"block/attention"`, `""` for the model) or by unique layer name.

        Paths follow kerastrace's one path scheme: without the model's name.
        The model's own row is also found by the model's name.
        """
        if not isinstance(path_or_name, str):
            raise TypeError(
                "Received an invalid value for argument `path_or_name`, expected a layer "
                f"path or name (str). Received: path_or_name={path_or_name!r}"
            )
        for row in self.layers:
            if row.path == path_or_name:
                return row
        matches = [r for r in self.layers if r.name == path_or_name]
        if len(matches) == 1:
            return matches[0]
        paths = [r.path for r in self.layers if r.path]
        if len(matches) > 1:
            hint = f"several layers are named {path_or_name!r}; use a path: " + str(
                [r.label for r in matches]
            )
        elif path_or_name.startswith(self.model_name + "/"):
            hint = (
                "paths do not start with the model's name; use "
                f"{path_or_name[len(self.model_name) + 1:]!r}"
            )
        else:
            more = "" if len(paths) <= 20 else f" ... ({len(paths)} in all)"
            hint = f"paths: {paths[:20]}{more}"
        raise KeyError(f"No single layer {path_or_name!r} in this profile; {hint}")

    def fold(self, depth: int) -> ModelProfile:
        """A copy where layers deeper than `depth` are folded into their ancestor.

        The folded ancestor's `self_*` values absorb its descendants', so totals
        and sums are unchanged. `depth=0` keeps only the model's own row.
        """
        depth = v.check_non_negative_int("depth", depth)
        rows = {r.path: dataclasses.replace(r) for r in self.layers}
        kept = []
        for r in self.layers:
            if r.depth <= depth:
                kept.append(rows[r.path])
                continue
            anc = rows["/".join(r.path.split("/")[:depth])]  # "" is the model's row
            anc.self_params += r.self_params
            anc.self_flops += r.self_flops
            anc.self_macs += r.self_macs
            if anc.self_time_ms is not None and r.self_time_ms is not None:
                anc.self_time_ms += r.self_time_ms
        return dataclasses.replace(self, layers=kept)

    # ------------------------------------------------------------------ export
    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["layers"] = [r.to_dict() for r in self.layers]
        d["total_elementwise_flops"] = self.total_elementwise_flops
        return d

    def to_json(self, path: str | None = None, indent: int | None = 2) -> str:
        """The profile as JSON (written to `path` when given); returns the text."""
        text = json.dumps(self.to_dict(), indent=indent, default=_json_default)
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text

    _CSV_FIELDS = (
        "path class_name name depth output_shape trainable_params non_trainable_params self_params "
        "param_bytes flops self_flops macs self_macs elementwise_flops self_elementwise_flops "
        "uncounted_ops output_bytes calls time_ms self_time_ms time_share"
    ).split()

    def to_csv(self, path: str | None = None) -> str:
        """One CSV row per layer plus an `(unassigned)` row; returns the text."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self._CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for r in self.layers:
            d = r.to_dict()
            d["output_shape"] = _shape(d["output_shape"])
            writer.writerow({k: d[k] for k in self._CSV_FIELDS})
        writer.writerow(
            {
                "path": "(unassigned)",
                "flops": self.unassigned_flops,
                "self_flops": self.unassigned_flops,
                "macs": self.unassigned_macs,
                "self_macs": self.unassigned_macs,
                "elementwise_flops": self.unassigned_elementwise_flops,
                "self_elementwise_flops": self.unassigned_elementwise_flops,
                "time_ms": self.unassigned_time_ms,
                "self_time_ms": self.unassigned_time_ms,
            }
        )
        text = buf.getvalue()
        if path is not None:
            with open(path, "w", newline="") as f:
                f.write(text)
        return text

    def to_table(self, sort_by: str | None = None, top_k: int | None = None) -> str:
        """A readable text table.

        Args:
            sort_by: `None` (model order, indented tree) or one of `"flops"`,
                `"self_flops"`, `"macs"`, `"self_macs"`, `"elementwise_flops"`,
                `"params"`, `"self_params"`,
                `"output_bytes"`, `"time"`, `"self_time"`, `"share"`, `"path"`.
            top_k: Show only the first `top_k` rows (after sorting).

        Returns:
            The table as a string, with totals, the unassigned part and notes.
        """
        rows = list(self.layers)
        if sort_by is not None:
            v.check_one_of("sort_by", sort_by, set(_SORT_KEYS))
            attr, desc = _SORT_KEYS[sort_by]

            def key(r):
                val = getattr(r, attr)
                if val is None:
                    return (1, 0)
                return (0, -val if desc else val)

            rows.sort(key=key)
        if top_k is not None:
            rows = rows[: v.check_positive_int("top_k", top_k)]
        header = [
            "Layer", "Class", "Output shape", "Params", "Non-train", "FLOPs", "Self FLOPs",
            "MACs", "Elem FLOPs", "Out bytes", "Self ms", "Total ms", "Share",
        ]  # fmt: skip
        body = []
        for r in rows:
            label = ("  " * r.depth + r.name) if sort_by is None else r.label
            body.append(
                [
                    label,
                    r.class_name,
                    _clip(_shape(r.output_shape), 40),
                    _human(r.params),
                    _human(r.non_trainable_params),
                    _human(r.flops) + ("*" if r.uncounted_ops else ""),
                    _human(r.self_flops),
                    _human(r.macs),
                    _human(r.elementwise_flops),
                    _bytes(r.output_bytes),
                    "n/a" if r.self_time_ms is None else f"{r.self_time_ms:.3f}",
                    "n/a" if r.time_ms is None else f"{r.time_ms:.3f}",
                    "n/a" if r.time_share is None else f"{100 * r.time_share:.1f}%",
                ]
            )
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in
                  enumerate(header)]  # fmt: skip

        def fmt(cells):
            out = []
            for i, (c, w) in enumerate(zip(cells, widths)):
                out.append(c.ljust(w) if i < 3 else c.rjust(w))
            return "  ".join(out).rstrip()

        lines = [f"Model profile: {self.model_name} (batch size {self.batch_size}, inputs "
                 f"{_shape(self.input_shapes)})", fmt(header), "-" * len(fmt(header))]  # fmt: skip
        lines += [fmt(b) for b in body]
        lines.append("-" * len(fmt(header)))
        lines.append(
            f"Total: {_human(self.total_params)} params ({_human(self.trainable_params)} "
            f"trainable, {_bytes(self.param_bytes)}), {_human(self.total_flops)} FLOPs = 2 x "
            f"{_human(self.total_macs)} MACs + {_human(self.total_elementwise_flops)} "
            f"element-wise FLOPs, activations {_bytes(self.activation_bytes)}"
        )
        lines.append(
            f"Unassigned FLOPs (ops outside any layer): {_human(self.unassigned_flops)} "
            f"({_human(self.unassigned_macs)} MACs)"
        )
        if self.time_available:
            lines.append(
                f"Traced op time per step: {self.total_time_ms:.3f} ms, unassigned "
                f"{self.unassigned_time_ms:.3f} ms ({100 * self.assigned_time_share:.1f}% "
                f"assigned to layers); step wall time {_fmt_ms(self.step_time_ms)}"
            )
        else:
            lines.append(f"Measured time: unavailable ({self.time_note})")
        if self.trace_dir:
            lines.append(f"Trace (TensorBoard profile plugin): {self.trace_dir}")
        peak = _bytes(self.peak_memory_bytes) if self.peak_memory_bytes is not None else "n/a"
        lines.append(f"Peak device memory: {peak} ({self.memory_note})")
        if self.counted_by_kerastrace:
            lines.append(
                "Counted by kerastrace (no TF profiler count): "
                + ", ".join(f"{k} x{n}" for k, n in sorted(self.counted_by_kerastrace.items()))
            )
        lines += self._uncounted_lines()
        lines.append(self.flops_convention)
        return "\n".join(lines)

    def _uncounted_lines(self) -> list[str]:
        """The footer lines that list every op without a FLOP count, grouped by type and reason."""
        if not self.uncounted_details:
            return []
        groups: dict = {}
        for u in self.uncounted_details:
            groups.setdefault((u["type"], u["reason"]), []).append(u["layer"])
        lines = [
            f"* Ops without a FLOP count ({len(self.uncounted_details)}, left out of the FLOPs "
            "and MACs; marked rows are lower bounds):"
        ]
        for (op_type, reason), layers in sorted(groups.items()):
            where = sorted({"(unassigned)" if p is None else (p or self.model_name)
                            for p in layers})  # fmt: skip
            more = "" if len(where) <= 4 else f", ... ({len(where)} layers)"
            lines.append(f"  {op_type} x{len(layers)} in {', '.join(where[:4])}{more}: {reason}")
        return lines

    def __str__(self) -> str:
        return self.to_table()

    def __repr__(self) -> str:
        return (
            f"ModelProfile(model_name={self.model_name!r}, layers={len(self.layers)}, "
            f"total_params={self.total_params}, total_flops={self.total_flops}, "
            f"time_available={self.time_available})"
        )

    # ------------------------------------------------------------------ pictures
    def plot(self, ax=None, top_k: int = 20, depth: int | None = None, sort_by: str | None = None):
        """Bar chart of each layer's share of the FLOPs and of the measured time.

        Sublayers are folded into their parent: each bar is a layer with
        everything inside it (an attention layer with its dropout), so no
        layer is left out and nothing is counted twice; ops outside every
        layer are one more bar, and layers with neither FLOPs nor time are
        left out (`kerastrace.visualization.plot_profile`).

        Args:
            ax: Matplotlib axes to draw on; a new figure when `None`.
            top_k: Number of layers shown (largest first).
            depth: Show the layers at this depth (1: the model's own layers),
                deeper ones folded into them. Default: the deepest depth at
                which at most `top_k` rows have FLOPs or time (a layer whose
                sublayers hold less than half of its total stays whole).
            sort_by: `"time_ms"` or `"flops"`; default: time when measured.

        Returns:
            `(fig, ax)`.
        """
        from kerastrace.visualization import plot_profile

        what = "FLOPs and time" if self.time_available and self.total_time_ms else "FLOPs"
        title = _literal(f"{self.model_name}: {what} per layer (batch {self.batch_size})")
        return plot_profile(self, ax, top_k=top_k, sort_by=sort_by, depth=depth, title=title)

    def to_tensorboard(self, logdir: str, step: int = 0) -> str:
        """Write the table (text summary), the chart (image summary) and the data of the
        kerastrace dashboard's profile view (sortable, collapsible) to `logdir`.

        The trace captured by `profile_model(..., logdir=logdir)` is already in
        `logdir/plugins/profile/`, so TensorBoard's Profile tab shows it too.

        Returns:
            `logdir`.
        """
        import tensorflow as tf

        from kerastrace._utils.lazy import pyplot

        fig, _ = self.plot()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
        pyplot().close(fig)
        image = tf.image.decode_png(buf.getvalue(), channels=4)[None]
        writer = tf.summary.create_file_writer(logdir)
        with writer.as_default():
            text = "\n".join("    " + line for line in self.to_table().splitlines())
            tf.summary.text("kerastrace/profile_table", text, step=step)
            tf.summary.image("kerastrace/profile_chart", image, step=step)
        writer.flush()
        from kerastrace.tensorboard import write_profile_data

        write_profile_data(writer, self, step=step)  # the kerastrace dashboard's profile view
        writer.close()
        return logdir


def _literal(text: str) -> str:
    """`text` drawn by matplotlib as is: `$` escaped so that no mathtext is parsed."""
    return str(text).replace("$", r"\$")


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _fmt_ms(x):
    return "n/a" if x is None else f"{x:.3f} ms"


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, tuple):
        return list(o)
    return str(o)
