"""Random small problems with every structural feature the solver must handle exactly."""

from __future__ import annotations

import numpy as np

from mdp_cli.solve.problem import Block, Dim, ImportanceEntry, Term, make_problem


def random_problem(seed: int, max_dims: int = 4, max_term_dims: int = 3, with_blocks: bool = True):
    rng = np.random.default_rng(seed)
    n_dims = int(rng.integers(2, max_dims + 1))
    dims = []
    for i in range(n_dims):
        k = int(rng.integers(2, 4))
        step = int(rng.integers(1, 9))
        dims.append(Dim(f"d{i}", tuple(step * (j + 1) for j in range(k)), step))
    blocks = []
    if with_blocks:
        blocks = [Block(f"b{j}", removable=bool(rng.random() < 0.8)) for j in range(int(rng.integers(1, 3)))]
    block_names = [None] + [b.name for b in blocks]

    importance = []
    for dim in dims:
        scores = np.sort(rng.random(len(dim.options)))[::-1]
        gate = block_names[int(rng.integers(len(block_names)))]
        importance.append(ImportanceEntry(dim.name, np.cumsum(scores), gate))
        if blocks and rng.random() < 0.3:
            extra = np.cumsum(np.sort(rng.random(len(dim.options)))[::-1])
            importance.append(ImportanceEntry(dim.name, extra, blocks[0].name))

    terms = []
    for t in range(int(rng.integers(2, 6))):
        arity = int(rng.integers(0, max_term_dims + 1))
        chosen = tuple(rng.choice([d.name for d in dims], size=min(arity, n_dims), replace=False))
        shape = tuple(len(next(d for d in dims if d.name == n).options) for n in chosen)
        table = rng.random(shape) * 3 if shape else np.asarray(rng.random() * 3)
        gate = block_names[int(rng.integers(len(block_names)))]
        terms.append(Term(f"t{t}", chosen, np.asarray(table), gate))
    return make_problem(dims, importance, terms, blocks, constant_latency=float(rng.random()), name=f"random{seed}")
