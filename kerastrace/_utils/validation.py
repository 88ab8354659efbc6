"""Argument validation that raises Keras-style errors (never `assert`).

Every message names the argument, says what was expected and echoes what was
received, e.g.::

    Received an invalid value for argument `n_steps`, expected a positive
    integer. Received: n_steps=0
"""

from __future__ import annotations

import numbers

import numpy as np


def invalid(name: str, expected: str, value, hint: str | None = None) -> ValueError:
    """Build the standard `ValueError` for argument `name`."""
    msg = (
        f"Received an invalid value for argument `{name}`, expected {expected}. "
        f"Received: {name}={value!r}"
    )
    if hint:
        msg += f". {hint}"
    return ValueError(msg)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(name: str, value) -> int:
    """Return `value` as int if it is an integer >= 1, else raise."""
    if not _is_int(value) or int(value) < 1:
        raise invalid(name, "a positive integer", value)
    return int(value)


def check_non_negative_int(name: str, value) -> int:
    if not _is_int(value) or int(value) < 0:
        raise invalid(name, "a non-negative integer", value)
    return int(value)


def check_optional_positive_int(name: str, value) -> int | None:
    if value is None:
        return None
    return check_positive_int(name, value)


def check_probability(name: str, value, *, inclusive_high: bool = False) -> float:
    """A float in [0, 1) (or [0, 1] when `inclusive_high`)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = 0.0 <= v < 1.0 or (inclusive_high and v == 1.0)
    if not ok:
        rng = "[0, 1]" if inclusive_high else "[0, 1)"
        raise invalid(name, f"a float in {rng}", value)
    return float(value)


def check_non_negative_float(name: str, value) -> float:
    if (
        not isinstance(value, numbers.Real)
        or isinstance(value, bool)
        or not np.isfinite(value)
        or value < 0
    ):
        raise invalid(name, "a finite non-negative number", value)
    return float(value)


def check_one_of(name: str, value, choices) -> str:
    if value not in choices:
        raise invalid(name, f"one of {sorted(choices)}", value)
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise invalid(name, "a boolean", value)
    return bool(value)
