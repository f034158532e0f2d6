"""Parameter and FLOP counts of a latency term at every option combination, for caps beside the budget.

A term's op builder (``latency/ops.py``) makes exactly the module the exported model runs for that term,
so its parameters are counted on that module and its FLOPs (2 x multiply-accumulates of its convs and
linears, per image) by running it once at batch 1 with hooks.

Building every option combination of a ViT attention term would take minutes, but these counts are
multilinear in the sizes (each weight matrix is a product of two widths, biases and norms one width), so
they are counted at the corners of the option grid and interpolated multilinearly, which is exact for
multilinear counts. Two interior points are counted as well to check that; a term whose counts are not
multilinear (it happens, e.g., when a width fixes a group count) is counted at every combination.
"""

from __future__ import annotations

import itertools
from typing import Any, Mapping

import numpy as np

from mdp_cli.latency.ops import get_op
from mdp_cli.space.core import PruningSpace, SpaceTerm

RESOURCES = ("params", "flops")


def module_counts(module: Any, example: Any) -> tuple[float, float]:
    """(parameters, FLOPs per image) of ``module`` on one ``example`` (batch 1)."""
    import torch
    from torch import nn

    macs = 0

    def conv(mod, _inp, out):
        nonlocal macs
        macs += int(np.prod(out.shape[1:])) * (mod.in_channels // mod.groups) * int(np.prod(mod.kernel_size))

    def linear(mod, _inp, out):
        nonlocal macs
        macs += int(np.prod(out.shape[1:-1])) * mod.in_features * mod.out_features

    hooks = [m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
             for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.inference_mode():
            module.eval()(example)
    finally:
        for hook in hooks:
            hook.remove()
    return float(sum(p.numel() for p in module.parameters())), float(2 * macs)


class TermCounter:
    """Counts of terms, cached by (signature, sizes): terms sharing an op signature are counted once."""

    def __init__(self) -> None:
        self.cache: dict[tuple, tuple[float, float]] = {}

    def at(self, term: SpaceTerm, sizes: Mapping[str, int]) -> tuple[float, float]:
        key = (term.signature(), tuple(sorted(sizes.items())))
        if key not in self.cache:
            module, example = get_op(term.op)(term.context, dict(sizes), 1)
            self.cache[key] = module_counts(module, example)
        return self.cache[key]

    def tables(self, space: PruningSpace, term: SpaceTerm) -> dict[str, np.ndarray]:
        """``{"params": table, "flops": table}`` over the term's dims' options (the latency table's shape)."""
        options = [list(space.dim(d).options) for d in term.dims]
        if not options:
            params, flops = self.at(term, {})
            return {"params": np.asarray(params), "flops": np.asarray(flops)}

        def sizes(index) -> dict[str, int]:
            return {role: int(options[k][i]) for k, (role, i) in enumerate(zip(term.roles, index))}

        corners = [sorted({0, len(o) - 1}) for o in options]
        corner_values = np.zeros([len(c) for c in corners] + [2])
        for index in itertools.product(*(range(len(c)) for c in corners)):
            corner_values[index] = self.at(term, sizes([c[i] for c, i in zip(corners, index)]))
        table = corner_values
        for axis, (corner, opts) in enumerate(zip(corners, options)):
            grid = [opts[i] for i in corner]
            table = np.apply_along_axis(lambda col: np.interp(opts, grid, col) if len(grid) > 1
                                        else np.full(len(opts), col[0]), axis, table)
        # two interior points on every axis that has one (a third and a half of the way along)
        checks = [tuple(len(o) // 3 for o in options), tuple(len(o) // 2 for o in options)]
        if any(not np.allclose(table[index], self.at(term, sizes(index)), rtol=1e-9, atol=0.5) for index in checks):
            for index in itertools.product(*(range(len(o)) for o in options)):
                table[index] = self.at(term, sizes(index))
        return {"params": np.round(table[..., 0]), "flops": np.round(table[..., 1])}


def space_counts(space: PruningSpace) -> dict[str, dict[str, np.ndarray]]:
    """``term name -> {"params", "flops"}`` for every term of ``space``."""
    counter = TermCounter()
    return {term.name: counter.tables(space, term) for term in space.terms}
