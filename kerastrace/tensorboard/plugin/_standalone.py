"""The kerastrace dashboard as one offline HTML file (no TensorBoard server).

`dashboard_html(logdir, path)` inlines the plugin's static frontend and every
answer its views would ask the plugin for, so the same interactive views open
from a file. The page frame (escaping, atomic write) is `kerastrace.visualization`'s.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping

from kerastrace.visualization._html import _IGNORE, HTMLView, escape, write_html


def _static_modules(static_dir) -> dict:
    """The dashboard's ES modules, `common.js` first and `index.js` last (import order)."""
    names = sorted(n for n in os.listdir(static_dir) if n.endswith(".js"))
    order = ["common.js"] + [n for n in names if n not in ("common.js", "index.js")] + [
        "index.js"]
    out = {}
    for name in order:
        with open(os.path.join(static_dir, name), encoding="utf-8") as f:
            out[name] = f.read()
    return out


def _finite(value):
    """`value` with every non-finite float replaced by None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(x) for k, x in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(x) for x in value]
    return value

_BOOT = """
(function () {
  var read = function (id) { return JSON.parse(document.getElementById(id).textContent); };
  window.KT_DATA = read('kt-data');
  var src = read('kt-modules'), order = read('kt-order'), urls = {};
  order.forEach(function (name) {
    var code = src[name].replace(/(['"])\\.\\/([A-Za-z0-9_]+\\.js)\\1/g, function (m, q, dep) {
      return urls[dep] ? q + urls[dep] + q : m;
    });
    urls[name] = URL.createObjectURL(new Blob([code], {type: 'text/javascript'}));
  });
  import(urls['index.js']).then(function (m) { return m.render(); }).catch(function (err) {
    var box = document.createElement('pre');
    box.className = 'kt-message kt-error';
    box.textContent = 'kerastrace dashboard: ' + err;
    document.body.appendChild(box);
  });
})();
"""


def _script_json(value) -> str:
    """JSON for a `<script type="application/json">`: no `<` (so no `</script>`) inside."""
    text = json.dumps(_finite(value), separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _key(route: str, params: Mapping) -> str:
    """The key of one plugin request in the inlined data (as `common.js` builds it)."""
    entries = sorted((str(k), str(v)) for k, v in params.items() if v is not None)
    return json.dumps([route, [list(e) for e in entries]], separators=(",", ":"),
                      ensure_ascii=False)


def dashboard_data(logdir) -> dict:
    """Every answer the dashboard's views ask the plugin for, read from `logdir`.

    Returns `{key: answer}` with the keys `common.js` looks up when the page
    holds the data (`window.KT_DATA`): the index, each series' steps, every
    record (each step, and the latest), the attention weights of every
    layer and step, head statistics and gradient flow. A route the plugin
    answers with an error is stored as `{"__error__": message}`.

    Raises:
        ValueError: when `logdir` is not a directory or holds no kerastrace data.
    """
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider as dp
    from tensorboard.backend.event_processing import plugin_event_multiplexer as pem

    from kerastrace.tensorboard.plugin import PLUGIN_NAME, Reader
    from kerastrace.tensorboard.plugin._reader import BadRequest, NotFound

    logdir = os.fspath(logdir)
    if not os.path.isdir(logdir):
        raise ValueError(
            "Received an invalid value for argument `logdir`, expected a TensorBoard log "
            f"directory. Received: logdir={logdir!r} (not a directory)"
        )
    mux = pem.EventMultiplexer(tensor_size_guidance={PLUGIN_NAME: 0, "scalars": 0})
    mux.AddRunsFromDirectory(logdir)
    mux.Reload()
    reader = Reader(dp.MultiplexerDataProvider(mux, logdir))
    ctx, eid = context.RequestContext(), ""
    out: dict = {}

    def put(route, params, call):
        try:
            out[_key(route, params)] = call()
        except (NotFound, BadRequest) as exc:
            out[_key(route, params)] = {"__error__": f"{route}: {exc}"}

    index = reader.index(ctx, eid)
    if not index["series"]:
        raise ValueError(
            f"Received an invalid value for argument `logdir`: {logdir!r} holds no kerastrace "
            "records (write some with kerastrace.tensorboard's monitors or write_*_data)."
        )
    out[_key("index", {})] = index
    for s in index["series"]:
        run, tag, kind = s["run"], s["tag"], s["kind"]
        base = {"run": run, "tag": tag}
        steps = reader.steps(ctx, eid, run, tag)
        out[_key("steps", base)] = steps
        put("record", base, lambda run=run, tag=tag: reader.record(ctx, eid, run, tag))
        for st in steps:
            step = st["step"]
            rec_params = {**base, "step": step}
            put("record", rec_params,
                lambda run=run, tag=tag, step=step: reader.record(ctx, eid, run, tag, step))
            if kind == "attention":
                rec = out[_key("record", rec_params)]
                for layer in range(len(rec.get("layers") or [])):
                    put("attention_weights", {**rec_params, "layer": layer},
                        lambda run=run, tag=tag, step=step, layer=layer:
                        reader.attention_weights(ctx, eid, run, tag, step, layer))
        if kind == "attention":
            put("head_statistics", base,
                lambda run=run, tag=tag: reader.head_statistics(ctx, eid, run, tag))
        if kind == "gradient_flow":
            put("gradient_flow", base,
                lambda run=run, tag=tag: reader.gradient_flow(ctx, eid, run, tag))
    return out


def dashboard_html(logdir, path=None, *, title: str = "kerastrace dashboard") -> HTMLView:
    """The kerastrace TensorBoard dashboard as ONE offline HTML file, no server needed.

    Inlines the plugin's static frontend (`kerastrace/tensorboard/plugin/static/`:
    its ES modules, loaded from `blob:` URLs, and its style sheet) and every
    answer its views ask for (`dashboard_data(logdir)`), so the same
    interactive views (attention, attributions, generation, profile,
    gradient flow) work from a file opened in a browser, with no network.
    The file holds all the logged data: large runs make large files.

    Args:
        logdir: A TensorBoard log directory with kerastrace records.
        path: Where to write the page (atomically); None only returns it.
        title: The page title.

    Returns:
        The page, an `HTMLView`.

    Raises:
        ValueError: when `logdir` holds no kerastrace records.
    """
    from kerastrace.tensorboard.plugin._plugin import STATIC_DIR

    data = dashboard_data(logdir)
    modules = _static_modules(STATIC_DIR)
    with open(os.path.join(STATIC_DIR, "style.css"), encoding="utf-8") as f:
        css = f.read().replace("</", "<\\/")
    digest = hashlib.sha256(json.dumps(sorted(modules.items())).encode()).hexdigest()[:12]
    page = HTMLView(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width">'
        f'<meta name="generator" content="kerastrace dashboard_html {digest}">'
        f"<title>{escape(title)}</title>"
        f'<style id="kt-style">{css}</style></head>\n<body class="{_IGNORE}">\n'
        f'<script type="application/json" id="kt-data">{_script_json(data)}</script>\n'
        f'<script type="application/json" id="kt-modules">{_script_json(modules)}</script>\n'
        f'<script type="application/json" id="kt-order">{_script_json(list(modules))}</script>\n'
        f"<script>{_BOOT}</script>\n</body></html>\n"
    )
    if path is not None:
        write_html(path, page)
    return page
