"""Trace what a causal language model generates.

- `GenerationTracer` / `trace_generation`: generate (greedy or seeded
  sampling, a keras-hub model's own `generate` where it has one) or take a
  forced continuation, then score every earlier token's contribution to each
  generated token, for all generated positions in one compiled call; step
  scores (probability, log-probability, entropy, rank) and contrastive
  targets ("this token rather than that one").
- `logit_lens`: the next-token distribution after every block.
- `head_importance` / `mask_heads`: which attention heads matter (Michel et
  al. 2019) and what masking the least important ones costs.

Works with keras-hub `CausalLM`s (`GPT2CausalLM`, `LlamaCausalLM`, ...) built
from any configuration and with any Keras model from `(B, T)` token ids to
logits `(B, T, V)`.

Example:

>>> from kerastrace.generation import trace_generation
>>> from kerastrace.testing.model_zoo import keras_io_mini_gpt
>>> trace = trace_generation(keras_io_mini_gpt(vocab_size=20, maxlen=12), [3, 7, 5],
...                          max_new_tokens=3, method="input_x_gradient")
>>> len(trace.generated_ids[0]), sorted(trace.steps[0])[:3]
(3, ['entropy', 'log_probability', 'probability'])
"""

import importlib

#: The tracing methods of `GenerationTracer` (defined here, so that importing the
#: names does not import TensorFlow: the command line builds its parser from it).
METHODS = (
    "integrated_gradients",
    "input_x_gradient",
    "saliency",
    "occlusion",
    "attention",
    "attention_x_gradient",
)

_LAZY = {
    "HeadGates": "_heads", "head_importance": "_heads", "mask_heads": "_heads",
    "logit_lens": "_lens",
    "CausalLM": "_lm", "Prompts": "_lm", "generate": "_lm", "step_scores": "_lm",
    "GenerationTrace": "_results", "HeadImportance": "_results", "LogitLens": "_results",
    "GenerationTracer": "_trace", "trace_generation": "_trace",
}

__all__ = [
    "METHODS",
    "CausalLM",
    "GenerationTrace",
    "GenerationTracer",
    "HeadGates",
    "HeadImportance",
    "LogitLens",
    "Prompts",
    "generate",
    "head_importance",
    "logit_lens",
    "mask_heads",
    "step_scores",
    "trace_generation",
]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
