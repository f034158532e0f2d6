"""The pruning space of a model: one representation for every model family.

A space is what `mdp space` prints and what every later stage agrees on:

- ``SpaceDim``: a prunable dimension (channels of a coupled group, heads, q/k dim, ...), its full size, the
  chunk ``step``, the allowed ``options`` (sizes, increasing, the last the full size), where it cuts
  tensors (``slices``), and the block (if any) whose removal also removes its importance.
- ``SpaceTerm``: an op (or fused group of ops) whose latency is measured as a function of up to three
  dims. ``op`` names the builder that makes a runnable module for given sizes (latency/ops registry);
  ``roles`` say which of the op's size arguments each dim fills (e.g. ``("cin", "cout")``); ``context``
  holds the fixed shape facts (kernel, stride, groups, feature map, tokens...). Terms with no dims are
  fixed parts (stem, head) measured once.
- ``SpaceBlock``: a residual branch that may be removed (``removable``) or a fixed part.

``signature()`` of a term identifies its LUT rows independent of the model it came from, which is what
lets LUT rows be reused across models (the paper's LUT reuse).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any


@dataclasses.dataclass(frozen=True)
class Slice:
    """Where a dim cuts a tensor: ``module`` (dotted path in the model), ``param`` and ``axis``."""

    module: str
    param: str
    axis: int


@dataclasses.dataclass
class SpaceDim:
    name: str
    size: int
    step: int
    options: tuple[int, ...]
    slices: list[Slice] = dataclasses.field(default_factory=list)
    block: str | None = None
    kind: str = "channels"  # channels | heads | qk | v | embed | mlp

    def chunk_count(self) -> int:
        return len(self.options)


@dataclasses.dataclass
class SpaceTerm:
    name: str
    op: str
    dims: tuple[str, ...]
    roles: tuple[str, ...]
    context: dict[str, Any]
    block: str | None = None

    def signature(self) -> str:
        """Canonical op identity (op kind, roles, fixed context) used as the LUT key, model-independent."""
        return self.op + json.dumps({"roles": list(self.roles), **self.context}, sort_keys=True, separators=(",", ":"))


@dataclasses.dataclass
class SpaceBlock:
    name: str
    removable: bool
    modules: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class PruningSpace:
    model_name: str
    family: str  # "cnn" | "vit"
    input_shape: tuple[int, int, int]
    dims: list[SpaceDim]
    terms: list[SpaceTerm]
    blocks: list[SpaceBlock]

    def dim(self, name: str) -> SpaceDim:
        for dim in self.dims:
            if dim.name == name:
                return dim
        raise KeyError(name)
