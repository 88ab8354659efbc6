"""The language-model demo: a trained recall LM whose answers' true sources are known."""

import json

import numpy as np
import pytest

from kerastrace.demo_lm import run_lm_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("lmdemo")
    return run_lm_demo(str(out), n_test=60), out


def test_trained_lm_answers_and_ig_finds_the_true_source(demo):
    result, out = demo
    assert result.accuracy >= 0.95
    # The bar: IG ranks the pair token holding the answer first in >= 90%.
    assert result.source_top1["integrated_gradients"] >= 0.9
    assert set(result.source_top1) == {
        "integrated_gradients", "input_x_gradient", "saliency", "occlusion", "attention",
        "attention_x_gradient",
    }
    saved = json.loads((out / "lm" / "sources.json").read_text())
    assert saved["source_top1"] == result.source_top1
    for name in ("model.keras", "vocab.txt", "traces.html", "trace.json", "sources.png",
                 "logit_lens.json", "logit_lens.png", "heads.json", "heads.png", "summary.json"):
        assert (out / "lm" / name).exists(), name
    heads = json.loads((out / "lm" / "heads.json").read_text())
    assert np.array(heads["importance"]).shape == (2, 4)
    assert 0 < heads["ablation"][0]["flops_saved"] < heads["ablation"][0]["flops_total"]
    assert "true source ranked first" in result.summary()


class _Res:
    def __init__(self, code, captured):
        self.returncode, self.stdout, self.stderr = code, captured.out, captured.err


def test_generate_and_lens_commands_on_the_demo_lm(demo, tmp_path, capsys):
    from kerastrace.cli import main

    def _cli(*args):
        return _Res(main(list(args)), capsys.readouterr())

    _, out = demo
    model, vocab = str(out / "lm" / "model.keras"), str(out / "lm" / "vocab.txt")
    prompt = "k2=v6 k5=v7 k3=v1 w2 w2 w6 k7=v2 w3 k5?"
    res = _cli("generate", model, "--vocab", vocab, "--prompt", prompt, "--max-new-tokens", "1",
               "--contrast-with", "v6", "--output-dir", str(tmp_path / "gen"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "generated: v7" in res.stdout
    trace = json.loads((tmp_path / "gen" / "trace.json").read_text())["examples"][0]
    words = (out / "lm" / "vocab.txt").read_text().split("\n")
    assert trace["contrast"] == [words.index("v6")]  # "v7 rather than v6"
    src = np.array(trace["sources"][0])
    assert trace["tokens"][int(np.argmax(src[:-2]))] == "k5=v7"  # the pair, before the query
    assert (tmp_path / "gen" / "trace.html").exists() and (tmp_path / "gen" / "sources.png").exists()
    res = _cli("lens", model, "--vocab", vocab, "--prompt", prompt,
               "--output-dir", str(tmp_path / "lens"))
    assert res.returncode == 0, res.stderr[-2000:]
    lens = json.loads((tmp_path / "lens" / "logit_lens.json").read_text())
    assert lens["final_tokens"][-1] == "v7" and lens["layers"][0] == "embeddings"
    # Bad input: one line, exit status 2, nothing written.
    res = _cli("generate", model, "--vocab", vocab, "--prompt", prompt, "--contrast-with",
               "nope", "--output-dir", str(tmp_path / "bad"))
    assert res.returncode == 2 and "--contrast-with" in res.stderr
    assert not (tmp_path / "bad").exists()
    res = _cli("generate", model, "--prompt-ids", ",".join(["1"] * 9), "--max-new-tokens", "3",
               "--output-dir", str(tmp_path / "bad"))
    assert res.returncode == 2 and "max_new_tokens=3" in res.stderr
    res = _cli("lens", str(tmp_path / "missing.keras"), "--prompt-ids", "1,2")
    assert res.returncode == 2
