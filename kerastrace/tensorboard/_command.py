"""The command that opens a log directory in the TensorBoard installed with kerastrace.

No TensorFlow import: the CLI prints it after writing a log directory.
"""

from __future__ import annotations

import os


def tensorboard_command() -> str:
    """The command that starts the TensorBoard installed with this Python (and its plugins).

    `"tensorboard"` when the PATH finds that one, else its path (relative to the
    working directory when below it, e.g. `.venv/bin/tensorboard` after `make demo`).
    """
    import shutil
    import sys

    here = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    if not os.path.isfile(here):
        return "tensorboard"
    found = shutil.which("tensorboard")
    if found and os.path.realpath(found) == os.path.realpath(here):
        return "tensorboard"
    rel = os.path.relpath(here)
    return rel if not rel.startswith("..") else here


def open_command(logdir) -> str:
    """`"<tensorboard> --logdir <logdir>"` for the TensorBoard of this Python.

    Example:

    >>> open_command("runs/x").endswith("--logdir runs/x")
    True
    """
    return f"{tensorboard_command()} --logdir {logdir}"
