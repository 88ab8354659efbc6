"""Compositions for end users, built on the public analysis packages.

- `kerastrace.apps.explain`: text in, word scores out (`explain_text`, `explain`).
- `kerastrace.apps.demo`: the built-in demo classifier (`run_demo`).
- `kerastrace.apps.demo_lm`: the built-in demo language model (`run_lm_demo`).

The old names `kerastrace.explain`, `kerastrace.demo` and `kerastrace.demo_lm`
are the same modules. Nothing here is imported with `kerastrace`.
"""
