"""The self-contained HTML views: offline, readable colours, the user's words, escaped."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import kerastrace.tensorboard as ktb
from kerastrace import visualization as viz
from kerastrace.explain import TextExplanation
from kerastrace.generation._results import GenerationTrace

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ a small HTML reader


class Node:
    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent = tag, dict(attrs), parent
        self.children: list = []

    @property
    def classes(self):
        return (self.attrs.get("class") or "").split()

    def text(self):
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self):
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.iter()

    def find_all(self, tag=None, cls=None):
        return [n for n in self.iter() if (tag is None or n.tag == tag)
                and (cls is None or cls in n.classes)]

    def style(self):
        return dict(
            (k.strip(), v.strip()) for k, _, v in
            (p.partition(":") for p in (self.attrs.get("style") or "").split(";") if p.strip())
        )


class Tree(HTMLParser):
    """html.parser into a tree (void elements closed at once)."""

    VOID = {"meta", "link", "br", "img", "input", "hr"}

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {}, None)
        self.cur = self.root
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        node = Node(tag, attrs, self.cur)
        self.cur.children.append(node)
        if tag not in self.VOID:
            self.cur = node

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Node(tag, attrs, self.cur))

    def handle_endtag(self, tag):
        n = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def parse(text) -> Node:
    return Tree(text).root


def rgb(hex_color):
    h = hex_color.lstrip("#")
    return tuple(int(h[i: i + 2], 16) for i in (0, 2, 4))


def wcag_contrast(a, b):
    """WCAG 2.x contrast ratio, written out here as the oracle."""

    def lum(c):
        chans = []
        for x in rgb(c):
            x /= 255
            chans.append(x / 12.92 if x <= 0.04045 else ((x + 0.055) / 1.055) ** 2.4)
        return 0.2126 * chans[0] + 0.7152 * chans[1] + 0.0722 * chans[2]

    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def assert_offline(page: str):
    """No resource that would be fetched from the network, no external fonts or imports."""
    root = parse(page)
    for node in root.iter():
        for attr in ("src", "href", "action", "data", "poster"):
            value = node.attrs.get(attr) or ""
            assert not re.match(r"\s*(https?:)?//", value), (node.tag, attr, value)
    for style in root.find_all("style"):
        css = style.text()
        assert "@import" not in css and "@font-face" not in css
        assert not re.search(r"url\(\s*['\"]?\s*(https?:)?//", css), css
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=\S*https?://", page)


def chips(root):
    """The coloured word spans of an attribution view (special tokens left out)."""
    return [n for n in root.find_all("span", "kt-w") if "data-index" in n.attrs
            and "kt-special" not in n.classes]


def assert_readable(spans):
    for s in spans:
        st = s.style()
        assert wcag_contrast(st["background"], st["color"]) >= 4.5, (s.text(), st)


def side(background):
    """'red', 'blue' or 'white' half of the diverging palette."""
    r, _, b = rgb(background)
    return "red" if r > b + 8 else "blue" if b > r + 8 else "white"


# ------------------------------------------------------------------ palette


def test_wcag_oracle_values():
    # Published WCAG values: black on white 21:1, #777777 on white 4.48:1.
    assert viz.contrast_ratio("#000000", "#ffffff") == pytest.approx(21.0)
    assert viz.contrast_ratio("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)
    assert viz.relative_luminance("#808080") == pytest.approx(0.2158605, abs=1e-6)
    assert viz.relative_luminance((255, 0, 0)) == pytest.approx(0.2126)


@pytest.mark.parametrize("palette, ts", [
    (viz.diverging_color, np.linspace(-1, 1, 201)),
    (viz.sequential_color, np.linspace(0, 1, 101)),
])
def test_every_palette_colour_has_readable_text(palette, ts):
    for t in ts:
        bg, fg = palette(t)
        assert fg in ("#000000", "#ffffff")
        assert wcag_contrast(bg, fg) >= 4.5, (t, bg, fg)
        # the text colour is the better of black and white
        assert wcag_contrast(bg, fg) == pytest.approx(
            max(wcag_contrast(bg, "#000000"), wcag_contrast(bg, "#ffffff")))


def test_diverging_palette_ends_and_middle():
    # extremes: ColorBrewer RdBu's dark red and dark blue, white text; middle: near white,
    # black text. Values outside [-1, 1] are clipped; NaN is the middle.
    assert viz.diverging_color(1.0) == ("#b2182b", "#ffffff")
    assert viz.diverging_color(-1.0) == ("#2166ac", "#ffffff")
    assert viz.diverging_color(0.0) == ("#f7f7f7", "#000000")
    assert viz.diverging_color(7.0) == viz.diverging_color(1.0)
    assert viz.diverging_color(float("nan")) == viz.diverging_color(0.0)
    assert side(viz.diverging_color(0.3)[0]) == "red"
    assert side(viz.diverging_color(-0.3)[0]) == "blue"
    with pytest.raises(ValueError, match="argument `color`"):
        viz.relative_luminance("blue")


# ------------------------------------------------------------------ attributions


TEXT = "Good <script>alert('x')</script> & $x$ film"


def explanation(method="integrated_gradients", target=1, probs=(0.125, 0.875)):
    """A TextExplanation over the words of TEXT, as explain_text builds it."""
    words = [(m.group(), m.span()) for m in re.finditer(r"\w+|[^\w\s]", TEXT)]
    scores = np.linspace(1.0, -1.0, len(words))
    scores[len(words) // 2] = 0.0
    tokens = ["[CLS]"] + [w.lower() for w, _ in words] + ["[SEP]", "[PAD]"]
    token_scores = np.concatenate([[0.0], scores, [0.0, 0.0]]).astype("float32")
    mask = np.array([True] * (len(words) + 2) + [False])
    return TextExplanation(
        text=TEXT, method=method, target=target, probabilities=np.array(probs),
        tokens=tokens, token_scores=token_scores, mask=mask,
        words=[(w, span, float(s)) for (w, span), s in zip(words, scores)], delta=0.002,
        unknown_words=[False] * len(words),
    )


def test_explanation_page_heading_words_colours_and_legend(tmp_path):
    e = explanation()
    page = e.to_html(tmp_path / "sub" / "e.html", class_names=["negative", "positive"])
    assert (tmp_path / "sub" / "e.html").read_text(encoding="utf-8") == page
    assert page.startswith("<!DOCTYPE html>")
    assert_offline(page)
    root = parse(page)
    [view] = root.find_all("section", "kt-attribution")
    assert "tex2jax_ignore" in view.classes  # MathJax leaves `$x$` alone
    [head] = view.find_all("header")
    heading = " ".join(head.text().split())
    assert TEXT in heading  # the sentence, unescaped by the parser
    assert "positive (class 1), probability 0.875" in heading
    assert "Method: integrated_gradients" in heading
    # one coloured span per word of the user's text, in order, with its score
    spans = chips(view)
    assert [s.attrs["data-word"] for s in spans] == [w for w, _, _ in e.words]
    assert [s.text() for s in spans] == [w for w, _, _ in e.words]
    for s, (_, _, score) in zip(spans, e.words):
        assert float(s.attrs["data-score"]) == pytest.approx(score, abs=1e-6)
        want = "red" if score > 0 else "blue" if score < 0 else "white"
        assert side(s.style()["background"]) == want, (s.text(), score)
    top = max(spans, key=lambda s: abs(float(s.attrs["data-score"])))
    assert top.style()["color"] == "#ffffff"  # full colour: white text
    assert_readable(spans)
    # the text between words is the user's own (spaces kept), so the line reads as typed
    assert " ".join(view.find_all("div", "kt-text")[0].text().split()) == " ".join(TEXT.split())
    legend = " ".join(view.find_all("div", "kt-legend")[0].text().split())
    assert "red: supports the explained class" in legend and "blue: speaks against it" in legend


def test_explanation_escapes_every_token_and_is_a_notebook_view():
    e = explanation()
    page = e.to_html()
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)" in page
    assert [n.tag for n in parse(page).iter()].count("script") == 0
    frag = e._repr_html_()
    assert not frag.startswith("<!DOCTYPE") and "tex2jax_ignore" in frag
    assert "<script>alert" not in frag and "<script" not in frag


def test_explained_class_and_unknown_words_are_shown():
    e = explanation(target=0, probs=(0.25, 0.75))
    e.unknown_words = [w == "film" for w, _, _ in e.words]
    view = viz.explanation_html(e)
    root = parse(view)
    heading = " ".join(root.find_all("header")[0].text().split())
    assert "Prediction: class 1, probability 0.750" in heading
    assert "Explained: class 0" in heading  # another class than the predicted one
    [film] = [s for s in chips(root) if s.attrs["data-word"] == "film"]
    assert film.text() == "film (unknown)" and "kt-unknown" in film.classes
    assert "not in the tokenizer's vocabulary" in root.find_all("p", "kt-note")[0].text()


def test_explain_text_view_shows_words_not_word_pieces(tmp_path):
    import keras

    from kerastrace.explain import explain_text
    from kerastrace.testing.reference_models import build_text_classifier
    from kerastrace.text import Tokenizer

    keras.utils.set_random_seed(0)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "film", "##s", "bad"]
    tok = Tokenizer(vocab, sequence_length=10)
    model = build_text_classifier(len(vocab), 10, num_layers=1)
    text = "Good films, zorp bad"
    [e] = explain_text(model, tok, text, method="occlusion")
    assert "##s" in e.tokens and "[UNK]" in e.tokens  # pieces and [UNK] underneath
    root = parse(e.to_html())
    spans = chips(root)
    shown = [s.attrs["data-word"] for s in spans]
    assert shown == ["Good", "films", ",", "zorp", "bad"]  # the user's words, once each
    assert not any(t in s.text() for s in spans for t in ("##", "[UNK]"))
    assert spans[3].text() == "zorp (unknown)"
    vmax = max(abs(w.score) for w in e.words)
    assert vmax > 0
    for s, w in zip(spans, e.words):
        assert float(s.attrs["data-score"]) == pytest.approx(w.score, rel=1e-5, abs=1e-6)
        if abs(w.score) >= 0.1 * vmax:  # far enough from 0 to be visibly red or blue
            assert side(s.style()["background"]) == ("red" if w.score > 0 else "blue")
    assert_readable(spans)
    heading = " ".join(root.find_all("header")[0].text().split())
    p = float(np.max(e.probabilities))
    assert text in heading and f"probability {p:.3f}" in heading and "occlusion" in heading


def test_several_methods_one_row_each_and_token_pages():
    words = [[("nice", (0, 4), 2.0), ("day", (5, 8), -1.0)]]
    page = viz.attributions_page(
        {"ig": words, "lime": [[("nice", (0, 4), -0.5), ("day", (5, 8), 0.5)]]},
        texts=["nice day"], probabilities=[[0.4, 0.6]], labels=[0],
        class_names=["sad", "happy"], deltas={"ig": [0.01]},
    )
    assert_offline(page)
    root = parse(page)
    rows = root.find_all("div", "kt-row")
    assert [r.attrs["data-method"] for r in rows] == ["ig", "lime"]
    for row, want in zip(rows, (["red", "blue"], ["blue", "red"])):
        assert [side(s.style()["background"]) for s in chips(row)] == want
    heading = " ".join(root.find_all("header")[0].text().split())
    assert "happy (class 1), probability 0.600" in heading and "Label: sad (class 0)" in heading
    assert "Methods: ig, lime" in heading and "delta (ig) +1.00e-02" in heading
    # token ids (no text): masked tokens left out, special tokens grey and not scored
    page = viz.attributions_page(
        tokens=[["[CLS]", "<b>", "7", "[PAD]"]], scores={"occlusion": [[0.0, 1.0, -2.0, 5.0]]},
        mask=[[True, True, True, False]], special=[[True, False, False, False]], targets=[1])
    root = parse(page)
    assert [s.text() for s in chips(root)] == ["<b>", "7"]
    assert [s.text() for s in root.find_all("span", "kt-special")] == ["[CLS]"]
    assert "[PAD]" not in page and "&lt;b&gt;" in page
    assert chips(root)[1].style()["background"] == "#2166ac"  # -2 is the largest |score|
    with pytest.raises(ValueError, match="argument `words`"):
        viz.attributions_page()
    with pytest.raises(ValueError, match="expected 2 scores"):
        viz.attribution_html(["a", "b"], [1.0])


def test_token_snippet_is_escaped_and_readable():
    tokens = ["<script>", "&amp;", "$x$", "ok"]
    out = viz.token_attributions_html([3.0, -3.0, 0.0, 1.5], tokens)
    assert isinstance(out, viz.TokenAttributionsHTML) and out._repr_html_() == out
    for t in tokens:
        assert html.escape(t, quote=True) in out
    assert "<script>" not in out and "tex2jax_ignore" in out
    spans = [n for n in parse(out).find_all("span")]
    assert [s.text() for s in spans] == tokens
    assert_readable(spans)
    assert [side(s.style()["background"]) for s in spans] == ["red", "blue", "white", "red"]


def test_write_html_is_atomic_and_checks_the_path(tmp_path):
    path = tmp_path / "a" / "b.html"
    assert viz.HTMLView("<p>x</p>").save(path) == str(path)
    assert path.read_text() == "<p>x</p>"
    assert [p.name for p in path.parent.iterdir()] == ["b.html"]  # no temporary left
    with pytest.raises(TypeError, match="argument `path`"):
        viz.write_html(3, "<p>")


# ------------------------------------------------------------------ generation


def trace():
    return GenerationTrace(
        method="integrated_gradients", prompt_ids=[[3, 7, 5]], generated_ids=[[9, 4]],
        sources=[np.array([[0.5, -0.25, 0.1, 0.0, 0.0], [0.2, 0.1, -0.4, 0.3, 0.0]],
                          np.float32)],
        steps=[{"probability": np.array([0.9, 0.2]), "log_probability": np.log([0.9, 0.2]),
                "entropy": np.array([0.3, 1.2]), "rank": np.array([0, 1]),
                "top_tokens": np.array([[9, 1], [2, 4]]),
                "top_probabilities": np.array([[0.9, 0.05], [0.5, 0.2]])}],
        token_strings=[["<b>", "$x$", "c", "d", "</script>"]], prompt_texts=["<b> $x$ c"],
    )


def test_generation_page_colours_tokens_by_probability(tmp_path):
    tr = trace()
    page = tr.to_html(tmp_path / "t.html")
    assert (tmp_path / "t.html").read_text(encoding="utf-8") == page
    assert_offline(page)
    root = parse(page)
    gen = root.find_all("span", "kt-gen")
    assert [g.text() for g in gen] == ["d", "</script>"]  # escaped: still one token
    assert "</script>" not in page.split("<script>")[0]
    for g, p in zip(gen, (0.9, 0.2)):
        assert float(g.attrs["data-probability"]) == pytest.approx(p)
        assert g.style()["background"] == viz.sequential_color(p)[0]
    assert_readable(gen)
    # the inline script gets precomputed colours of every earlier token, per step
    [sec] = root.find_all("section", "kt-generation")
    colors = json.loads(sec.attrs["data-colors"])
    assert [float(c[2]) for c in colors[1]] == pytest.approx([0.2, 0.1, -0.4, 0.3])
    assert colors[1][2][0] == "#2166ac" and colors[0][0][0] == "#b2182b"  # |max| each row
    # without JavaScript: the strongest sources of each step as coloured chips
    rows = root.find_all("table", "kt-sources")[0].find_all("tr")[1:]
    first = [(c.text(), float(c.attrs["data-score"])) for c in rows[0].find_all("span")[1:]]
    assert first == [("<b>", 0.5), ("$x$", -0.25), ("c", 0.1)]
    assert_readable(rows[1].find_all("span"))
    heading = " ".join(sec.find_all("header")[0].text().split())
    assert heading.startswith("<b> $x$ c") and "integrated_gradients" in heading


def test_generation_notebook_view_needs_no_script():
    frag = trace()._repr_html_()
    assert "<script" not in frag.replace("&lt;", "<").split("kt-text")[0]
    assert [n.tag for n in parse(frag).iter()].count("script") == 0
    tip = parse(frag).find_all("span", "kt-gen")[0].attrs["title"]
    assert "p=0.900" in tip and "<b> (+0.5)" in tip  # sources in the tooltip
    with pytest.raises(ValueError, match="argument `example`"):
        viz.generation_html(trace(), example=3)
    with pytest.raises(TypeError, match="argument `path`"):
        trace().to_html(0)


# ------------------------------------------------------------------ builders


def test_page_builders_assemble_no_html_themselves():
    """The demo, the CLI and the script call the shared views instead of writing markup."""
    for rel in ("kerastrace/demo.py", "kerastrace/demo_lm.py", "kerastrace/cli/_commands.py",
                "scripts/explain_demo_model.py", "kerastrace/explain.py",
                "kerastrace/generation/_results.py"):
        src = (REPO / rel).read_text(encoding="utf-8")
        assert not re.search(r"<(html|body|span|h\d|p|div)[ >]", src), rel


def test_demo_summary_ends_with_files_and_the_dashboard_command(tmp_path, monkeypatch):
    from kerastrace.demo import DemoResult

    monkeypatch.chdir(tmp_path)
    (tmp_path / "Makefile").write_text("tensorboard:\n\t.venv/bin/tensorboard --logdir x\n")
    files = ["attention/head.png", "attributions/attributions.html", "dashboard.html",
             "model.keras"] + [f"checkpoints/epoch_{i}.weights.h5" for i in range(8)]
    res = DemoResult(run_dir=str(tmp_path / "runs/demo"), accuracy=1.0,
                     attention_on_planted={}, attention_uniform_share=0.1, examples=[],
                     files=files, tensorboard_logdir=os.path.join("runs", "demo", "tensorboard"))
    lines = res.summary().splitlines()
    start = lines.index(f"files written in {tmp_path / 'runs/demo'}:")
    assert lines[start + 1] == "  dashboard.html, model.keras"
    assert "  attention/: head.png" in lines
    assert "  checkpoints/: 8 files, epoch_0.weights.h5 ... epoch_7.weights.h5" in lines
    assert re.fullmatch(r"open it in TensorBoard: \S*tensorboard --logdir runs/demo/tensorboard"
                        r"   \(or: make tensorboard\)", lines[-2]), lines[-2]
    assert lines[-1].startswith("  then the KERASTRACE tab")
    res.tensorboard_logdir = str(tmp_path / "elsewhere")  # not what `make tensorboard` opens
    assert "make tensorboard" not in res.summary()


# ------------------------------------------------------------------ dashboard


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    """Attention (2 steps), attributions with words, a generation trace, gradient flow."""
    from kerastrace.tensorboard import (
        write_attention_data,
        write_attribution_data,
        write_generation_data,
        write_gradient_flow_data,
    )

    d = tmp_path_factory.mktemp("dash")
    rng = np.random.default_rng(0)
    tokens = ["[CLS]", "a</script>", "b", "[SEP]"]
    for step in range(2):
        w = {"block_0/attention": _softmax(rng.normal(size=(1, 2, 4, 4))).astype("float32")}
        write_attention_data(d / "mon", w, tokens, step=step, special=[0, 3])
    write_attribution_data(
        d, {"ig": [[0.0, 0.5, -0.25, 0.0]]}, [["[CLS]", "nice", "day", "[SEP]"]],
        texts=["nice day"], words={"ig": [[("nice", (0, 4), 0.5), ("day", (5, 8), -0.25)]]},
        probabilities=[[0.25, 0.75]], class_names=["sad", "happy"])
    for step in range(2):
        write_gradient_flow_data(d / "grad", {"dense": 0.5 * (step + 1), "head": 2.0},
                                 step=step)
    write_generation_data(d / "lm", trace())
    return d


def test_dashboard_html_inlines_the_plugin_and_the_data(logdir, tmp_path):
    from kerastrace.tensorboard.plugin._plugin import STATIC_DIR

    page = ktb.dashboard_html(logdir, tmp_path / "dash.html")
    assert (tmp_path / "dash.html").read_text(encoding="utf-8") == page
    assert_offline(page)
    root = parse(page)
    scripts = {n.attrs.get("id"): n.text() for n in root.find_all("script")}
    modules = json.loads(scripts["kt-modules"])
    for name in os.listdir(STATIC_DIR):
        if name.endswith(".js"):
            assert modules[name] == (Path(STATIC_DIR) / name).read_text(encoding="utf-8")
    order = json.loads(scripts["kt-order"])
    assert order[0] == "common.js" and order[-1] == "index.js"
    data = json.loads(scripts["kt-data"])
    index = data[json.dumps(["index", []], separators=(",", ":"))]
    assert {s["kind"] for s in index["series"]} == {"attention", "attribution", "generation",
                                                    "gradient_flow"}
    key = json.dumps(["record", [["run", "mon"], ["step", "1"],
                                 ["tag", "kerastrace/attention"]]], separators=(",", ":"))
    assert data[key]["tokens"][1] == "a</script>"  # inside a JSON script, yet intact
    assert "a</script>" not in page  # never closes the script element early
    css = (Path(STATIC_DIR) / "style.css").read_text(encoding="utf-8")
    assert root.find_all("style")[0].attrs["id"] == "kt-style"
    assert root.find_all("style")[0].text() == css
    with pytest.raises(ValueError, match="argument `logdir`"):
        ktb.dashboard_html(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no kerastrace records"):
        ktb.dashboard_html(tmp_path / "empty")


# ------------------------------------------------------------------ in a real browser

CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium") if p
                 and os.path.exists(p)), None)
CHROMEDRIVER = next((p for p in (shutil.which("chromedriver"), "/usr/bin/chromedriver") if p
                     and os.path.exists(p)), None)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver  # a test dependency: missing, the tests fail
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="kt-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                 f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, check, timeout=20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(check)


def _open(driver, path):
    driver.get_log("browser")  # start with an empty log
    driver.get(Path(path).as_uri())


def _no_network_and_no_errors(driver):
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
    urls = driver.execute_script(
        "return performance.getEntriesByType('resource').map((e) => e.name);")
    assert all(u.startswith(("blob:", "file:", "data:")) for u in urls), urls


NO_BROWSER = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="chromium/chromedriver not found: install Debian's `chromium` and "
           "`chromium-driver` (make browser)")


@pytest.mark.browser
@NO_BROWSER
def test_generation_page_click_colours_the_sources(browser, tmp_path):
    from selenium.webdriver.common.by import By

    path = tmp_path / "trace.html"
    trace().to_html(path)
    _open(browser, path)
    gen = browser.find_elements(By.CSS_SELECTOR, ".kt-text .kt-gen")
    gen[1].click()
    toks = browser.find_elements(By.CSS_SELECTOR, ".kt-text .kt-tok")
    _wait(browser, lambda d: toks[0].get_attribute("data-score") is not None)
    assert [float(t.get_attribute("data-score")) for t in toks[:4]] == pytest.approx(
        [0.2, 0.1, -0.4, 0.3])
    assert "kt-selected" in gen[1].get_attribute("class")
    assert toks[2].value_of_css_property("background-color") == "rgba(33, 102, 172, 1)"
    gen[0].click()  # another step: only the tokens before it are coloured
    _wait(browser, lambda d: toks[3].get_attribute("data-score") is None)
    assert float(toks[0].get_attribute("data-score")) == pytest.approx(0.5)
    _no_network_and_no_errors(browser)


@pytest.mark.browser
@NO_BROWSER
def test_dashboard_file_works_without_a_server(browser, logdir, tmp_path):
    from selenium.webdriver.common.by import By

    path = tmp_path / "dashboard.html"
    ktb.dashboard_html(logdir, path)
    _open(browser, path)
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".kt-tab"))
    counts = {t.get_attribute("data-view"): int(t.get_attribute("data-count"))
              for t in browser.find_elements(By.CSS_SELECTOR, ".kt-tab")}
    assert counts == {"attention": 1, "attribution": 1, "generation": 1, "profile": 0,
                      "gradients": 1}
    # attention: the weights of a token, from the inlined records
    q = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#kt-att-lines .kt-q"))
    assert [x.text for x in q][1] == "a</script>"
    q[1].click()
    _wait(browser, lambda d: "kt-locked" in q[1].get_attribute("class"))
    weights = [float(k.get_attribute("data-weight")) for k in
               browser.find_elements(By.CSS_SELECTOR, "#kt-att-lines .kt-k")]
    assert sum(weights) == pytest.approx(1.0, abs=5e-3)
    # attributions: the user's words, coloured
    browser.find_element(By.CSS_SELECTOR, "#kt-tab-attribution").click()
    units = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#kt-attr-text .kt-unit"))
    assert [u.text for u in units] == ["nice", "day"]
    assert "happy (class 1), probability 0.750" in browser.find_element(
        By.CSS_SELECTOR, "#kt-attr-prediction").text
    # generation: a click colours the sources
    browser.find_element(By.CSS_SELECTOR, "#kt-tab-generation").click()
    gen = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#kt-gen-text .kt-gen"))
    gen[0].click()
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#kt-gen-focus"))
    prompt = browser.find_elements(By.CSS_SELECTOR, "#kt-gen-text .kt-prompt")
    assert [float(p.get_attribute("data-score")) for p in prompt] == pytest.approx(
        [0.5, -0.25, 0.1])
    # gradient flow: one line per layer
    browser.find_element(By.CSS_SELECTOR, "#kt-tab-gradients").click()
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#kt-grad-chart path.kt-line"))
          == 2)
    _no_network_and_no_errors(browser)
