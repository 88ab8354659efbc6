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

from kerastrace.generation._heads import HeadGates, head_importance, mask_heads
from kerastrace.generation._lens import logit_lens
from kerastrace.generation._lm import CausalLM, Prompts, generate, step_scores
from kerastrace.generation._results import GenerationTrace, HeadImportance, LogitLens
from kerastrace.generation._trace import METHODS, GenerationTracer, trace_generation

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
