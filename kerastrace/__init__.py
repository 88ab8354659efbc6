"""kerastrace: see inside Keras 3 models.

Attention layers that return their weights (`kerastrace.layers`), gradient
and perturbation attribution (`kerastrace.attribution`), attention analysis
(`kerastrace.attention`), tracing what a language model generates
(`kerastrace.generation`), training-data influence (`kerastrace.influence`),
per-layer profiling (`kerastrace.profiling`), pictures
(`kerastrace.visualization`), TensorBoard views (`kerastrace.tensorboard`) and
dataset-scale analysis (`kerastrace.scale`).

Importing the package is light: it does not import `matplotlib.pyplot` or
`tensorflow_text`, and it changes no environment variable. Subpackages are
loaded on first attribute access.

Example:

>>> import kerastrace
>>> kerastrace.__version__
'0.1.0'
"""

import importlib

__version__ = "0.1.0"

_SUBPACKAGES = (
    "layers",
    "attention",
    "attribution",
    "profiling",
    "text",
    "visualization",
    "tensorboard",
    "scale",
    "generation",
    "influence",
    "io",
    "apps",
    "testing",
)

__all__ = ["__version__", *_SUBPACKAGES]


def __getattr__(name):
    if name in _SUBPACKAGES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBPACKAGES))
