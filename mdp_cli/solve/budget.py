"""Latency budgets: a fraction of the dense latency (``0.5``) or an absolute value with a unit (``3.5ms``).

An absolute budget is converted with exact rational arithmetic, so ``125009us`` on a problem in ``us`` is
125009.0 exactly (a float conversion through seconds would give 125008.99999999999 and exclude the
configuration that sits on the budget)."""

from __future__ import annotations

import re
from fractions import Fraction

from mdp_cli.errors import MdpError

_SECONDS_PER_UNIT = {"s": Fraction(1), "ms": Fraction(1, 10**3), "us": Fraction(1, 10**6), "µs": Fraction(1, 10**6)}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(s|ms|us|µs|%)?\s*$")


def parse_budget(text: str | float, dense_latency: float, units: str = "ms") -> float:
    """Return the budget in the problem's ``units``. A bare number is a fraction of the dense latency."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise MdpError(f"budget {text!r}: expected a fraction of the dense latency (0.5), a percentage (50%) "
                       f"or a latency with a unit (3.5ms)")
    if isinstance(text, (int, float)):
        text = repr(float(text))
    match = _PATTERN.match(text)
    if not match:
        raise MdpError(f"budget {text!r}: expected a fraction of the dense latency (0.5), a percentage (50%) or a latency with a unit (3.5ms, 900us, 0.01s)")
    number, unit = match.group(1), match.group(2)
    value = Fraction(number)
    if value <= 0:
        raise MdpError(f"budget {text!r}: must be positive")
    if unit is None:
        if value > 1:
            # A bare 12 is far more likely 12 ms or 12 % than twelve times the dense latency.
            raise MdpError(f"budget {text!r}: a bare number is a fraction of the dense latency (at most 1); "
                           f"write {number}ms for an absolute latency or {number}% for a percentage")
        return float(value) * dense_latency
    if unit == "%":
        return float(value / 100) * dense_latency
    if units not in _SECONDS_PER_UNIT:
        raise MdpError(f"budget {text!r}: the problem's latency units {units!r} are not a time unit; give a fraction instead")
    return float(value * _SECONDS_PER_UNIT[unit] / _SECONDS_PER_UNIT[units])
