"""Exact mixed-integer linear form of the MDP program, built as a Pyomo model.

The paper's program multiplies binaries (one-hot option vectors of the dims a latency table depends on,
and block variables). Every such product is replaced by continuous "joint" variables whose marginals
are the one-hot vectors; with integral marginals the joint is forced to their outer product, so no
optimum changes (an exact reformulation, not a relaxation):

- ``x[a, k]`` binary, ``sum_k x[a, k] = 1``: dim ``a`` takes option ``k``.
- ``kappa[b]`` binary: removable block ``b`` is kept.
- gated marginal ``u[b, a, k] = kappa[b] * x[a, k]``, written ``u <= x``, ``sum_k u = kappa[b]``.
- a term over dims ``D`` gated by ``g`` gets ``w[t, i_1..i_n] >= 0`` whose marginal on each dim of
  ``D`` equals that dim's (gated) vector; its latency is ``sum table * w``.
- terms with the same gate that share two dims must agree on that pair's joint marginal, and terms whose
  dims nest inside another term's of the same gate are merged into it: both tighten the LP relaxation.
- ``enumerate_blocks=True`` (the ``blocks`` formulation) replaces a removable block's joints by weights
  on its Pareto-optimal configurations (configurations.py), tied to its private dims' option vectors.

This is the general path (``--formulation monolithic``); problems whose blocks share few dims are solved
faster by the hub decomposition (decompose.py). No torch here: problems are plain arrays.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import defaultdict

import numpy as np
import pyomo.environ as pyo
from pyomo.core.expr.numeric_expr import LinearExpression

from mdp_cli.solve.configurations import (MAX_ENUMERATED_CELLS, MAX_INTERFACE_DIMS, BlockConfigs, broadcast,
                                          enumerate_block)
from mdp_cli.solve.problem import Problem, Term


@dataclasses.dataclass
class _MergedTerm:
    dims: tuple[str, ...]
    table: np.ndarray
    gate: str | None
    names: list[str]
    resources: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # merged like ``table``


def merge_terms(problem: Problem, gates_enabled: bool, resources: tuple[str, ...] = (),
                constants: dict[str, float] | None = None) -> tuple[list[_MergedTerm], float]:
    """Group terms by gate; fold every multi-dim term into a term of the same gate over a superset of its
    dims (fewer joint variables, tighter relaxation). Returns the merged terms and the ungated constant.
    ``resources`` (e.g. "params") are merged alongside the latency tables; their ungated constants are
    added to ``constants``."""
    removable = {b.name for b in problem.blocks if b.removable} if gates_enabled else set()
    constant = problem.constant_latency
    constants = {} if constants is None else constants
    by_gate: dict[str | None, list[Term]] = defaultdict(list)
    for term in problem.terms:
        gate = term.block if term.block in removable else None
        dims = tuple(d for d in term.dims if len(problem.dim(d).options) > 1)
        index = tuple(slice(None) if d in dims else 0 for d in term.dims)
        # single-option dims carry no choice: drop their axes
        table = term.table[index]
        counts = {k: np.asarray(term.resources[k], dtype=float)[index] if k in term.resources
                  else np.zeros(np.shape(table)) for k in resources}
        if not dims and gate is None:
            constant += float(table)
            for k, v in counts.items():
                constants[k] = constants.get(k, 0.0) + float(v)
            continue
        by_gate[gate].append(Term(term.name, dims, np.asarray(table, dtype=float), gate, counts))

    merged: list[_MergedTerm] = []
    for gate, terms in by_gate.items():
        hosts: list[_MergedTerm] = []
        # Largest dim sets first so that every smaller term finds its host if one exists.
        for term in sorted(terms, key=lambda t: -len(t.dims)):
            host = None
            if len(term.dims) >= 2 or len(term.dims) == 0:
                host = next((h for h in hosts if set(term.dims) <= set(h.dims)), None)
            if host is None:
                for h in hosts:  # 1-dim terms join an existing 1-dim term of the same dim
                    if len(term.dims) == 1 and h.dims == term.dims:
                        host = h
                        break
            if host is None:
                hosts.append(_MergedTerm(term.dims, term.table.copy(), gate, [term.name],
                                         {k: v.copy() for k, v in term.resources.items()}))
            else:
                host.table = host.table + broadcast(term.table, term.dims, host.dims)
                for k, v in term.resources.items():
                    host.resources[k] = host.resources[k] + broadcast(v, term.dims, host.dims)
                host.names.append(term.name)
        merged.extend(hosts)
    return merged, constant


class _Rows:
    """Collects linear rows and adds them to a ConstraintList as LinearExpressions (fast to build)."""

    def __init__(self, model: pyo.ConcreteModel):
        self.constraints = pyo.ConstraintList()
        model.rows = self.constraints

    def equal(self, coefs: list[float], variables: list, rhs: float = 0.0) -> None:
        self.constraints.add(LinearExpression(constant=0.0, linear_coefs=coefs, linear_vars=variables) == rhs)

    def at_most(self, coefs: list[float], variables: list, rhs: float = 0.0) -> None:
        self.constraints.add(LinearExpression(constant=0.0, linear_coefs=coefs, linear_vars=variables) <= rhs)



@dataclasses.dataclass
class Formulation:
    model: pyo.ConcreteModel
    x: dict[str, list]  # dim -> option variables, for dims not private to an enumerated block
    kappa: dict[str, object]  # removable block -> binary variable
    blocks: list[BlockConfigs]
    latency_coefs: list[float]
    latency_vars: list
    latency_constant: float
    importance_coefs: list[float]
    importance_vars: list
    stats: dict[str, int]
    full_index: dict[str, int]
    resource_coefs: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # aligned with latency_vars
    resource_constants: dict[str, float] = dataclasses.field(default_factory=dict)

    def resource_expression(self, name: str):
        return LinearExpression(constant=self.resource_constants.get(name, 0.0),
                                linear_coefs=self.resource_coefs[name], linear_vars=self.latency_vars)

    def latency_expression(self):
        return LinearExpression(constant=self.latency_constant, linear_coefs=self.latency_coefs,
                                linear_vars=self.latency_vars)

    def importance_expression(self):
        return LinearExpression(constant=0.0, linear_coefs=self.importance_coefs, linear_vars=self.importance_vars)

    def chosen(self) -> tuple[dict[str, int], dict[str, bool]]:
        """Option index of every dim and kept flag of every removable block, from the solver's values."""
        choice = {dim: int(np.argmax([pyo.value(v) for v in variables])) for dim, variables in self.x.items()}
        # A block that gates nothing never reaches the solver; keeping it changes nothing.
        kept = {block: var.value is None or var.value > 0.5 for block, var in self.kappa.items()}
        for configs in self.blocks:
            if not kept[configs.gate]:  # a removed block's private dims have no effect: report full size
                for dim in configs.private:
                    choice[dim] = self.full_index[dim]
        return choice, kept


def build_formulation(
    problem: Problem,
    latency_problem: Problem | None = None,
    blocks_enabled: bool = True,
    enumerate_blocks: bool = False,
    resources: tuple[str, ...] = (),
    allowed: dict[str, set[int]] | None = None,
) -> Formulation:
    """Build the exact MILP. ``latency_problem`` (same dims/blocks) supplies the latency terms when they
    differ from the ones that define the problem (the linear-latency ablation); it defaults to ``problem``.
    ``enumerate_blocks=False`` models every block with joint (hull) variables only. ``resources``: counts
    carried by the terms ("params", "flops") whose linear expressions are built beside the latency's, for
    constraints; ``allowed``: per dim, the option indices it may take (others are fixed to zero)."""
    latency_problem = latency_problem or problem
    resource_constants: dict[str, float] = {}
    merged, latency_constant = merge_terms(latency_problem, blocks_enabled, resources, resource_constants)
    removable = [b.name for b in problem.blocks if b.removable] if blocks_enabled else []
    entries = [(e, e.block if e.block in removable else None) for e in problem.importance]

    # Which dims live inside a single removable block (private) and which blocks can be enumerated.
    gates_of_dim: dict[str, set] = defaultdict(set)
    for term in merged:
        for d in term.dims:
            gates_of_dim[d].add(term.gate)
    for entry, gate in entries:
        if np.ptp(entry.values) > 0:
            gates_of_dim[entry.dim].add(gate)
    enumerated: dict[str, BlockConfigs] = {}
    if enumerate_blocks:
        for gate in removable:
            gate_terms = [t for t in merged if t.gate == gate]
            gate_entries = [e for e, g in entries if g == gate]
            dims_used = {d for t in gate_terms for d in t.dims} | {e.dim for e in gate_entries}
            private = tuple(sorted(d for d in dims_used if gates_of_dim[d] == {gate}))
            interface = tuple(sorted(dims_used - set(private)))
            cells = math.prod(len(problem.dim(d).options) for d in dims_used)
            if len(interface) <= MAX_INTERFACE_DIMS and cells <= MAX_ENUMERATED_CELLS:
                # With counts, a configuration stays unless another is no worse in latency, importance and
                # every count (a slower one may be the one that fits a cap).
                enumerated[gate] = enumerate_block(gate, interface, private, gate_terms, gate_entries, problem,
                                                   resources)

    model = pyo.ConcreteModel(name=problem.name or "mdp")
    rows = _Rows(model)
    free_dims = problem.dims
    offsets = np.cumsum([0] + [len(d.options) for d in free_dims])
    model.x = pyo.Var(range(int(offsets[-1])), domain=pyo.Binary)
    x = {d.name: [model.x[i] for i in range(offsets[j], offsets[j + 1])] for j, d in enumerate(free_dims)}
    for dim in free_dims:
        rows.equal([1.0] * len(dim.options), x[dim.name], 1.0)
        if allowed is not None and dim.name in allowed:
            for k, var in enumerate(x[dim.name]):
                if k not in allowed[dim.name]:
                    var.fix(0)
        if not gates_of_dim.get(dim.name):  # nothing depends on it: keep it whole, not arbitrary
            for k, var in enumerate(x[dim.name]):
                var.fix(1 if k == dim.full_index else 0)
    model.kappa = pyo.Var(range(len(removable)), domain=pyo.Binary)
    kappa = {b: model.kappa[i] for i, b in enumerate(removable)}
    model.aux = pyo.VarList(bounds=(0, 1))

    gated: dict[tuple[str, str], list] = {}

    def marginal(gate: str | None, dim: str) -> list:
        """The option vector of ``dim`` times the kept flag of ``gate`` (exact: u <= x, sum u = kappa)."""
        if gate is None:
            return x[dim]
        if (gate, dim) not in gated:
            u = [model.aux.add() for _ in x[dim]]
            rows.equal([1.0] * len(u) + [-1.0], u + [kappa[gate]])
            for uk, xk in zip(u, x[dim]):
                rows.at_most([1.0, -1.0], [uk, xk])
            gated[(gate, dim)] = u
        return gated[(gate, dim)]

    latency_coefs: list[float] = []
    latency_vars: list = []
    resource_coefs: dict[str, list[float]] = {k: [] for k in resources}
    importance_coefs: list[float] = []
    importance_vars: list = []
    pair_marginals: dict = {}
    counts = {"joint_variables": 0, "config_variables": 0}

    def joint(gate: str | None, dims: tuple[str, ...], table: np.ndarray | None = None) -> tuple[list, list]:
        """Joint variables over ``dims`` whose marginals are the dims' (gated) option vectors."""
        shape = tuple(len(problem.dim(d).options) for d in dims)
        cells = list(itertools.product(*(range(n) for n in shape)))
        variables = [model.aux.add() for _ in cells]
        counts["joint_variables"] += len(variables)
        for axis, dim in enumerate(dims):
            vector = marginal(gate, dim)
            groups: list[list] = [[] for _ in range(shape[axis])]
            for cell, var in zip(cells, variables):
                groups[cell[axis]].append(var)
            for k, group in enumerate(groups):
                rows.equal([1.0] * len(group) + [-1.0], group + [vector[k]])
        # Terms of one gate that share a pair of dims must agree on that pair (junction-tree separators).
        for a, b in itertools.combinations(range(len(dims)), 2):
            _link_pair(rows, pair_marginals, gate, dims, cells, variables, a, b)
        return cells, variables

    for term in merged:
        if term.gate in enumerated:
            continue
        if not term.dims:  # gated constant
            latency_coefs.append(float(term.table))
            latency_vars.append(kappa[term.gate])
            for k in resources:
                resource_coefs[k].append(float(term.resources[k]))
        elif len(term.dims) == 1:
            latency_coefs.extend(float(c) for c in term.table)
            latency_vars.extend(marginal(term.gate, term.dims[0]))
            for k in resources:
                resource_coefs[k].extend(float(c) for c in term.resources[k])
        else:
            cells, variables = joint(term.gate, term.dims)
            latency_coefs.extend(float(term.table[c]) for c in cells)
            latency_vars.extend(variables)
            for k in resources:
                resource_coefs[k].extend(float(term.resources[k][c]) for c in cells)

    for entry, gate in entries:
        if gate in enumerated:
            continue
        importance_coefs.extend(float(v) for v in entry.values)
        importance_vars.extend(marginal(gate, entry.dim))

    for gate, configs in enumerated.items():
        # Configuration weights are continuous: integral private option vectors pin them to one config.
        variables = [model.aux.add() for _ in range(len(configs.latency))]
        configs.variables = variables
        counts["config_variables"] += len(variables)
        latency_coefs.extend(configs.latency.tolist())
        latency_vars.extend(variables)
        for k in resources:
            resource_coefs[k].extend(configs.resources[k].tolist())
        importance_coefs.extend(configs.importance.tolist())
        importance_vars.extend(variables)
        rows.equal([1.0] * len(variables) + [-1.0], variables + [kappa[gate]])
        for axis, dim in enumerate(configs.private):
            _group_rows(rows, variables, configs.private_index[:, axis], marginal(gate, dim), equal=True)
        if configs.interface:
            # Interface value indicator: the dim's own vector, or a joint over the two interface dims.
            if len(configs.interface) == 1:
                indicator = x[configs.interface[0]]
            else:
                _, indicator = joint(None, configs.interface)
            _group_rows(rows, variables, configs.interface_index, indicator, equal=False)

    stats = {
        "binaries": int(offsets[-1]) + len(removable),
        "continuous": len(model.aux),
        **counts,
        "enumerated_blocks": len(enumerated),
        "rows": len(model.rows),
        "merged_terms": len(merged),
    }
    return Formulation(model, x, kappa, list(enumerated.values()), latency_coefs, latency_vars, latency_constant,
                       importance_coefs, importance_vars, stats, {d.name: d.full_index for d in problem.dims},
                       resource_coefs, resource_constants)


def _link_pair(rows: _Rows, registry, gate, dims, cells, variables, a: int, b: int) -> None:
    da, db = dims[a], dims[b]
    flip = da > db
    key = (gate, *sorted((da, db)))
    groups: dict[tuple[int, int], list] = defaultdict(list)
    for cell, var in zip(cells, variables):
        groups[(cell[b], cell[a]) if flip else (cell[a], cell[b])].append(var)
    if key not in registry:
        registry[key] = groups
        return
    first = registry[key]
    for pair, group in groups.items():
        other = first[pair]
        rows.equal([1.0] * len(group) + [-1.0] * len(other), group + other)


def _group_rows(rows: _Rows, variables: list, labels: np.ndarray, targets: list, equal: bool) -> None:
    """For each label value s: sum of the variables labelled s equals (or is at most) targets[s]."""
    groups: list[list] = [[] for _ in targets]
    for var, label in zip(variables, labels):
        groups[int(label)].append(var)
    for s, group in enumerate(groups):
        if equal:
            rows.equal([1.0] * len(group) + [-1.0], group + [targets[s]])
        elif group:
            rows.at_most([1.0] * len(group) + [-1.0], group + [targets[s]])
