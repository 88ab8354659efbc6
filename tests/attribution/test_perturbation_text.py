"""Word-level perturbation explanations of text: `explain_text(..., method=...)` for
feature_ablation, shapley, kernel_shap and lime, checked against direct model calls."""

import numpy as np
import pytest

from kerastrace import explain
from kerastrace.testing.reference_models import build_text_classifier
from kerastrace.text import Tokenizer, word_feature_mask

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##believ", "##able", "film", "great",
         "!", "not", "bad", "it", "was"]
TEXT = "It was unbelievable, not bad film!"
L = 14


@pytest.fixture(scope="module")
def setup():
    model = build_text_classifier(len(VOCAB), L, num_layers=1, dim=16, ff_dim=32, seed=1)
    tok = Tokenizer(VOCAB, sequence_length=L)
    t = tok.tokenize(TEXT)
    logits = np.asarray(model(t.ids))
    return model, tok, t, int(logits[0].argmax())


def _score(model, ids, target):
    return float(np.asarray(model(ids))[0, target])


def _without(t, words, pad=0):
    """The ids with every piece of the given words replaced by [PAD] (specials kept)."""
    ids = t.ids.copy()
    ids[0, np.isin(t.word_ids[0], list(words))] = pad
    return ids


@pytest.mark.parametrize("method", list(explain.PERTURBATION_METHODS))
def test_one_score_per_word(setup, method):
    model, tok, t, target = setup
    [e] = explain.explain_text(model, tok, TEXT, method=method, seed=0)
    assert [w.word for w in e.words] == t.words[0]
    assert [w.word for w in e.words] == ["It", "was", "unbelievable", ",", "not", "bad",
                                         "film", "!"]
    assert e.target == target
    assert np.all(e.token_scores[~t.token_mask[0]] == 0)  # [CLS], [SEP], padding
    scores = np.array([w.score for w in e.words])
    # the pieces of "unbelievable" share its score evenly
    pieces = e.token_scores[t.word_ids[0] == 2]
    assert len(pieces) == 3 and np.allclose(pieces, pieces[0])
    f_x = _score(model, t.ids, target)
    n_words = len(t.words[0])
    if method == "feature_ablation":
        expected = [f_x - _score(model, _without(t, [k]), target) for k in range(n_words)]
        np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)
    if method in ("shapley", "kernel_shap"):
        f_0 = _score(model, _without(t, range(n_words)), target)
        np.testing.assert_allclose(scores.sum(), f_x - f_0, rtol=1e-4, atol=1e-5)
        assert abs(e.delta) < 1e-5
    else:
        assert e.delta is None


def test_shapley_budget_and_exactness(setup):
    model, tok, t, target = setup
    # With a generous budget Shapley sampling is close to the exact enumeration.
    from kerastrace.attribution import ShapleyValues

    exact = ShapleyValues(model).attribute(
        t.ids, target=target, feature_mask=word_feature_mask(t), return_input_shape=False)[0]
    scores, _, delta = explain.token_attributions(
        model, t.ids, method="shapley", target=target, mask=t.mask, max_evals=2 + 200 * 7,
        feature_mask=word_feature_mask(t), seed=0,
    )
    words = np.bincount(t.word_ids[0][t.token_mask[0]], weights=scores[0][t.token_mask[0]])
    np.testing.assert_allclose(words, exact, atol=0.05 * np.abs(exact).max())
    [e] = explain.explain_text(model, tok, TEXT, method="kernel_shap", n_samples=2**8, seed=0)
    np.testing.assert_allclose([w.score for w in e.words], exact, rtol=1e-4, atol=1e-5)


def test_token_level_default_mask_and_errors(setup):
    model, tok, t, target = setup
    special = [tok.cls_id, tok.sep_id]
    scores, targets, _ = explain.token_attributions(
        model, t.ids, method="feature_ablation", mask=t.mask, special_ids=special)
    assert targets.tolist() == [target]
    f_x = _score(model, t.ids, target)
    for pos in np.flatnonzero(t.token_mask[0]):
        ids = t.ids.copy()
        ids[0, pos] = 0
        assert scores[0, pos] == pytest.approx(f_x - _score(model, ids, target), abs=1e-5)
    assert np.all(scores[0, ~t.token_mask[0]] == 0)
    with pytest.raises(ValueError, match="`n_samples`.*number of features"):
        explain.explain_text(model, tok, TEXT, method="kernel_shap", n_samples=5)
    with pytest.raises(ValueError, match="`max_evals`.*not both"):
        explain.explain_text(model, tok, TEXT, method="lime", n_samples=5, max_evals=9)
    with pytest.raises(ValueError, match="`feature_mask`.*shape of `ids`"):
        explain.token_attributions(model, t.ids, method="lime", feature_mask=np.zeros(3, int))
