"""The kerastrace TensorBoard plugin: WSGI routes over `Reader` and the static frontend."""

from __future__ import annotations

import mimetypes
import os

from tensorboard import plugin_util
from tensorboard.backend import http_util
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from kerastrace.tensorboard.plugin import _format as fmt
from kerastrace.tensorboard.plugin._reader import MAX_POINTS, BadRequest, NotFound, Reader

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html",
          ".svg": "image/svg+xml", ".json": "application/json"}


def _json(request, data, code=200):
    return http_util.Respond(request, data, "application/json", code=code)


def _arg(request, name, required=True):
    value = request.args.get(name)
    if value is None and required:
        raise BadRequest(f"missing query argument {name!r}")
    return value


def _int_arg(request, name, required=False):
    value = _arg(request, name, required)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"query argument {name!r} must be an integer, got {value!r}") from None


def _route(method):
    """A WSGI route calling `method(self, request, ctx, experiment_id)`; errors as JSON."""

    @wrappers.Request.application
    def app(self, request):
        ctx = plugin_util.context(request.environ)
        eid = plugin_util.experiment_id(request.environ)
        try:
            return _json(request, method(self, request, ctx, eid))
        except BadRequest as exc:
            return _json(request, {"error": str(exc)}, 400)
        except NotFound as exc:
            return _json(request, {"error": str(exc)}, 404)

    app.__name__ = method.__name__
    return app


class KerastracePlugin(base_plugin.TBPlugin):
    """TensorBoard plugin `kerastrace`: interactive views of what kerastrace logs.

    Registered through the `tensorboard_plugins` entry point of the
    package. Its frontend (plain ES modules under `static/`, no network)
    runs in TensorBoard's plugin iframe; its routes, under
    `/data/plugin/kerastrace/`, answer JSON:

    - `index`: every kerastrace series (run, tag, kind, last step);
    - `steps?run=&tag=`: the steps of a series;
    - `record?run=&tag=[&step=]`: one record (the latest by default);
    - `attention_weights?run=&tag=&layer=[&step=]`: one layer's weights;
    - `head_statistics?run=&tag=`: head statistics over the steps;
    - `gradient_flow?run=&tag=`: gradient norms over the steps and flags.
    """

    plugin_name = fmt.PLUGIN_NAME

    def __init__(self, context):
        self._reader = Reader(
            context.data_provider,
            downsample=(context.sampling_hints or {}).get(fmt.PLUGIN_NAME) or MAX_POINTS,
        )

    def is_active(self):
        return False  # TensorBoard enables the tab when kerastrace data exists

    def data_plugin_names(self):
        return (fmt.PLUGIN_NAME,)

    def frontend_metadata(self):
        return base_plugin.FrontendMetadata(
            es_module_path="/static/index.js", tab_name="kerastrace", disable_reload=True
        )

    def get_plugin_apps(self):
        return {
            "/static/*": self._static,
            "/index": self._index,
            "/steps": self._steps,
            "/record": self._record,
            "/attention_weights": self._attention_weights,
            "/head_statistics": self._head_statistics,
            "/gradient_flow": self._gradient_flow,
        }

    @wrappers.Request.application
    def _static(self, request):
        name = request.path.rpartition("/static/")[2]
        path = os.path.normpath(os.path.join(STATIC_DIR, name))
        if not name or not path.startswith(STATIC_DIR + os.sep) or not os.path.isfile(path):
            return http_util.Respond(request, "not found", "text/plain", code=404)
        ext = os.path.splitext(path)[1]
        mimetype = _TYPES.get(ext) or mimetypes.guess_type(path)[0] or "application/octet-stream"
        with open(path, "rb") as f:
            body = f.read()
        return http_util.Respond(request, body, mimetype)

    @_route
    def _index(self, request, ctx, eid):
        return self._reader.index(ctx, eid)

    @_route
    def _steps(self, request, ctx, eid):
        return self._reader.steps(ctx, eid, _arg(request, "run"), _arg(request, "tag"))

    @_route
    def _record(self, request, ctx, eid):
        return self._reader.record(ctx, eid, _arg(request, "run"), _arg(request, "tag"),
                                   _int_arg(request, "step"))

    @_route
    def _attention_weights(self, request, ctx, eid):
        return self._reader.attention_weights(
            ctx, eid, _arg(request, "run"), _arg(request, "tag"), _int_arg(request, "step"),
            _int_arg(request, "layer", required=True),
        )

    @_route
    def _head_statistics(self, request, ctx, eid):
        return self._reader.head_statistics(ctx, eid, _arg(request, "run"), _arg(request, "tag"))

    @_route
    def _gradient_flow(self, request, ctx, eid):
        return self._reader.gradient_flow(ctx, eid, _arg(request, "run"), _arg(request, "tag"))
