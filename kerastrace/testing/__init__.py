"""Test helpers shipped with kerastrace: the layer harness, reference models and data.

- `LayerHarness`: the Keras layer-contract checks every layer test runs.
- `reference_models`: small models with known answers (e.g. the Integrated
  Gradients paper's examples) and a tiny text classifier builder.
- `data`: generated data sets whose right explanation is known.
"""

from kerastrace.testing import data, reference_models
from kerastrace.testing.layer_harness import LayerHarness

__all__ = ["LayerHarness", "data", "reference_models"]
