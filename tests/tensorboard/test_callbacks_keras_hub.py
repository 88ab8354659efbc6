"""The monitors on keras-hub models nobody on the team wrote (dict inputs, ViT)."""

import logging

import keras
import numpy as np
import pytest
from _tb_events import read_events

from kerastrace.attention import collect, head_statistics
from kerastrace.attribution import LayerGradientXActivation, token_scores
from kerastrace.tensorboard import AttentionMonitor, AttributionMonitor, GradientFlow

keras_hub = pytest.importorskip("keras_hub")

CLS, SEP, PAD = 1, 2, 0


def _bert():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        name="bert_backbone",
        vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16,
        max_sequence_length=8,
    )  # fmt: skip
    model = keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=None)
    model.compile(
        keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 50, (8, 8)).astype("int32")
    ids[:, 0], ids[:, 5], ids[:, 6:] = CLS, SEP, PAD
    x = {
        "token_ids": ids,
        "padding_mask": (ids != PAD).astype("int32"),
        "segment_ids": np.zeros_like(ids),
    }
    return model, x, rng.integers(0, 2, 8)


def test_bert_text_classifier_dict_inputs_all_monitors(tmp_path):
    model, x, y = _bert()
    probe = {k: v[:2] for k, v in x.items()}
    att = AttentionMonitor(tmp_path, probe, write_images=False, special_ids=[CLS, SEP])
    attr = AttributionMonitor(tmp_path, probe, special_ids=[CLS, SEP])
    grad = GradientFlow(tmp_path, (probe, y[:2]), histograms=False)
    model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0, callbacks=[att, attr, grad])
    assert (att.failures, attr.failures, grad.failures) == (0, 0, 0)
    ev = read_events(tmp_path)
    layer = "bert_backbone/transformer_layer_0/self_attention_layer"
    # AttentionMonitor took the dict's padding_mask as its mask: oracle recomputed with it.
    ref = head_statistics(
        collect(model, probe), mask=probe["padding_mask"].astype(bool),
        token_ids=probe["token_ids"], special_ids=[CLS, SEP],
    )  # fmt: skip
    entropy = ev[f"heads/entropy/{layer}/head_0"]
    assert [s for s, _ in entropy] == [0, 1]
    assert entropy[-1][1] == pytest.approx(ref.entropy[0, 0], abs=1e-5)
    assert entropy[-1][1] <= np.log(6) + 1e-6  # 6 real tokens of 8
    assert ev[f"heads/special_share/{layer}/head_1"][-1][1] == pytest.approx(
        ref.special_share[0, 1], abs=1e-5
    )
    # AttributionMonitor: (B, T) scores on the token embedding; the padding scores 0.
    assert attr.last_scores.shape == (2, 8)
    np.testing.assert_allclose(attr.last_scores[:, 6:], 0.0, atol=1e-12)
    assert 0.0 <= ev["attributions/top_3_jaccard"][0][1] <= 1.0
    table = ev["attributions/example_0/text"][-1][1].splitlines()[4:]
    ranked = [row.split(" | ")[1] for row in table]
    words = {str(t) for t in probe["token_ids"][0, 1:5]}
    assert len(ranked) == 3 and set(ranked) <= words  # neither [CLS] (1) nor [SEP] (2)
    # GradientFlow on the dict probe, one scalar per layer path.
    assert ev["gradient_norm/bert_backbone/token_embedding"][-1][1] > 0
    assert f"gradient_norm/{layer}/query" in ev and "gradient_norm/logits" in ev
    assert set(grad.last_norms) >= {"bert_backbone/token_embedding", "logits"}


def _vit():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ViTBackbone(
        name="vit_backbone",
        image_shape=(16, 16, 3), patch_size=4, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16
    )
    model = keras_hub.models.ViTImageClassifier(backbone, num_classes=3, preprocessor=None)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    return model, rng.random((4, 16, 16, 3)).astype("float32"), rng.integers(0, 3, 4)


def test_vit_default_attribution_fails_loudly_once_attention_works(tmp_path, caplog):
    model, x, y = _vit()
    probe = x[:2]
    with pytest.raises(ValueError, match="attribution_fn") as info:
        model.fit(x, y, epochs=1, shuffle=False, verbose=0,
                  callbacks=[AttributionMonitor(tmp_path / "s", probe, strict=True)])  # fmt: skip
    # Its position Embedding is not taken for a token embedding.
    assert "has no token embedding" in str(info.value)

    default = AttributionMonitor(tmp_path / "d", probe)
    att = AttentionMonitor(tmp_path / "a", probe)
    patches = "vit_backbone/vit_patching_and_embedding"
    custom = AttributionMonitor(
        tmp_path / "c", probe, write_images=False,
        attribution_fn=lambda m, i: token_scores(
            LayerGradientXActivation(m, patches).attribute(i, target=0)
        ),
    )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        model.fit(x, y, epochs=2, shuffle=False, verbose=0, callbacks=[default, att, custom])
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and default.failures == 1
    assert errors[0].getMessage().startswith("AttributionMonitor.on_train_begin failed")
    assert "attribution_fn" in errors[0].getMessage()
    assert "attributions" in default.disabled and default.last_scores is None
    # The other monitors work on the ViT: MultiHeadAttention inside, 17 = 1 + 16 patches.
    assert att.failures == 0 and custom.failures == 0
    assert custom.last_scores.shape == (2, 17)
    ev = read_events(tmp_path / "a")
    layer = "vit_backbone/vit_encoder/transformer_block_1/mha"
    ref = head_statistics(collect(model, probe))
    assert ev[f"heads/entropy/{layer}/head_1"][-1][1] == pytest.approx(
        ref.entropy[0, 1], abs=1e-5
    )
    assert "attention/model_view" in ev
