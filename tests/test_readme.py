"""The README runs as written.

- Its ```python blocks run in order, in one namespace, in a fresh Python process
  whose working directory is `tmp_path` (every file they write lands there). A
  block preceded by `<!-- readme-test: skip: <why> -->` is not run; one preceded
  by `<!-- readme-test: requires MODULE -->` runs only where MODULE imports.
- Its ```bash commands that call `kerastrace` name a real subcommand and real
  flags (parsed with `kerastrace.cli.build_parser()`, never run), every
  `make TARGET` it names is a Makefile target, and every script it runs from
  `scripts/` or `benchmarks/` exists and defines the flags given to it.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SCRIPTS_README = ROOT / "scripts" / "README.md"
MAKEFILE = ROOT / "Makefile"

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
_MARKER = re.compile(r"<!--\s*readme-test:\s*(skip|requires)\b[: ]*(.*?)\s*-->")


def _blocks(text: str, language: str) -> list[dict]:
    """Fenced blocks of `language`, in order: number, first line, code, marker."""
    out = []
    for match in _FENCE.finditer(text):
        if match.group(1) != language:
            continue
        before = text[: match.start()].rstrip()
        last = before.splitlines()[-1] if before else ""
        marker = _MARKER.fullmatch(last.strip())
        out.append({
            "number": len(out) + 1,
            "line": text.count("\n", 0, match.start()) + 2,  # first line of the code
            "code": match.group(2),
            "marker": (marker.group(1), marker.group(2)) if marker else None,
        })
    return out


def _python_blocks() -> list[dict]:
    return _blocks(README.read_text(encoding="utf-8"), "python")


def _to_run(block: dict) -> tuple[bool, str]:
    """Whether to run a block, and why not."""
    if block["marker"] is None:
        return True, ""
    kind, arg = block["marker"]
    if kind == "skip":
        return False, f"skip: {arg}"
    missing = [m for m in arg.replace(",", " ").split() if importlib.util.find_spec(m) is None]
    if missing:
        return False, f"requires {', '.join(missing)} (not installed)"
    return True, ""


_DRIVER = r'''
import json, sys, time, traceback
blocks = json.load(open(sys.argv[1], encoding="utf-8"))
namespace = {"__name__": "__main__"}
for b in blocks:
    start = time.perf_counter()
    try:
        exec(compile(open(b["file"], encoding="utf-8").read(), b["file"], "exec"), namespace)
    except BaseException:
        print(f"\nREADME python block {b['number']} (README.md line {b['line']}) failed:",
              file=sys.stderr)
        traceback.print_exc()
        sys.exit(3)
    print(f"README python block {b['number']}: {time.perf_counter() - start:.1f} s", flush=True)
'''


def test_readme_skipped_blocks_say_why_compile_and_import():
    blocks = _python_blocks()
    assert len(blocks) >= 8
    skipped = [b for b in blocks if b["marker"] and b["marker"][0] == "skip"]
    assert len(skipped) <= 2, "skip README blocks rarely"
    for b in skipped:
        assert len(b["marker"][1]) > 10, f"block {b['number']}: say why it is skipped"
        tree = ast.parse(b["code"], filename=f"README.md python block {b['number']}")
        # what a skipped block imports from kerastrace exists
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kerastrace"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), (
                        f"block {b['number']}: {node.module} has no {alias.name}")


def test_readme_python_blocks_run(tmp_path):
    blocks = _python_blocks()
    run, skipped = [], []
    for b in blocks:
        ok, why = _to_run(b)
        if not ok:
            skipped.append(f"block {b['number']} ({why})")
            continue
        path = tmp_path / f"readme_block_{b['number']:02d}.py"
        # pad with blank lines so tracebacks show the README's own line numbers
        path.write_text("\n" * (b["line"] - 1) + b["code"], encoding="utf-8")
        run.append({"number": b["number"], "line": b["line"], "file": str(path)})
    assert run, "no README python block to run"
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "blocks.json").write_text(json.dumps(run), encoding="utf-8")
    (tmp_path / "driver.py").write_text(_DRIVER, encoding="utf-8")
    env = dict(os.environ, MPLBACKEND="Agg", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "blocks.json")],
        cwd=work, env=env, capture_output=True, text=True, timeout=900,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"A README python block failed (exit {proc.returncode}).\n"
            f"--- stdout (tail)\n{proc.stdout[-3000:]}\n--- stderr (tail)\n{proc.stderr[-6000:]}",
            pytrace=False,
        )
    # every block ran, and what the tour writes stayed in the working directory
    assert proc.stdout.count("README python block") == len(run), proc.stdout
    assert (work / "model_view.png").is_file()
    print("\n" + "\n".join(line for line in proc.stdout.splitlines()
                            if line.startswith("README python block")))
    if skipped:
        print("not run: " + "; ".join(skipped))


# ------------------------------------------------------------------ bash commands


def _bash_commands(*paths: Path) -> list[list[str]]:
    """The bash commands of READMEs, continuation lines joined, comments dropped."""
    commands = []
    blocks = [b for p in paths or (README,) for b in _blocks(p.read_text(encoding="utf-8"), "bash")]
    for block in blocks:
        logical = ""
        for line in block["code"].splitlines():
            if line.rstrip().endswith("\\"):
                logical += line.rstrip()[:-1] + " "
                continue
            logical += line
            words = shlex.split(logical, comments=True)
            logical = ""
            if words:
                commands.append(words)
    return commands


def _make_targets() -> set[str]:
    text = MAKEFILE.read_text(encoding="utf-8")
    targets = set()
    for m in re.finditer(r"^([A-Za-z0-9_.-]+(?:[ \t]+[A-Za-z0-9_.-]+)*)[ \t]*:(?!=)", text, re.M):
        targets.update(m.group(1).split())
    return targets


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise AssertionError("kerastrace's parser has no subcommands")


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def test_readme_names_real_make_targets():
    targets = _make_targets()
    text = README.read_text(encoding="utf-8") + SCRIPTS_README.read_text(encoding="utf-8")
    named = set(re.findall(r"\bmake ([a-z][a-z0-9_-]*)", text))
    assert {"demo", "test", "tensorboard"} <= named
    assert named <= targets, f"README names make targets the Makefile lacks: {named - targets}"


def test_readme_kerastrace_commands_parse():
    from kerastrace.cli import build_parser

    commands = [c for c in _bash_commands() if os.path.basename(c[0]) == "kerastrace"]
    assert len(commands) >= 8
    for words in commands:
        assert words[0] in ("kerastrace", ".venv/bin/kerastrace"), words
        parser = build_parser()
        argv = words[1:]
        try:
            parser.parse_args(argv)
        except SystemExit as exc:  # --help exits 0; a bad command exits 2
            assert exc.code == 0 and "--help" in argv, f"does not parse: {shlex.join(words)}"
        subcommands = [w for w in argv if not w.startswith("-")][:1]
        known = _option_strings(parser)
        if subcommands and subcommands[0] in {"demo", "profile", "explain", "attention",
                                              "neighbors", "influence", "generate", "lens"}:
            known |= _option_strings(_subparser(parser, subcommands[0]))
        else:
            assert argv == ["--help"], f"no subcommand in: {shlex.join(words)}"
        for w in argv:
            if w.startswith("-") and len(w) > 1:
                flag = w.split("=", 1)[0]
                assert flag in known, f"{flag} is not a flag of: {shlex.join(words)}"


def test_readme_scripts_and_tools_exist():
    commands = _bash_commands(README, SCRIPTS_README)
    text = README.read_text(encoding="utf-8")
    # scripts run in bash blocks, and the benchmark commands of the performance table
    runs = [c[1:] for c in commands if os.path.basename(c[0]).startswith("python")]
    runs += [shlex.split(m) for m in re.findall(r"`python ((?:benchmarks|scripts)/[^`]+)`", text)]
    assert runs
    for argv in runs:
        if argv[:2] == ["-m", "pytest"]:
            path = ROOT / argv[2]
            assert path.is_file(), f"README runs a missing test file: {argv[2]}"
            continue
        path = ROOT / argv[0]
        assert path.is_file(), f"README runs a missing file: {argv[0]}"
        source = path.read_text(encoding="utf-8")
        for w in argv[1:]:
            if w.startswith("--"):
                assert f'"{w.split("=", 1)[0]}"' in source, f"{argv[0]} has no flag {w}"
    for tool in {os.path.basename(c[0]) for c in commands if c[0].startswith(".venv/bin/")}:
        assert tool in {"kerastrace", "tensorboard", "python"}, tool
