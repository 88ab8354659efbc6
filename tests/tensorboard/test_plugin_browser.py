"""A headless chromium over a live TensorBoard serving a small demo run: the kerastrace dashboard.

Needs Debian's `chromium` and `chromium-driver` (`make test` installs them when it
can) and selenium (the `test` extra); without the browser every test here is
skipped with the reason, without selenium they fail. The demo (classifier and language model, small settings) runs
once per module, in a subprocess, exactly as `make demo` runs it.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from test_plugin_server import TensorBoardServer, tensorboard_exe

CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium") if p
                 and os.path.exists(p)), None)
CHROMEDRIVER = next((p for p in (shutil.which("chromedriver"), "/usr/bin/chromedriver") if p
                     and os.path.exists(p)), None)
# Skipped, with the reason, only where the browser could not be installed (`make browser`
# installs it as root); selenium and tensorboard are dependencies: missing, the tests fail.
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="chromium/chromedriver not found: install Debian's `chromium` "
                              "and `chromium-driver` (make browser)"),
]
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--window-size=1400,1000"]


@pytest.fixture(scope="module")
def browser():
    if tensorboard_exe() is None:
        pytest.fail("the tensorboard executable is not installed: pip install -e '.[test]'")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="kt-chromium-")
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`kerastrace demo` (both tasks, small settings); returns the printed log directory."""
    out = tmp_path_factory.mktemp("dashboard") / "demo"
    exe = Path(sys.executable).parent / "kerastrace"
    cmd = [str(exe) if exe.exists() else "kerastrace", "demo", "--output-dir", str(out),
           "--n-train", "300", "--n-test", "40", "--epochs", "2", "--lm-n-train", "1000",
           "--lm-n-test", "8", "--quiet"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    # The command a new user copies from the demo's output.
    printed = set(re.findall(r"open it in TensorBoard: (\S*tensorboard) --logdir (\S+)",
                             res.stdout))
    assert len(printed) == 1, res.stdout
    [(tensorboard, logdir)] = printed
    assert logdir == str(out / "tensorboard")
    assert shutil.which(tensorboard) or os.path.isfile(tensorboard), tensorboard
    return logdir


@pytest.fixture(scope="module")
def server(browser, demo):
    with TensorBoardServer(demo) as srv:
        srv.wait_for(lambda: {s["kind"] for s in srv.json("/data/plugin/kerastrace/index")[
            "series"]} == {"attention", "attribution", "generation", "profile", "gradient_flow"},
            "every kind of record")
        yield srv


def _severe(driver):
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


@pytest.fixture
def dash(browser, server):
    """The kerastrace tab of TensorBoard, driven inside its iframe; no console errors after."""
    from selenium.webdriver.common.by import By

    _severe(browser)  # start with an empty log
    browser.switch_to.default_content()
    browser.get(server.url + "/#kerastrace")
    frame = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "iframe"), 60)[0]
    browser.switch_to.frame(frame)
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".kt-tab"), 60)
    yield Page(browser, server)
    browser.switch_to.default_content()
    errors = _severe(browser)
    assert errors == [], errors


def _wait(driver, check, timeout=30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(check)


class Page:
    def __init__(self, driver, server):
        self.d, self.server = driver, server

    def all(self, css):
        from selenium.webdriver.common.by import By

        return self.d.find_elements(By.CSS_SELECTOR, css)

    def one(self, css, timeout=30):
        return _wait(self.d, lambda d: self.all(css), timeout)[0]

    def open(self, view, ready):
        self.one(f"#kt-tab-{view}").click()
        self.one(f"#kt-view-{view} {ready}")
        assert not self.all(".kt-error"), [e.text for e in self.all(".kt-error")]

    def choose(self, select_id, value):
        from selenium.webdriver.support.ui import Select

        Select(self.one(f"#{select_id}")).select_by_value(str(value))

    def api(self, route):
        return self.server.json("/data/plugin/kerastrace/" + route)


def _weights(page):
    """The highlighted keys' weights, or None while nothing is highlighted."""
    values = [k.get_attribute("data-weight") for k in page.all("#kt-att-lines .kt-k")]
    return [float(x) for x in values] if values and all(values) else None


def test_dashboard_tab_and_views(browser, dash):
    counts = {t.get_attribute("data-view"): int(t.get_attribute("data-count"))
              for t in dash.all(".kt-tab")}
    # attention: 3 test sentences, the monitor's probe, the LM's prompt
    assert counts == {"attention": 5, "attribution": 2, "generation": 1, "profile": 1,
                      "gradients": 1}
    assert dash.one("#kt-tab-attention").get_attribute("aria-selected") == "true"


def test_attention_view_click_shows_where_a_token_attends(dash):
    dash.open("attention", "#kt-att-lines .kt-q")
    rec = dash.api("record?run=.&tag=kerastrace/attention/example_0")
    assert [q.text for q in dash.all("#kt-att-lines .kt-q")] == [
        t if len(t) <= 24 else t[:23] + "…" for t in rec["tokens"]]
    w = np.array(dash.api("attention_weights?run=.&tag=kerastrace/attention/example_0"
                          "&layer=0")["weights"])
    rows = {}
    for i in (1, 4):
        dash.all("#kt-att-lines .kt-q")[i].click()
        _wait(dash.d, lambda d, i=i: "kt-locked" in dash.all("#kt-att-lines .kt-q")[i]
              .get_attribute("class"))
        rows[i] = np.array(_weights(dash))
        # Oracle: the mean over both heads of the logged weights of query i.
        np.testing.assert_allclose(rows[i], w[:, i].mean(0), atol=2e-4)
        assert abs(rows[i].sum() - 1) < 5e-3  # padding left out, rows renormalized by softmax
        hot = {int(k.get_attribute("data-index")) for k in dash.all("#kt-att-lines .kt-target")}
        assert hot == set(np.flatnonzero(rows[i] >= 0.5 * rows[i].max()).tolist())
        assert dash.one("#kt-att-focus").text.startswith(f"“{rec['tokens'][i]}”")
    assert np.abs(rows[1] - rows[4]).max() > 1e-3  # another token, other targets
    # One head only: the highlight follows that head's weights.
    dash.all("#kt-att-heads .kt-head-toggle")[1].click()
    dash.all("#kt-att-lines .kt-q")[4].click()  # the view was redrawn: select again
    _wait(dash.d, lambda d: _weights(dash) is not None and np.allclose(_weights(dash), w[0, 4],
                                                                       atol=2e-4))
    # Heatmap mode and the layer x head overview.
    dash.one('#kt-att-mode [data-value="heatmap"]').click()
    dash.one("#kt-att-heatmap")
    thumbs = dash.all("#kt-att-grid canvas.kt-thumb")
    assert len(thumbs) == sum(layer["heads"] for layer in rec["layers"]) == 4
    dash.one('#kt-att-grid canvas[data-layer="1"][data-head="1"]').click()
    _wait(dash.d, lambda d: dash.one("#kt-att-layer").get_attribute("value") == "1")
    checked = [c.get_attribute("data-head") for c in dash.all("#kt-att-heads .kt-head-toggle")
               if c.is_selected()]
    assert checked == ["1"]
    # Rollout: one chip per token, scored by the logged rollout row of [CLS].
    chips = dash.all("#kt-att-rollout-text .kt-chip")
    assert [float(c.get_attribute("data-score")) for c in chips] == pytest.approx(
        rec["rollout"][0], abs=1e-4)
    assert dash.all("#kt-att-stats-svg .kt-point")


def test_attention_statistics_over_training_steps(dash):
    dash.open("attention", "#kt-att-lines")
    dash.choose("kt-att-run", "attention_monitor")
    _wait(dash.d, lambda d: dash.all("#kt-att-stats-svg path.kt-line"))
    stats = dash.api("head_statistics?run=attention_monitor&tag=kerastrace/attention")
    assert stats["source"] == "scalars"
    assert len(dash.all("#kt-att-stats-svg path.kt-line")) == 2  # a line per head, 2 epochs
    assert [p[0] for p in stats["stats"]["entropy"][0][0]] == [0, 1]


def test_attribution_view_words_methods_and_prediction(dash):
    dash.open("attribution", "#kt-attr-text .kt-unit")
    rec = dash.api("record?run=.&tag=kerastrace/attributions")
    ex = rec["examples"][0]
    units = dash.all("#kt-attr-text .kt-unit")
    assert [u.text for u in units] == ex["text"].split()  # the user's words, not word pieces
    scores = [float(u.get_attribute("data-score")) for u in units]
    assert scores == pytest.approx(ex["word_scores"]["integrated_gradients"], abs=1e-5)
    # The strongest word is saturated (red or blue) with white text; the legend says so.
    top = units[int(np.argmax(np.abs(scores)))]
    assert top.value_of_css_property("color") in ("rgba(255, 255, 255, 1)", "rgb(255, 255, 255)")
    r, _, b = [int(x) for x in re.findall(r"\d+", top.value_of_css_property("background-color"))[:3]]
    assert (r > b) == (scores[int(np.argmax(np.abs(scores)))] > 0)
    assert "red: supports the explained class" in dash.one("#kt-attr-legend").text
    pred = dash.one("#kt-attr-prediction").text
    names = rec["class_names"]
    assert f"{names[ex['predicted']]} (class {ex['predicted']}), probability " \
           f"{ex['probability']:.3f}" in pred
    dash.one('#kt-attr-method [data-value="smoothgrad"]').click()
    _wait(dash.d, lambda d: dash.one("#kt-attr-text").get_attribute("data-method") ==
          "smoothgrad")
    got = [float(u.get_attribute("data-score")) for u in dash.all("#kt-attr-text .kt-unit")]
    assert got == pytest.approx(ex["word_scores"]["smoothgrad"], abs=1e-5)
    dash.one('#kt-attr-unit [data-value="tokens"]').click()
    _wait(dash.d, lambda d: dash.one("#kt-attr-text").get_attribute("data-unit") == "tokens")
    tokens = [u.text for u in dash.all("#kt-attr-text .kt-unit")]
    assert tokens == ex["tokens"] and tokens[0] == "[CLS]"
    assert "kt-special" in dash.all("#kt-attr-text .kt-unit")[0].get_attribute("class")


def test_generation_view_click_colours_the_sources(dash):
    dash.open("generation", "#kt-gen-text .kt-gen")
    rec = dash.api("record?run=lm&tag=kerastrace/generation")
    ex = rec["examples"][0]
    gen = dash.all("#kt-gen-text .kt-gen")
    assert [g.text for g in gen] == ex["tokens"][ex["prompt_len"]:]
    gen[0].click()
    _wait(dash.d, lambda d: dash.all("#kt-gen-focus"))
    assert dash.one("#kt-gen-focus").text == f"Step 0: “{ex['tokens'][ex['prompt_len']]}”"
    prompt = dash.all("#kt-gen-text .kt-prompt")
    assert [float(p.get_attribute("data-score")) for p in prompt] == pytest.approx(
        ex["sources"][0][: ex["prompt_len"]], abs=1e-5)
    # alternatives named by the vocabulary, not by ids
    assert "#" not in dash.one("#kt-gen-detail").text.split("Most likely:")[1].split("\n")[0]


def test_profile_view_sorts_and_collapses(dash):
    dash.open("profile", "#kt-prof-table .kt-prof-row")
    rec = dash.api("record?run=.&tag=kerastrace/profile")
    rows = dash.all("#kt-prof-table .kt-prof-row")
    depth1 = [r["path"] for r in rec["layers"] if r["depth"] == 1]
    assert [r.get_attribute("data-path") for r in rows] == [""] + depth1
    dash.one('#kt-prof-table th[data-key="flops"] button').click()
    _wait(dash.d, lambda d: dash.all('#kt-prof-table th.kt-sorted[data-key="flops"]'))
    flops = [float(c.get_attribute("data-value")) for c in
             dash.all('#kt-prof-table .kt-prof-row[data-depth="1"] td[data-key="flops"]')]
    assert flops == sorted(flops, reverse=True) and len(flops) == len(depth1)
    dash.choose("kt-prof-depth", "all")
    _wait(dash.d, lambda d: len(dash.all("#kt-prof-table .kt-prof-row")) == len(rec["layers"]))
    dash.one('#kt-prof-table .kt-prof-row[data-path=""] .kt-toggle').click()
    _wait(dash.d, lambda d: len(dash.all("#kt-prof-table .kt-prof-row")) == 1)
    bar = dash.one('#kt-prof-table .kt-prof-row[data-path=""] .kt-bar-params')
    assert bar.get_attribute("style").replace(" ", "").startswith("width:100")


def test_gradient_flow_view_lines_and_flags(dash):
    dash.open("gradients", "#kt-grad-chart")
    data = dash.api("gradient_flow?run=gradient_flow&tag=kerastrace/gradient_flow")
    assert data["steps"] == [0, 1]
    series = dash.all("#kt-grad-chart g.kt-series")
    assert [s.get_attribute("data-name") for s in series] == data["layers"]
    assert len(dash.all("#kt-grad-chart path.kt-line")) == len(data["layers"])
    rows = dash.all("#kt-grad-table .kt-grad-row")
    assert {r.get_attribute("data-layer"): r.get_attribute("data-status") for r in rows} == \
        data["status"]
    rows[0].click()
    _wait(dash.d, lambda d: "kt-hot" in dash.all("#kt-grad-chart g.kt-series")[0]
          .get_attribute("class"))


def test_graphs_and_profile_tabs_show_the_demo(browser, server):
    assert server.json("/data/plugin/profile/runs")  # the trace of profile_model
    _severe(browser)
    browser.switch_to.default_content()
    browser.get(server.url + "/#graphs")
    names = _wait(browser, lambda d: d.execute_script("""
        const out = [];
        (function walk(root) {
          root.querySelectorAll('*').forEach((e) => {
            if (e.classList && e.classList.contains('node') && e.getAttribute('data-name'))
              out.push(e.getAttribute('data-name'));
            if (e.shadowRoot) walk(e.shadowRoot);
          });
        })(document);
        return out.length ? out : null;"""), 60)
    assert any(n.startswith("text_classifier") for n in names), names
    assert _severe(browser) == []
