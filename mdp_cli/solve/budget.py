"""Latency budgets: a fraction of the dense latency (``0.5``) or an absolute value with a unit (``3.5ms``)."""

from __future__ import annotations

import re

from mdp_cli.errors import MdpError

_SECONDS_PER_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(s|ms|us|µs|%)?\s*$")


def parse_budget(text: str | float, dense_latency: float, units: str = "ms") -> float:
    """Return the budget in the problem's ``units``. A bare number is a fraction of the dense latency."""
    if isinstance(text, (int, float)):
        text = repr(float(text))
    match = _PATTERN.match(str(text))
    if not match:
        raise MdpError(f"budget {text!r}: expected a fraction of the dense latency (0.5), a percentage (50%) or a latency with a unit (3.5ms, 900us, 0.01s)")
    value, unit = float(match.group(1)), match.group(2)
    if value <= 0:
        raise MdpError(f"budget {text!r}: must be positive")
    if unit is None:
        return value * dense_latency
    if unit == "%":
        return value / 100 * dense_latency
    if units not in _SECONDS_PER_UNIT:
        raise MdpError(f"budget {text!r}: the problem's latency units {units!r} are not a time unit; give a fraction instead")
    return value * _SECONDS_PER_UNIT[unit] / _SECONDS_PER_UNIT[units]
