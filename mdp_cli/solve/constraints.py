"""Constraints beside the latency budget: caps on parameters and FLOPs (counts the problem's terms carry),
a least fraction of every dim kept, and widths restricted to multiples of a number.

Every one only removes configurations, so when the latency-only optimum happens to satisfy them it is
also the constrained optimum, and the solver checks that first. Otherwise the hub decomposition solves
them (options restricted, counts carried beside latency, each branch's knapsack a small Pyomo model with
one row per cap solved by HiGHS) where it applies, else the monolithic Pyomo model."""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from mdp_cli.errors import MdpError
from mdp_cli.solve.problem import RESOURCES, Dim, ImportanceEntry, Problem, Term

_COUNT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgG]?)\s*$")
_SCALE = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}


@dataclasses.dataclass(frozen=True)
class Constraints:
    max_params: float | None = None  # total "params" count of the kept configuration
    max_flops: float | None = None  # total "flops" count
    min_keep: float | None = None  # every dim keeps at least this fraction of its full size
    multiple: int | None = None  # every width a multiple of this (the full size is always allowed)

    @classmethod
    def from_options(cls, max_params=None, max_flops=None, min_keep=None, multiple=None) -> "Constraints":
        """Check and normalise user values (counts may be written 10M, 2.5G, 800k)."""
        if min_keep is not None and not (isinstance(min_keep, (int, float)) and 0 < min_keep <= 1):
            raise MdpError(f"min_keep {min_keep!r}: expected a fraction of each dim's size in (0, 1], e.g. 0.25")
        if multiple is not None and (isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1):
            raise MdpError(f"multiple {multiple!r}: expected a positive whole number of channels, e.g. 8")
        return cls(_count("max_params", max_params), _count("max_flops", max_flops), min_keep, multiple)

    @property
    def active(self) -> bool:
        return any(v is not None for v in dataclasses.astuple(self))

    def caps(self) -> dict[str, float]:
        return {name: cap for name, cap in (("params", self.max_params), ("flops", self.max_flops)) if cap is not None}

    def allowed(self, problem: Problem) -> dict[str, set[int]]:
        """Per dim, the option indices these constraints allow (the full size always)."""
        out = {}
        for dim in problem.dims:
            keep = {k for k, size in enumerate(dim.options)
                    if k == dim.full_index or ((self.min_keep is None or size >= self.min_keep * dim.size)
                                               and (self.multiple is None or size % self.multiple == 0))}
            if len(keep) < len(dim.options):
                out[dim.name] = keep
        return out

    def check_problem(self, problem: Problem) -> None:
        for name in self.caps():
            if not problem.has_resource(name):
                raise MdpError(f"max_{name}: the problem's terms carry no '{name}' counts; rebuild it with them "
                               f"(a term's optional '{name}' table, docs/schemas.md)")
        assert set(self.caps()) <= set(RESOURCES)

    def satisfied(self, problem: Problem, choice, kept) -> bool:
        if any(problem.resource(name, choice, kept) > cap for name, cap in self.caps().items()):
            return False
        return all(choice[d] in options for d, options in self.allowed(problem).items())

    def describe(self) -> str:
        parts = [f"{name} <= {cap:g}" for name, cap in self.caps().items()]
        if self.min_keep is not None:
            parts.append(f"every dim >= {self.min_keep:.0%} of its size")
        if self.multiple is not None:
            parts.append(f"widths multiples of {self.multiple}")
        return ", ".join(parts)


def _count(name: str, value) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        match = _COUNT.match(str(value))
        if not match:
            raise MdpError(f"{name} {value!r}: expected a count such as 10000000, 10M, 2.5G or 800k")
        number = float(match.group(1)) * _SCALE[match.group(2).lower()]
    if not number > 0:
        raise MdpError(f"{name} {value!r}: must be positive")
    return number


def restrict(problem: Problem, allowed: dict[str, set[int]]) -> tuple[Problem, dict[str, list[int]]]:
    """The problem with only the ``allowed`` options of each dim (tables, counts and importance sliced to
    them), and per dim the original index of each option it keeps."""
    keep = {d.name: sorted(allowed.get(d.name, range(len(d.options)))) for d in problem.dims}

    def take(table, dims):
        return np.asarray(table, dtype=float)[np.ix_(*(keep[d] for d in dims))] if dims else np.asarray(table, float)

    dims = [Dim(d.name, tuple(d.options[k] for k in keep[d.name]), d.step) for d in problem.dims]
    importance = [ImportanceEntry(e.dim, e.values[keep[e.dim]], e.block) for e in problem.importance]
    terms = [Term(t.name, t.dims, take(t.table, t.dims), t.block, {k: take(v, t.dims) for k, v in t.resources.items()})
             for t in problem.terms]
    return Problem(dims, importance, terms, list(problem.blocks), problem.constant_latency, problem.units,
                   problem.name), keep
