"""Capture a `tf.profiler.experimental` trace and read per-op times from it."""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import logging
import os
import re

import tensorflow as tf

from kerastrace._utils import tf_compat

logger = logging.getLogger("kerastrace.profiling")


_OP_EVENT = re.compile(r"^[^\s:]+:[A-Za-z_]\w*$")


def _is_op_event(name: str, op_names) -> bool:
    return name.rsplit(":", 1)[0] in op_names or bool(_OP_EVENT.match(name))


class ProfilerBusyError(RuntimeError):
    """A `tf.profiler` session is already running in this process."""


def profiler_running() -> bool:
    """Whether a `tf.profiler.experimental` session is active in this process."""
    return tf_compat.profiler_session_active()


def busy_error() -> ProfilerBusyError:
    return ProfilerBusyError(
        "A TensorFlow profiler session is already running in this process (started with "
        "`tf.profiler.experimental.start` or a TensorBoard callback with `profile_batch`). "
        "Stop it with `tf.profiler.experimental.stop()` first, or pass `trace=False` to "
        "profile FLOPs, parameters and memory without measured time."
    )


@dataclasses.dataclass
class TraceResult:
    run_dir: str
    op_time_ps: dict  # op name -> total duration (ps) over all profiled steps
    steps: int
    step_time_ps: list  # wall time of each profiled step
    source: str  # "host" or "device"


def parse_xplane(path: str, op_names) -> tuple[dict, list, str]:
    """Read op events of the graph ops in `op_names` from an `.xplane.pb` file.

    Host op events are named `"<op name>:<op type>"`; device (GPU) kernel events
    carry the op in their `tf_op` stat. Device events are used when present.

    Returns:
        `(op_time_ps, step_time_ps, source)`.
    """
    space = tf_compat.xplane_pb2().XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    host = collections.Counter()
    device = collections.Counter()
    steps = []
    for plane in space.planes:
        is_device = plane.name.startswith("/device:") and "CPU" not in plane.name
        stat_names = {k: v.name for k, v in plane.stat_metadata.items()}
        for line in plane.lines:
            for ev in line.events:
                md = plane.event_metadata[ev.metadata_id]
                name = md.name
                if is_device:
                    tf_op = None
                    for s in list(ev.stats) + list(md.stats):
                        if stat_names.get(s.metadata_id) == "tf_op":
                            tf_op = s.str_value or (
                                plane.stat_metadata[s.ref_value].name if s.ref_value else None
                            )
                            break
                    if tf_op:
                        device[tf_op.split(":")[0]] += ev.duration_ps
                    continue
                if name == "kerastrace_step":
                    steps.append(ev.duration_ps)
                    continue
                if ":" in name and _is_op_event(name, op_names):
                    host[name.rsplit(":", 1)[0]] += ev.duration_ps
    if device:
        return dict(device), steps, "device"
    return dict(host), steps, "host"


def parse_trace_json(path: str, op_names) -> tuple[dict, list, str]:
    """Fallback reader for a `.trace.json.gz` file (Chrome trace format)."""
    with gzip.open(path, "rt") as f:
        data = json.load(f)
    host = collections.Counter()
    steps = []
    for ev in data.get("traceEvents", []):
        name = ev.get("name", "")
        dur_ps = int(float(ev.get("dur", 0)) * 1e6)
        if name == "kerastrace_step":
            steps.append(dur_ps)
        elif ":" in name and _is_op_event(name, op_names):
            host[name.rsplit(":", 1)[0]] += dur_ps
    return dict(host), steps, "host"


def capture(run_step, logdir: str, op_names, warmup: int, steps: int) -> TraceResult:
    """Run `run_step` `warmup` times, then trace `steps` more calls into `logdir`.

    The trace lands in `logdir/plugins/profile/<run>/`, where TensorBoard's
    profile plugin finds it.

    Raises:
        ProfilerBusyError: when a profiler session is already running.
        RuntimeError: when the trace produced no readable file.
    """
    for _ in range(warmup):
        run_step()
    if profiler_running():
        raise busy_error()
    profile_root = os.path.join(logdir, "plugins", "profile")
    before = set(glob.glob(os.path.join(profile_root, "*")))
    try:
        tf.profiler.experimental.start(logdir)
    except (tf.errors.AlreadyExistsError, tf.errors.UnavailableError) as exc:
        raise busy_error() from exc
    try:
        for i in range(steps):
            with tf_compat.step_trace("kerastrace_step", i):
                run_step()
    finally:
        tf.profiler.experimental.stop()
    runs = sorted(set(glob.glob(os.path.join(profile_root, "*"))) - before, key=os.path.getmtime)
    if not runs:
        runs = sorted(glob.glob(os.path.join(profile_root, "*")), key=os.path.getmtime)
    if not runs:
        raise RuntimeError(f"The profiler wrote no trace under {profile_root!r}.")
    run_dir = runs[-1]
    planes = glob.glob(os.path.join(run_dir, "*.xplane.pb"))
    jsons = glob.glob(os.path.join(run_dir, "*.trace.json.gz"))
    if planes:
        op_time, step_time, source = parse_xplane(planes[0], op_names)
    elif jsons:
        op_time, step_time, source = parse_trace_json(jsons[0], op_names)
    else:
        raise RuntimeError(f"No `.xplane.pb` or `.trace.json.gz` file in {run_dir!r}.")
    if not op_time:
        raise RuntimeError(f"The trace in {run_dir!r} holds no event of the model's ops.")
    return TraceResult(run_dir, op_time, steps, step_time, source)
