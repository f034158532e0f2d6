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


def enumerate_block(gate: str, interface: tuple[str, ...], private: tuple[str, ...], terms, entries,
                    problem: Problem) -> BlockConfigs:
    grid_dims = interface + private
    shape = [len(problem.dim(d).options) for d in grid_dims]
    latency = np.zeros(shape)
    importance = np.zeros(shape)
    for term in terms:
        latency = latency + broadcast(term.table, term.dims, grid_dims)
    for entry in entries:
        importance = importance + broadcast(entry.values, (entry.dim,), grid_dims)
    n_interface = math.prod(shape[: len(interface)])
    latency = np.broadcast_to(latency, shape).reshape(n_interface, -1)
    importance = np.broadcast_to(importance, shape).reshape(n_interface, -1)
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



def broadcast(table: np.ndarray, dims: tuple[str, ...], host_dims: tuple[str, ...]) -> np.ndarray:
    """View ``table`` (over ``dims``) as an array over ``host_dims`` by transposing and adding unit axes."""
    order = [dims.index(d) for d in host_dims if d in dims]
    moved = np.transpose(table, order) if order else table
    shape = [moved.shape[order.index(dims.index(d))] if d in dims else 1 for d in host_dims]
    return np.reshape(moved, shape)
