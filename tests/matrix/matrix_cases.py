"""Cases of the model matrix: small versions of the models users bring, with their inputs.

Each `Case` is one model family (keras.io patterns, keras-hub models built from a
tiny configuration, kerastrace's own layers) with a batch of inputs in the form
the model takes (ids, a dict, images), where the padding is, and what to explain.
Models are built once per test session.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from kerastrace.testing import model_zoo as zoo
from kerastrace.testing.reference_models import build_text_classifier

B, T = 2, 8


@dataclasses.dataclass
class Case:
    name: str
    model: object
    inputs: object  # what the model is called on
    ids: np.ndarray | None  # (B, T) token ids (None for images)
    mask: np.ndarray | None  # (B, T) True on real tokens
    kind: str  # "classifier", "lm", "seq2seq", "vision"
    target: object  # what to explain: a class, or position * V + token
    position: int | None = None  # for lm/seq2seq: the explained position
    token_layer: object = None  # the token embedding (the layer on the token ids)
    tied: bool = False  # input embedding reused as the output head
    pad_id: int = 0

    def with_ids(self, ids):
        """The model inputs with the token ids replaced (same structure)."""
        if isinstance(self.inputs, dict):
            key = "encoder_inputs" if "encoder_inputs" in self.inputs else "token_ids"
            out = dict(self.inputs)
            out[key] = ids.astype(self.inputs[key].dtype)
            return out
        return ids.astype(self.inputs.dtype)


def _ids(vocab, pad_tail=3, seed=0, distinct=True):
    """(B, T) ids with distinct tokens per row; row 1 padded at the end."""
    rng = np.random.default_rng(seed)
    rows = [rng.permutation(np.arange(1, vocab))[:T] for _ in range(B)]
    ids = np.stack(rows).astype("int32")
    mask = np.ones((B, T), bool)
    if pad_tail:
        mask[1, T - pad_tail :] = False
        ids[~mask] = 0
    return ids, mask


def _encoder_embedding(model):
    """The translator's encoder-side positional embedding (fed by `encoder_inputs`)."""
    enc = model.get_layer("encoder_inputs")
    for layer in model.layers:
        node_inputs = [t for node in layer._inbound_nodes for t in node.input_tensors]
        if any(t is enc.output for t in node_inputs):
            return layer
    raise AssertionError("no layer reads encoder_inputs")


@functools.cache
def build(name: str) -> Case:
    if name == "kerastrace_classifier":
        ids, mask = _ids(30)
        model = build_text_classifier(30, T, num_classes=3, num_layers=2)
        return Case(name, model, ids, ids, mask, "classifier", 1,
                    token_layer=model.get_layer("embedding").token_embedding)
    if name == "keras_io_classifier":
        ids, mask = _ids(30, pad_tail=0)
        model = zoo.keras_io_text_classifier(vocab_size=30, maxlen=T)
        return Case(name, model, ids, ids, mask, "classifier", 1,
                    token_layer=model.layers[1].token_emb)
    if name == "keras_io_mini_gpt":
        ids, mask = _ids(20, pad_tail=0)
        model = zoo.keras_io_mini_gpt(vocab_size=20, maxlen=T)
        pos = 4
        return Case(name, model, ids, ids, mask, "lm", pos * 20 + 7, position=pos,
                    token_layer=model.layers[1].token_emb)
    if name == "keras_io_translator":
        enc, emask = _ids(30, pad_tail=2)
        dec = np.random.default_rng(1).integers(1, 30, (B, 5)).astype("int64")
        model = zoo.keras_io_translator(vocab_size=30, sequence_length=T)
        inputs = {"encoder_inputs": enc.astype("int64"), "decoder_inputs": dec}
        encoder_embedding = _encoder_embedding(model)
        return Case(name, model, inputs, enc, emask, "seq2seq", 2 * 30 + 5, position=2,
                    token_layer=encoder_embedding.token_embeddings)
    if name == "hub_bert":
        ids, mask = _ids(64)
        model = zoo.hub_bert_classifier(vocabulary_size=64, num_classes=3)
        inputs = {"token_ids": ids, "padding_mask": mask.astype("int32"),
                  "segment_ids": np.zeros((B, T), "int32")}
        return Case(name, model, inputs, ids, mask, "classifier", 1,
                    token_layer=model.backbone.token_embedding)
    if name == "hub_gpt2":
        ids, mask = _ids(64, pad_tail=0)
        model = zoo.hub_gpt2_lm(vocabulary_size=64)
        inputs = {"token_ids": ids, "padding_mask": mask.astype("int32")}
        pos = 4
        return Case(name, model, inputs, ids, mask, "lm", pos * 64 + 9, position=pos,
                    token_layer=model.backbone.token_embedding, tied=True)
    if name == "hub_llama":
        ids, mask = _ids(64, pad_tail=0)
        model = zoo.hub_llama_lm(vocabulary_size=64)
        inputs = {"token_ids": ids, "padding_mask": mask.astype("int32")}
        pos = 5
        return Case(name, model, inputs, ids, mask, "lm", pos * 64 + 3, position=pos,
                    token_layer=model.backbone.token_embedding)
    if name == "hub_vit":
        model = zoo.hub_vit_classifier(num_classes=3)
        images = np.random.default_rng(0).normal(size=(B, 16, 16, 3)).astype("float32")
        return Case(name, model, images, None, None, "vision", 2)
    raise KeyError(name)


TEXT = ["kerastrace_classifier", "keras_io_classifier", "keras_io_mini_gpt",
        "keras_io_translator", "hub_bert", "hub_gpt2", "hub_llama"]
ALL = [*TEXT, "hub_vit"]
CAUSAL = ["keras_io_mini_gpt", "hub_gpt2", "hub_llama"]
SINGLE_TOKEN_INPUT = [n for n in TEXT if n != "keras_io_translator"]
