"""A real `tensorboard` server over kerastrace logs: its plugin, the Profile and Graphs tabs.

`TensorBoardServer` is shared with the browser tests (test_plugin_browser.py).
"""

import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import keras
import numpy as np
import pytest


def tensorboard_exe():
    exe = Path(sys.executable).parent / "tensorboard"
    return str(exe) if exe.exists() else shutil.which("tensorboard")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TensorBoardServer:
    """`tensorboard --logdir <logdir>` on a free loopback port, stopped on exit."""

    def __init__(self, logdir):
        self.logdir = str(logdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def __enter__(self):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        self.proc = subprocess.Popen(
            [tensorboard_exe(), "--logdir", self.logdir, "--host", "127.0.0.1",
             "--port", str(self.port), "--reload_interval", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
        )
        self.wait_for(lambda: self.json("/data/plugins_listing"), "the server to answer")
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.proc.stderr.close()

    def get(self, path):
        """`(status, headers, body bytes)`, gzip undone."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as resp:
                status, headers, body = resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            status, headers, body = err.code, dict(err.headers), err.read()
        if headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return status, headers, body

    def json(self, path):
        status, _, body = self.get(path)
        if status != 200:
            raise AssertionError(f"GET {path}: {status} {body[:500]!r}")
        return json.loads(body.decode("utf-8"))

    def wait_for(self, check, what, timeout=120):
        """Poll `check()` until it returns a truthy value (errors count as not yet)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"tensorboard exited: {self.proc.stderr.read().decode()[-3000:]}")
            try:
                value = check()
                if value:
                    return value
            except (OSError, AssertionError, KeyError, ValueError) as exc:
                last = exc
            time.sleep(0.5)
        pytest.fail(f"timed out waiting for {what} (last error: {last!r})")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A log directory with every kind of kerastrace record, a profile trace and a graph."""
    if tensorboard_exe() is None:
        pytest.fail("the tensorboard executable is not installed (a dependency of kerastrace)")
    from kerastrace.profiling import profile_model
    from kerastrace.tensorboard import (
        write_attention_data,
        write_attribution_data,
        write_gradient_flow_data,
        write_model_graph,
        write_profile_data,
    )

    logdir = tmp_path_factory.mktemp("tb")
    w = np.random.default_rng(0).dirichlet(np.ones(3), size=(1, 2, 3)).astype("float32")
    write_attention_data(logdir / "run_a", {"blk/attention": w}, ["x", "y", "z"], step=5)
    write_attribution_data(logdir / "run_a", {"ig": [0.5, -0.5, 0.0]}, ["x", "y", "z"])
    write_gradient_flow_data(logdir / "run_b", {"dense": 0.5}, step=0)
    write_gradient_flow_data(logdir / "run_b", {"dense": 1e-9}, step=1)
    inp = keras.Input((6,))
    model = keras.Model(inp, keras.layers.Dense(3, name="graph_dense")(inp), name="served")
    prof = profile_model(model, input_shape=(6,), logdir=str(logdir))
    write_profile_data(logdir, prof)
    write_model_graph(logdir / "graph", model, np.ones((1, 6), "float32"))
    with TensorBoardServer(logdir) as server:
        server.wait_for(lambda: server.json("/data/plugins_listing")["kerastrace"]["enabled"],
                        "the kerastrace plugin to be enabled")
        yield server, w


def test_plugin_is_listed_with_its_frontend_module(served):
    server, _ = served
    entry = server.json("/data/plugins_listing")["kerastrace"]
    assert entry["enabled"] is True and entry["tab_name"] == "kerastrace"
    assert entry["loading_mechanism"] == {
        "type": "IFRAME", "module_path": "/data/plugin/kerastrace/static/index.js"}
    status, _, body = server.get("/data/plugin_entry.html?name=kerastrace")
    assert status == 200 and b'import("./static/index.js")' in body
    status, headers, body = server.get("/data/plugin/kerastrace/static/attention.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert b"export async function mount" in body


def test_routes_return_the_logged_data(served):
    server, w = served
    index = server.wait_for(lambda: len(server.json("/data/plugin/kerastrace/index")["series"])
                            == 4 and server.json("/data/plugin/kerastrace/index"),
                            "every record to be loaded")
    kinds = {(s["run"], s["kind"]) for s in index["series"]}
    assert kinds == {("run_a", "attention"), ("run_a", "attribution"),
                     ("run_b", "gradient_flow"), (".", "profile")}
    rec = server.json("/data/plugin/kerastrace/record?run=run_a&tag=kerastrace/attention")
    assert rec["step"] == 5 and rec["tokens"] == ["x", "y", "z"]
    got = server.json("/data/plugin/kerastrace/attention_weights?run=run_a"
                      "&tag=kerastrace/attention&layer=0")
    np.testing.assert_allclose(got["weights"], w[0], atol=2e-3)
    attr = server.json("/data/plugin/kerastrace/record?run=run_a&tag=kerastrace/attributions")
    assert attr["examples"][0]["scores"]["ig"] == [0.5, -0.5, 0.0]
    flow = server.json("/data/plugin/kerastrace/gradient_flow?run=run_b"
                       "&tag=kerastrace/gradient_flow")
    assert flow["series"]["dense"] == [[0, 0.5], [1, 1e-9]]
    assert flow["status"] == {"dense": "vanishing"}
    prof = server.json("/data/plugin/kerastrace/record?run=.&tag=kerastrace/profile")
    assert prof["model_name"] == "served"
    assert [r["path"] for r in prof["layers"]] == ["", "graph_dense"]
    status, _, body = server.get("/data/plugin/kerastrace/record?run=run_a&tag=nothing")
    assert status == 404 and "no kerastrace data" in json.loads(body)["error"]


def test_profile_plugin_lists_the_trace_and_its_tools(served):
    server, _ = served
    runs = server.wait_for(lambda: server.json("/data/plugin/profile/runs"),
                           "the profile plugin to list the trace")
    assert len(runs) == 1
    tools = server.json(f"/data/plugin/profile/run_tools?run={runs[0]}")
    assert {"overview_page", "op_profile", "memory_profile"} <= set(tools)
    assert any(t.startswith("trace_viewer") for t in tools)
    assert server.json("/data/plugins_listing")["profile"]["enabled"] is True


def test_graphs_tab_reads_the_model_graph(served):
    server, _ = served
    info = server.wait_for(lambda: server.json("/data/plugin/graphs/info").get("graph"),
                           "the graph run")
    assert info["run_graph"] is True
    status, _, body = server.get("/data/plugin/graphs/graph?run=graph&conceptual=false")
    assert status == 200 and b"graph_dense" in body and b'op: "MatMul"' in body
