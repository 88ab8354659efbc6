"""`explain` and the demos moved under `kerastrace.apps`; the old names are the same modules."""

import importlib
import subprocess
import sys

import pytest


@pytest.mark.parametrize("name", ["explain", "demo", "demo_lm"])
def test_old_module_names_are_the_apps_modules(name):
    old = importlib.import_module(f"kerastrace.{name}")
    new = importlib.import_module(f"kerastrace.apps.{name}")
    assert old is new
    assert sys.modules[f"kerastrace.{name}"] is new


def test_old_import_forms_keep_working():
    from kerastrace.apps.explain import explain_text as new_fn
    from kerastrace.explain import (
        _check_delta,  # noqa: F401  private names too
        explain_text,
    )

    assert explain_text is new_fn


def test_importing_kerastrace_imports_no_app():
    code = (
        "import sys, kerastrace; "
        "print(any(m.startswith('kerastrace.apps') or m in ('kerastrace.explain', "
        "'kerastrace.demo') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
