import json
import os
import subprocess
import sys

import pytest

import kerastrace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code):
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )


def test_bare_import_loads_no_tensorflow_pyplot_or_tf_text_and_sets_no_env():
    code = (
        "import os, sys, json; before = dict(os.environ); import kerastrace;"
        "print(json.dumps({'mods': [m for m in ('tensorflow', 'keras', 'matplotlib.pyplot',"
        " 'tensorflow_text') if m in sys.modules],"
        " 'env_changed': sorted(set(before.items()) ^ set(dict(os.environ).items()))}))"
    )
    res = _run(code)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out == {"mods": [], "env_changed": []}


# Keras itself imports matplotlib.pyplot when matplotlib is installed (its
# image-gallery helper) and TensorFlow sets a few environment variables at
# import. So for the subpackages we check what kerastrace adds: with pyplot
# blocked, no kerastrace module may try to import it, and importing them after
# tensorflow and keras changes no environment variable.
_BLOCK_PYPLOT = """
import importlib.abc, json, os, sys
culprits = []
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == 'matplotlib.pyplot' or name == 'tensorflow_text':
            f = sys._getframe(1)
            while f is not None:
                mod = f.f_globals.get('__name__', '')
                if mod.startswith('kerastrace'):
                    culprits.append((name, mod))
                    break
                f = f.f_back
            raise ImportError('blocked ' + name)
        return None
sys.meta_path.insert(0, Block())
import tensorflow, keras
before = dict(os.environ)
import kerastrace
for sub in kerastrace._SUBPACKAGES:
    getattr(kerastrace, sub)
after = dict(os.environ)
print(json.dumps({'culprits': culprits,
                  'env_changed': sorted(set(before.items()) ^ set(after.items()))}))
"""


def test_subpackages_import_no_pyplot_or_tf_text_and_set_no_env():
    res = _run(_BLOCK_PYPLOT)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out == {"culprits": [], "env_changed": []}


def test_subpackages_load_lazily_by_attribute():
    assert kerastrace.layers.SelfAttention.__name__ == "SelfAttention"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        kerastrace.nope  # noqa: B018


def test_layers_are_registered_by_name():
    import keras

    for name in ("SelfAttention", "TransformerBlock", "TokenAndPositionEmbedding"):
        cls = keras.saving.get_registered_object(f"kerastrace>{name}")
        assert cls is getattr(kerastrace.layers, name)
