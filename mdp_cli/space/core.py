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
    align: int = 1  # elements pruned together (channels per group of a grouped conv); options are multiples
    coupled: list[str] = dataclasses.field(default_factory=list)  # the layers whose outputs share this dim

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

    # -- serialisation and display --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "family": self.family,
            "input_shape": list(self.input_shape),
            "dims": [dataclasses.asdict(d) for d in self.dims],
            "terms": [dataclasses.asdict(t) for t in self.terms],
            "blocks": [dataclasses.asdict(b) for b in self.blocks],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruningSpace":
        dims = []
        for d in data["dims"]:
            d = dict(d)
            d["options"] = tuple(d["options"])
            d["slices"] = [Slice(**s) for s in d.get("slices", [])]
            dims.append(SpaceDim(**d))
        terms = []
        for t in data["terms"]:
            t = dict(t)
            t["dims"], t["roles"] = tuple(t["dims"]), tuple(t["roles"])
            terms.append(SpaceTerm(**t))
        return cls(data["model"], data["family"], tuple(data["input_shape"]), dims, terms,
                   [SpaceBlock(**b) for b in data["blocks"]])

    def describe(self) -> str:
        """Human-readable summary: dims (size, step, options, coupled layers), blocks, term counts."""
        lines = [f"model {self.model_name} ({self.family}), input {list(self.input_shape)}",
                 f"{len(self.dims)} prunable dims:"]
        for d in self.dims:
            opts = list(d.options)
            shown = opts if len(opts) <= 8 else opts[:3] + ["..."] + opts[-2:]
            extra = f" align={d.align}" if d.align > 1 else ""
            blk = f" block={d.block}" if d.block else ""
            coupled = f" coupled={d.coupled}" if len(d.coupled) > 1 else ""
            lines.append(f"  {d.name}: size={d.size} step={d.step} options({len(opts)})={shown}{extra}{blk}{coupled}")
        removable = [b for b in self.blocks if b.removable]
        fixed = [b for b in self.blocks if not b.removable]
        lines.append(f"{len(removable)} removable blocks: {', '.join(b.name for b in removable)}")
        lines.append(f"{len(fixed)} fixed parts:")
        for b in fixed:
            lines.append(f"  {b.name}: {', '.join(b.modules)}")
        counts: dict[str, int] = {}
        for t in self.terms:
            counts[t.op] = counts.get(t.op, 0) + 1
        lines.append(f"{len(self.terms)} latency terms: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        lines.append(f"{len({t.signature() for t in self.terms})} distinct op signatures (LUT keys)")
        return "\n".join(lines)
