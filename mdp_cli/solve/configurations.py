"""A block's configurations: every combination of its private dims, per value of its interface dims,
reduced to the Pareto front of (latency, importance). Shared by the hub decomposition and the
enumerated variant of the monolithic MILP."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from mdp_cli.solve.problem import Problem

# A removable block whose dims meet the rest of the network through at most this many dims, and whose
# joint grid is at most this large, can be modelled by enumerating its configurations.
MAX_INTERFACE_DIMS = 2
MAX_ENUMERATED_CELLS = 2_000_000


@dataclasses.dataclass
class BlockConfigs:
    """A block as a choice among its Pareto-optimal configurations.

    For each value of its interface dims (the shared dims it touches: a stage's channels, the embedding),
    every combination of its private dims is evaluated (latency of its terms, importance of its entries);
    a combination that another beats on both (no more latency, strictly more importance) can never be
    needed by an optimum, so only the Pareto front is kept. Rows are configurations.
    """

    gate: str
    interface: tuple[str, ...]
    private: tuple[str, ...]
    interface_index: np.ndarray  # per config: flat index over interface options
    private_index: np.ndarray  # per config: (n_configs, len(private)) option indices
    latency: np.ndarray
    importance: np.ndarray
    interface_shape: tuple[int, ...] = ()
    variables: list = dataclasses.field(default_factory=list)
    resources: dict = dataclasses.field(default_factory=dict)  # count name -> per config (with counts only)


def enumerate_block(gate: str, interface: tuple[str, ...], private: tuple[str, ...], terms, entries,
                    problem: Problem, resources: tuple[str, ...] = (), pareto: bool = True) -> BlockConfigs:
    """``resources`` (counts such as "params" the terms carry): also total them per configuration, and
    keep a configuration unless another is at least as good in latency, importance and every count
    (``pareto=False``: keep every configuration, latency ascending per interface value; the filter is
    quadratic in the configurations per interface value)."""
    grid_dims = interface + private
    shape = [len(problem.dim(d).options) for d in grid_dims]
    latency = np.zeros(shape)
    importance = np.zeros(shape)
    counts = {name: np.zeros(shape) for name in resources}
    for term in terms:
        latency = latency + broadcast(term.table, term.dims, grid_dims)
        for name in resources:
            if name in term.resources:
                counts[name] = counts[name] + broadcast(np.asarray(term.resources[name], dtype=float), term.dims, grid_dims)
    for entry in entries:
        importance = importance + broadcast(entry.values, (entry.dim,), grid_dims)
    n_interface = math.prod(shape[: len(interface)])
    latency = np.broadcast_to(latency, shape).reshape(n_interface, -1)
    importance = np.broadcast_to(importance, shape).reshape(n_interface, -1)
    if resources and not pareto:
        order = np.argsort(latency, axis=-1, kind="stable")
        rows = np.repeat(np.arange(n_interface), latency.shape[1])
        flat_private = order.ravel()
        private_index = (np.stack(np.unravel_index(flat_private, shape[len(interface):]), axis=-1) if private
                         else np.zeros((len(rows), 0), int))
        return BlockConfigs(gate, interface, private, rows, private_index, latency[rows, flat_private],
                            importance[rows, flat_private], tuple(shape[: len(interface)]),
                            resources={name: np.broadcast_to(counts[name], shape).reshape(n_interface, -1)[rows, flat_private]
                                       for name in sorted(counts)})
    if resources:
        return _enumerate_with_counts(gate, interface, private, shape, latency, importance,
                                      {k: np.broadcast_to(v, shape).reshape(n_interface, -1) for k, v in counts.items()})
    # Pareto front per interface value: sort by latency (ties: more importance first) and keep a
    # configuration only if it has strictly more importance than every cheaper one.
    order = np.lexsort((-importance, latency), axis=-1)
    sorted_importance = np.take_along_axis(importance, order, axis=-1)
    best_before = np.maximum.accumulate(sorted_importance, axis=-1)
    best_before = np.concatenate([np.full((n_interface, 1), -np.inf), best_before[:, :-1]], axis=-1)
    keep = sorted_importance > best_before
    rows, cols = np.nonzero(keep)
    flat_private = order[rows, cols]
    private_shape = shape[len(interface):]
    private_index = np.stack(np.unravel_index(flat_private, private_shape), axis=-1) if private else np.zeros((len(rows), 0), int)
    return BlockConfigs(gate, interface, private, rows, private_index,
                         latency[rows, flat_private], importance[rows, flat_private], tuple(shape[: len(interface)]))


def _enumerate_with_counts(gate, interface, private, shape, latency, importance, counts) -> BlockConfigs:
    """Per interface value, the configurations no other beats on latency, importance and every count
    at once (a multi-criteria front: with a count capped, a slower configuration may be the one that fits)."""
    names = sorted(counts)
    rows_out, flat_out = [], []
    for row in range(latency.shape[0]):
        # Sorted by latency (ties: importance descending, then counts): a configuration is dropped when one
        # before it is no worse in every count and has at least its importance.
        keys = [counts[name][row] for name in reversed(names)] + [-importance[row], latency[row]]
        order = np.lexsort(keys)
        imp = importance[row][order]
        cost = np.stack([counts[name][row][order] for name in names], axis=1)
        keep = np.ones(order.size, bool)
        for start in range(0, order.size, 512):
            stop = min(order.size, start + 512)
            no_worse = (imp[None, :stop] >= imp[start:stop, None]) & \
                np.all(cost[None, :stop, :] <= cost[start:stop, None, :], axis=2)
            no_worse &= np.arange(stop)[None, :] < np.arange(start, stop)[:, None]  # only those before it
            keep[start:stop] = ~no_worse.any(axis=1)
        flat_out.append(order[keep])
        rows_out.append(np.full(int(keep.sum()), row))
    rows = np.concatenate(rows_out) if rows_out else np.zeros(0, int)
    flat_private = np.concatenate(flat_out) if flat_out else np.zeros(0, int)
    private_shape = shape[len(interface):]
    private_index = (np.stack(np.unravel_index(flat_private, private_shape), axis=-1) if private
                     else np.zeros((len(rows), 0), int))
    return BlockConfigs(gate, interface, private, rows, private_index, latency[rows, flat_private],
                        importance[rows, flat_private], tuple(shape[: len(interface)]),
                        resources={name: counts[name][rows, flat_private] for name in names})


def broadcast(table: np.ndarray, dims: tuple[str, ...], host_dims: tuple[str, ...]) -> np.ndarray:
    """View ``table`` (over ``dims``) as an array over ``host_dims`` by transposing and adding unit axes."""
    order = [dims.index(d) for d in host_dims if d in dims]
    moved = np.transpose(table, order) if order else table
    shape = [moved.shape[order.index(dims.index(d))] if d in dims else 1 for d in host_dims]
    return np.reshape(moved, shape)
