"""The kerastrace TensorBoard plugin in-process: its HTTP routes return the logged data."""

import importlib.metadata
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import data_provider as dp
from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
from tensorboard.plugins import base_plugin
from werkzeug.test import Client

from kerastrace.attention import head_statistics
from kerastrace.tensorboard import (
    write_attention_data,
    write_attribution_data,
    write_gradient_flow_data,
    write_head_statistics,
)
from kerastrace.tensorboard.plugin import KerastracePlugin
from kerastrace.tensorboard.plugin._plugin import STATIC_DIR


def make_plugin(logdir):
    mux = pem.EventMultiplexer(tensor_size_guidance={"kerastrace": 0, "scalars": 0})
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = dp.MultiplexerDataProvider(mux, str(logdir))
    return KerastracePlugin(base_plugin.TBContext(logdir=str(logdir), data_provider=provider))


class Routes:
    """A WSGI client over the plugin's routes, with TensorBoard's prefix routing."""

    def __init__(self, plugin):
        apps = plugin.get_plugin_apps()

        def app(environ, start_response):
            path = environ["PATH_INFO"]
            for route, handler in apps.items():
                if route.endswith("/*") and path.startswith(route[:-1]) or route == path:
                    return handler(environ, start_response)
            start_response("404 NOT FOUND", [("Content-Type", "text/plain")])
            return [b"no route"]

        self.client = Client(app)

    def get(self, path, **params):
        return self.client.get(path, query_string=params)

    def json(self, path, **params):
        resp = self.get(path, **params)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return json.loads(resp.get_data(as_text=True))


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


@pytest.fixture
def logdir(tmp_path):
    """A log directory with attention over 3 steps, attributions and gradient flow."""
    rng = np.random.default_rng(0)
    mon = tmp_path / "monitor"
    weights = []
    for step in range(3):
        w = {"block_0/attention": softmax(rng.normal(size=(1, 2, 4, 4))).astype("float32"),
             "block_1/attention": softmax(rng.normal(size=(1, 2, 4, 4))).astype("float32")}
        weights.append(w)
        stats = head_statistics(w)
        write_head_statistics(mon, stats, step=step)
        write_attention_data(mon, w, ["[CLS]", "a", "b", "[SEP]"], step=step, stats=stats,
                             stats_prefix="heads", special=[0, 3])
    write_attribution_data(tmp_path, {"ig": [[0.0, 0.5, -0.5, 0.0]], "lime": [[0, 1.0, 2.0, 0]]},
                           [["[CLS]", "a", "b", "[SEP]"]], probabilities=[[0.25, 0.75]])
    grad = tmp_path / "grad"
    norms = [{"dense": 0.5, "head": 2.0}, {"dense": 1e-9, "head": 3.0},
             {"dense": 1e-3, "head": float("inf")}]
    for step, n in enumerate(norms):
        write_gradient_flow_data(grad, n, step=step, vanish_threshold=1e-7,
                                 explode_threshold=100.0)
    with tf.summary.create_file_writer(str(grad)).as_default():  # GradientFlow's scalars,
        for step in range(3, 5):  # here for steps the records do not have
            tf.summary.scalar("gradient_norm/dense", 0.25 * step, step=step)
    return tmp_path, weights


def test_index_record_and_weights_routes(logdir):
    path, weights = logdir
    r = Routes(make_plugin(path))
    series = {(s["run"], s["tag"]): s for s in r.json("/index")["series"]}
    assert set(series) == {("monitor", "kerastrace/attention"), (".", "kerastrace/attributions"),
                           ("grad", "kerastrace/gradient_flow")}
    att = series["monitor", "kerastrace/attention"]
    assert (att["kind"], att["name"], att["max_step"]) == ("attention", "attention", 2)
    assert [s["step"] for s in r.json("/steps", run="monitor", tag="kerastrace/attention")] == [
        0, 1, 2]
    latest = r.json("/record", run="monitor", tag="kerastrace/attention")
    assert latest["step"] == 2 and latest["tokens"] == ["[CLS]", "a", "b", "[SEP]"]
    assert latest["special"] == [True, False, False, True] and latest["has_blob"] is True
    first = r.json("/record", run="monitor", tag="kerastrace/attention", step=0)
    assert first["step"] == 0
    for step in (0, 2):
        got = r.json("/attention_weights", run="monitor", tag="kerastrace/attention", step=step,
                     layer=1)
        assert got["name"] == "block_1/attention" and got["heads"] == 2
        np.testing.assert_allclose(got["weights"], weights[step]["block_1/attention"][0],
                                   atol=2e-3)
    attr = r.json("/record", run=".", tag="kerastrace/attributions")
    assert attr["kind"] == "attribution" and attr["methods"] == ["ig", "lime"]
    assert attr["examples"][0]["scores"]["lime"] == [0.0, 1.0, 2.0, 0.0]
    assert attr["examples"][0]["predicted"] == 1


def test_head_statistics_route_reads_the_scalars(logdir):
    path, weights = logdir
    r = Routes(make_plugin(path))
    got = r.json("/head_statistics", run="monitor", tag="kerastrace/attention")
    assert got["source"] == "scalars" and got["layers"] == ["block_0/attention",
                                                            "block_1/attention"]
    for stat in ("entropy", "distance"):
        for li in range(len(got["layers"])):
            for h in range(2):
                expect = [getattr(head_statistics(w), stat)[li, h] for w in weights]
                pts = got["stats"][stat][li][h]
                assert [s for s, _ in pts] == [0, 1, 2]
                np.testing.assert_allclose([x for _, x in pts], expect, rtol=1e-5)


def test_gradient_flow_route_flags_vanishing_and_exploding(logdir):
    path, _ = logdir
    got = Routes(make_plugin(path)).json("/gradient_flow", run="grad",
                                         tag="kerastrace/gradient_flow")
    assert got["layers"] == ["dense", "head"] and got["steps"] == [0, 1, 2, 3, 4]
    assert got["series"]["dense"] == [[0, 0.5], [1, 1e-9], [2, 1e-3], [3, 0.75], [4, 1.0]]
    assert got["series"]["head"] == [[0, 2.0], [1, 3.0], [2, None]]  # inf: not finite
    assert got["flagged"] == {"dense": [[1, "vanishing"]], "head": [[2, "exploding"]]}
    assert got["status"] == {"dense": "ok", "head": "exploding"}
    assert (got["vanish_threshold"], got["explode_threshold"]) == (1e-7, 100.0)


def test_bad_requests_answer_json_errors(logdir):
    path, _ = logdir
    r = Routes(make_plugin(path))
    cases = [
        ("/record", {"tag": "kerastrace/attention"}, 400, "missing query argument 'run'"),
        ("/record", {"run": "monitor", "tag": "kerastrace/nothing"}, 404, "no kerastrace data"),
        ("/record", {"run": "monitor", "tag": "kerastrace/attention", "step": "x"}, 400,
         "must be an integer"),
        ("/record", {"run": "monitor", "tag": "kerastrace/attention", "step": 7}, 404,
         "no record at step 7; steps: [0, 1, 2]"),
        ("/attention_weights", {"run": "monitor", "tag": "kerastrace/attention", "layer": 5},
         404, "no layer 5"),
        ("/attention_weights", {"run": "monitor", "tag": "kerastrace/attention"}, 400,
         "'layer'"),
    ]
    for route, params, code, text in cases:
        resp = r.get(route, **params)
        assert resp.status_code == code, (route, params, resp.get_data(as_text=True))
        assert text in json.loads(resp.get_data(as_text=True))["error"]


def test_static_frontend_is_served_and_complete(tmp_path):
    r = Routes(make_plugin(tmp_path))
    plugin = make_plugin(tmp_path)
    meta = plugin.frontend_metadata()
    assert meta.es_module_path == "/static/index.js" and meta.tab_name == "kerastrace"
    resp = r.get("/static/index.js")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/javascript")
    assert "export async function render()" in resp.get_data(as_text=True)
    assert r.get("/static/style.css").headers["Content-Type"].startswith("text/css")
    for bad in ("/static/../_plugin.py", "/static/missing.js", "/static/"):
        assert r.get(bad).status_code == 404, bad
    # Every module the frontend imports is shipped, and nothing is fetched from elsewhere.
    files = sorted(os.listdir(STATIC_DIR))
    for name in files:
        source = open(os.path.join(STATIC_DIR, name), encoding="utf-8").read()
        for target in re.findall(r"""(?:from|import\(|module:)\s*['"](\./[\w.]+)['"]""", source):
            assert target[2:] in files, (name, target)
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", source), name
    assert {"index.js", "common.js", "attention.js", "attribution.js", "generation.js",
            "profile.js", "gradients.js", "style.css"} <= set(files)
    assert r.json("/index") == {"series": []}


def test_entry_point_registers_the_plugin_without_importing_tensorflow():
    eps = importlib.metadata.entry_points(group="tensorboard_plugins")
    [ep] = [e for e in eps if e.name == "kerastrace"]
    assert ep.value == "kerastrace.tensorboard.plugin:KerastracePlugin"
    assert ep.load() is KerastracePlugin
    code = ("import sys, kerastrace.tensorboard.plugin as p; "
            "print(p.KerastracePlugin.plugin_name, 'keras' in sys.modules, "
            "'tensorflow' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["kerastrace", "False", "False"]
