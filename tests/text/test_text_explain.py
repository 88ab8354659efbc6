"""`explain_text` / `token_attributions` never explain what the model did not read:
ids outside the vocabulary and texts without a known word are refused, unknown
words are flagged in every output (dict, HTML, plot)."""
import json

import numpy as np
import pytest

from kerastrace import explain
from kerastrace.testing.reference_models import build_text_classifier
from kerastrace.text import Tokenizer

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "film", "not", "bad", "!"]
L = 10


@pytest.fixture(scope="module")
def setup():
    model = build_text_classifier(len(VOCAB), L, num_layers=1, dim=8, ff_dim=16, seed=0)
    return model, Tokenizer(VOCAB, sequence_length=L)


def test_unknown_words_are_flagged(setup):
    model, tok = setup
    text = "good zorp film qwx"
    [e] = explain.explain_text(model, tok, text, method="gradient_x_activation")
    assert [w.word for w in e.words] == ["good", "zorp", "film", "qwx"]
    assert e.unknown_words == [False, True, False, True]
    assert e.tokens[:6] == ["[CLS]", "good", "[UNK]", "film", "[UNK]", "[SEP]"]
    np.testing.assert_array_equal(e.unknown[:6], [0, 0, 1, 0, 1, 0])
    # the spans still point into the user's string
    assert [text[s:t] for _, (s, t), _ in e.words] == ["good", "zorp", "film", "qwx"]
    d = e.to_dict()
    assert [w["unknown"] for w in d["words"]] == [False, True, False, True]
    assert d["unknown"] == [False, False, True, False, True, False]  # real tokens only
    assert json.loads(e.to_json())["words"][1] == {**d["words"][1]}


def test_unknown_words_are_marked_in_html_and_plot(setup):
    model, tok = setup
    [e] = explain.explain_text(model, tok, "good <b>zorp film", method="occlusion")
    html = e.to_html()
    assert "zorp" + explain.UNKNOWN_MARK in html
    assert "&lt; (unknown)" in html and "<b>" not in html  # user text escaped
    assert "not in the tokenizer&#x27;s vocabulary" in html  # the note
    fig, ax = e.plot()
    texts = [t.get_text() for t in ax.texts]
    assert "zorp (unknown)" in texts and "good" in texts and "[UNK]" not in texts
    assert "not in the tokenizer's vocabulary" in ax.get_title()
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_known_text_has_no_marks(setup):
    model, tok = setup
    [e] = explain.explain_text(model, tok, "good film", method="occlusion")
    assert e.unknown_words == [False, False] and not e.unknown.any()
    assert explain.UNKNOWN_MARK not in e.to_html() and "kerastrace-note" not in e.to_html()


@pytest.mark.parametrize("text", ["zorp qwx", "???", "zorp ?", "ZORP"])
def test_text_without_known_word_refused(setup, text):
    model, tok = setup
    with pytest.raises(ValueError) as err:
        explain.explain_text(model, tok, ["good film", text])
    msg = str(err.value)
    assert "argument `texts`" in msg and f"text 1 ({text!r})" in msg
    assert "no word in the tokenizer's vocabulary" in msg and "[UNK]" in msg


@pytest.mark.parametrize("text", ["", "   ", "\t\n ", "\u200b"])
def test_text_without_tokens_refused(setup, text):
    model, tok = setup
    with pytest.raises(ValueError, match=r"argument `texts`: text 0 \(.*\) has no tokens"):
        explain.explain_text(model, tok, text)


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion", "attention_rollout",
                                    "feature_ablation"])
@pytest.mark.parametrize("value", [-1, len(VOCAB), 10**6])
def test_token_attributions_refuses_ids_out_of_range(setup, method, value):
    model, _ = setup
    ids = np.array([[2, 4, 5, 3, 0, 0, 0, 0, 0, 0], [2, 4, 6, 7, 3, 0, 0, 0, 0, 0]])
    ids[1, 2] = value
    with pytest.raises(ValueError) as err:
        explain.token_attributions(model, ids, method=method)
    msg = str(err.value)
    assert "argument `ids`" in msg and f"the id {value} at example 1, token 2" in msg
    assert f"input_dim={len(VOCAB)}, valid ids 0..{len(VOCAB) - 1}" in msg


def test_token_attributions_refuses_bad_baselines_and_pad_id(setup):
    model, _ = setup
    ids = np.array([[2, 4, 5, 3, 0, 0, 0, 0, 0, 0]])
    with pytest.raises(ValueError, match=r"argument `baselines`.*non-integral value 0\.7 at "
                                         r"example 0, token 0.*truncated to 0"):
        explain.token_attributions(model, ids, baselines=0.7)
    with pytest.raises(ValueError, match=r"argument `baselines`: the id 99 at example 0, token 0"):
        explain.token_attributions(model, ids, baselines=99)
    with pytest.raises(ValueError, match=r"`pad_id`, expected an id in the token embedding's "
                                         r"vocabulary, 0\.\.8\. Received: pad_id=9"):
        explain.token_attributions(model, ids, pad_id=9)
    with pytest.raises(ValueError, match=r"`pad_id`, expected an integer token id. "
                                         r"Received: pad_id=0\.5"):
        explain.token_attributions(model, ids, pad_id=0.5)
    # an integral float baseline is an id: the same scores as the int
    a, _, _ = explain.token_attributions(model, ids, baselines=0, n_steps=4)
    b, _, _ = explain.token_attributions(model, ids, baselines=np.zeros(10), n_steps=4)
    np.testing.assert_array_equal(a, b)
