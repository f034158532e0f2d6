"""Pruning-space discovery for CNNs, from the traced graph (no per-model tables).

Channel spaces: every tensor carries a channel space on one axis (axis 1 for NCHW maps, the last axis after
a ``permute`` to channels-last or after a flatten). General rules, one per op kind, make the couplings:

- a dense conv or a linear starts a new space for its output and *consumes* its input's space (weight axis 1);
- elementwise ops (any activation, ``x <op> scalar``), BN, LayerNorm over the channel axis, layer-scale
  parameters, pools, ``mean`` over spatial axes and ``permute`` pass the space through (following its axis);
- ``add`` / ``mul`` of two tensors unify their spaces: a residual add couples a ResNet stage; a broadcast
  per-channel gate (squeeze-and-excitation, ECA) couples the gate's producer (the SE's expand conv) with the
  gated channels, so the SE squeeze conv consumes them and its reduced hidden width is a dim of its own;
- a grouped conv with equal in and out widths (depthwise, ResNeXt/RegNet 3x3) passes its input space through
  and is pruned by whole groups (the dim's ``align`` = channels per group); unequal widths fix both sides;
- ``cat`` along channels makes a *composite* space: the concatenation of its inputs' spaces (each keeps its
  own dim; a consumer's input channels are the union of the kept channels of every part). A composite that
  is unified with anything else (added to a residual, gated) fixes its parts;
- a flatten over a spatial map keeps the space, each channel repeated H*W times (VGG's classifier input).

Fixed (never pruned): spaces that reach the model's input or output, and by default the stem conv's output
(the official rule "the stem keeps all channels").

Blocks: for each ``add(a, b)``, the nodes that feed only one side form that side's branch; the side with
more convs is the residual branch (removable if nothing outside it reads its inner values and it holds no
other add), the other side (identity or downsample path) stays. Removing a block replaces the add by
its skip input, so the activation after the add still runs (a removed first block of a stage keeps its
downsample path).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from torch import nn

from mdp_cli.errors import MdpError
from mdp_cli.space.core import PruningSpace, Slice, SpaceBlock, SpaceDim, SpaceTerm
from mdp_cli.space.graph import CnnGraph, GNode, trace_cnn

# Ops that pass their input's channel space through unchanged (channel axis may move only for permute/mean).
_PASS = ("bn", "act", "scalar", "maxpool", "avgpool", "adaptive_avgpool", "mean", "ln2d", "layernorm", "scale",
         "permute")
_NCHW_ONLY = ("conv", "bn", "ln2d", "maxpool", "avgpool", "adaptive_avgpool")
MAX_TERM_DIMS = 3  # the LUT tables a term over at most three dims


class _UnionFind:
    """Channel spaces with union (coupling), fixed flags, group alignment and composite (concatenated) spaces."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.fixed: list[bool] = []
        self.align: list[int] = []
        self.parts: dict[int, list[int]] = {}  # composite root -> its parts, in channel order

    def new(self, fixed: bool = False, parts: list[int] | None = None) -> int:
        self.parent.append(len(self.parent))
        self.fixed.append(fixed)
        self.align.append(1)
        if parts is not None:
            self.parts[len(self.parent) - 1] = list(parts)
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def parts_of(self, i: int) -> list[int] | None:
        parts = self.parts.get(self.find(i))
        return [self.find(p) for p in parts] if parts is not None else None

    def closure(self, i: int) -> set[int]:
        """Every space a composite is made of, recursively."""
        out: set[int] = set()
        for p in self.parts_of(i) or []:
            out |= {p} | self.closure(p)
        return out

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        pa, pb = self.parts_of(ra), self.parts_of(rb)
        if pa is not None and pb is not None:
            if pa != pb:  # two different concatenations cannot share one channel order
                self.fix(ra)
                self.fix(rb)
        elif pa is not None or pb is not None:
            comp, plain = (ra, rb) if pa is not None else (rb, ra)
            # A plain space (e.g. an SE gate) joins a concatenation: its producers slice by the composite's
            # channels. A concatenation that contains the space itself, or an add to a residual, fixes it.
            if plain in self.closure(comp) or self.parts_of(plain) is None and self.fixed[plain]:
                self.fix(comp)
            ra, rb = comp, plain
        self.parent[rb] = ra
        self.fixed[ra] = self.fixed[ra] or self.fixed[rb]
        self.align[ra] = math.lcm(self.align[ra], self.align[rb])
        return ra

    def fix(self, i: int) -> None:
        root = self.find(i)
        self.fixed[root] = True
        for p in self.parts_of(root) or []:
            if not self.fixed[p]:
                self.fix(p)

    def settle(self) -> None:
        """A fixed or group-aligned composite fixes its parts (its channel order cannot follow theirs otherwise)."""
        changed = True
        while changed:
            changed = False
            for root in list(self.parts):
                r = self.find(root)
                if (self.fixed[r] or self.align[r] > 1) and any(not self.fixed[p] for p in self.parts_of(r)):
                    self.fix(r)
                    changed = True


@dataclasses.dataclass
class ResidualBlock:
    name: str
    add: str  # the add node
    branch: list[str]  # nodes removed with the block
    skip_input: str  # what the add becomes when the block is removed
    skip_nodes: list[str]  # downsample path (kept)
    removable: bool


@dataclasses.dataclass
class CnnAnalysis:
    """Everything discovery learnt: the graph, each node's channel space, blocks, and the space itself."""

    graph: CnnGraph
    out_space: dict[str, int | None]  # node -> root id of its output channel space (None: not a feature map)
    dim_of_root: dict[int, str]  # root id -> dim name (prunable spaces only)
    root_size: dict[int, int]
    root_align: dict[int, int]
    blocks: list[ResidualBlock]
    node_block: dict[str, str]  # node -> removable block containing it
    space: PruningSpace
    parts: dict[int, list[int]] = dataclasses.field(default_factory=dict)  # composite root -> part roots
    axis: dict[str, int] = dataclasses.field(default_factory=dict)  # node -> channel axis of its output
    repeat: dict[str, int] = dataclasses.field(default_factory=dict)  # node -> copies per channel (flatten)

    def in_root(self, node: GNode) -> int | None:
        return self.out_space[node.inputs[0]] if node.inputs else None

    def dim_in(self, node: GNode) -> str | None:
        root = self.in_root(node)
        return self.dim_of_root.get(root) if root is not None else None

    def dim_out(self, node: GNode) -> str | None:
        root = self.out_space.get(node.name)
        return self.dim_of_root.get(root) if root is not None else None

    def segments(self, root: int) -> list[tuple[int, int, int]]:
        """(part root, offset, size) of each plain space along a (possibly composite) space's channels."""
        if root not in self.parts:
            return [(root, 0, self.root_size[root])]
        out: list[tuple[int, int, int]] = []
        offset = 0
        for part in self.parts[root]:
            for sub, off, size in self.segments(part):
                out.append((sub, offset + off, size))
            offset += self.root_size[part]
        return out

    def norm_nodes(self) -> list[GNode]:
        """Normalisation layers with per-channel affine parameters (BN, LayerNorm over channels)."""
        return [n for n in self.graph.nodes if n.op in ("bn", "ln2d", "layernorm") and n.module]

    def bn_nodes_of(self, dim: str) -> list[GNode]:
        return [n for n in self.graph.nodes if n.op == "bn" and self.dim_out(n) == dim]


def _grouped_kind(node: GNode) -> str:
    a = node.attrs
    if a["groups"] == 1:
        return "dense"
    if a["in_channels"] == a["out_channels"]:
        return "grouped"
    return "grouped_fixed"


def _common_prefix(paths: list[str]) -> str:
    parts = [p.split(".") for p in paths]
    prefix = []
    for items in zip(*parts):
        if len(set(items)) != 1:
            break
        prefix.append(items[0])
    return ".".join(prefix)


def _options(size: int, step: int | None, max_options: int, multiple: int, align: int) -> tuple[int, tuple[int, ...]]:
    s = step if step else math.ceil(size / max(1, max_options))
    unit = math.lcm(align, max(1, multiple))
    s = max(unit, math.ceil(s / unit) * unit)
    opts = list(range(s, size, s)) + [size]
    return s, tuple(opts)


def analyze_cnn(
    model: nn.Module,
    model_name: str,
    input_shape: tuple[int, int, int],
    step: int | None = None,
    max_options: int = 8,
    multiple: int = 1,
    prune_stem: bool = False,
) -> CnnAnalysis:
    """Trace ``model`` and discover its pruning space (dims, couplings, terms, blocks)."""
    graph = trace_cnn(model, input_shape)
    nodes = graph.nodes
    users = graph.users()
    uf = _UnionFind()
    space_of: dict[str, int | None] = {}
    axis: dict[str, int] = {}
    repeat: dict[str, int] = {}
    first_conv_done = False
    for n in nodes:
        x = space_of.get(n.inputs[0]) if n.inputs else None
        ax = axis.get(n.inputs[0], 1) if n.inputs else 1
        rep = repeat.get(n.inputs[0], 1) if n.inputs else 1
        in_shape = graph.node(n.inputs[0]).shape if n.inputs else ()
        where = f"{n.module or n.name} ({n.op})"
        if n.op in _NCHW_ONLY and (ax != 1 or len(in_shape) != 4):
            raise MdpError(f"{where}: expects an NCHW feature map with channels on axis 1, got shape "
                           f"{list(in_shape)} with channels on axis {ax}")
        if rep > 1 and n.op not in ("linear", "act", "scalar", "output"):
            uf.fix(x)  # a flattened map feeds something other than a linear: keep it whole
            x, rep = uf.new(fixed=True), 1
        axis[n.name], repeat[n.name] = ax, rep
        if n.op == "input":
            space_of[n.name] = uf.new(fixed=True)
        elif n.op == "conv":
            kind = _grouped_kind(n)
            if kind == "dense":
                space_of[n.name] = uf.new(fixed=not first_conv_done and not prune_stem)
            elif kind == "grouped":
                root = uf.find(x)
                uf.align[root] = math.lcm(uf.align[root], n.attrs["in_channels"] // n.attrs["groups"])
                space_of[n.name] = x
            else:
                uf.fix(x)
                space_of[n.name] = uf.new(fixed=True)
            first_conv_done = True
        elif n.op in _PASS:
            space_of[n.name] = x
            if n.op == "permute":
                axis[n.name] = n.attrs["dims"].index(ax)
            elif n.op == "mean":
                if ax in n.attrs["dims"]:
                    raise MdpError(f"{where}: a mean over the channel axis cannot be pruned structurally")
                if not n.attrs["keepdim"]:
                    axis[n.name] = ax - sum(d < ax for d in n.attrs["dims"])
            elif n.op == "layernorm" and ax != len(in_shape) - 1:
                raise MdpError(f"{where}: LayerNorm over a non-channel axis (shape {list(in_shape)}, channels on "
                               f"axis {ax}) is not supported")
            elif n.op == "scale":
                shape = list(n.attrs["param_shape"])
                aligned = [1] * (len(in_shape) - len(shape)) + shape
                if len(aligned) != len(in_shape) or any(s != 1 for k, s in enumerate(aligned) if k != ax):
                    uf.fix(x)  # a parameter that varies along other axes than channels: keep the channels whole
        elif n.op in ("add", "mul"):
            xa, xb = (space_of[i] for i in n.inputs)
            if axis[n.inputs[0]] != axis[n.inputs[1]] or xa is None or xb is None:
                raise MdpError(f"{where}: operands with channels on different axes are not supported")
            space_of[n.name] = uf.union(xa, xb)
        elif n.op == "cat":
            parts = [space_of[i] for i in n.inputs]
            if any(axis[i] != n.attrs["dim"] for i in n.inputs):  # not along channels: the result is one space
                for p in parts:
                    uf.fix(p)
                space_of[n.name] = uf.new(fixed=True)
            else:
                space_of[n.name] = uf.new(parts=parts)
        elif n.op == "flatten":
            start = n.attrs["start_dim"]
            if start == ax and len(in_shape) >= 2:
                space_of[n.name] = x
                repeat[n.name] = rep * math.prod(int(s) for s in in_shape[ax + 1:])
            else:
                if x is not None:
                    uf.fix(x)
                space_of[n.name] = uf.new(fixed=True)
                axis[n.name] = len(n.shape) - 1
        elif n.op == "linear":
            if ax != len(in_shape) - 1:
                raise MdpError(f"{where}: a linear over a non-channel axis (shape {list(in_shape)}, channels on "
                               f"axis {ax}) is not supported")
            space_of[n.name] = uf.new()
            axis[n.name], repeat[n.name] = len(n.shape) - 1, 1
        elif n.op == "output":
            uf.fix(x)
            space_of[n.name] = None
        else:  # pragma: no cover - trace_cnn only emits the ops above
            raise MdpError(f"{n.name}: op {n.op} not handled")
    uf.settle()
    out_space = {k: (uf.find(v) if v is not None else None) for k, v in space_of.items()}
    composite = {uf.find(r): uf.parts_of(r) for r in uf.parts}

    # --- blocks ------------------------------------------------------------------------------------------
    ancestors: dict[str, set[str]] = {}
    for n in nodes:
        acc: set[str] = set()
        for i in n.inputs:
            acc |= ancestors[i]
            acc.add(i)
        ancestors[n.name] = acc
    by_name = {n.name: n for n in nodes}
    order = {n.name: k for k, n in enumerate(nodes)}
    blocks: list[ResidualBlock] = []
    used_names: set[str] = set()
    for n in nodes:
        if n.op != "add":
            continue
        a, b = n.inputs
        side_a = (ancestors[a] | {a}) - (ancestors[b] | {b})
        side_b = (ancestors[b] | {b}) - (ancestors[a] | {a})
        convs = lambda side: sum(by_name[m].op == "conv" for m in side)  # noqa: E731
        if convs(side_a) >= convs(side_b):
            main, skip, skip_input = side_a, side_b, b
        else:
            main, skip, skip_input = side_b, side_a, a
        if convs(main) == 0:
            continue
        closed = all(set(users[m]) <= (main | {n.name}) for m in main)
        nested = any(by_name[m].op == "add" for m in main)
        paths = [by_name[m].module for m in main if by_name[m].module]
        name = _common_prefix(paths) or n.name
        if name in used_names:
            name = f"{name}@{n.name}"
        used_names.add(name)
        blocks.append(ResidualBlock(name, n.name, sorted(main, key=order.get), skip_input,
                                    sorted(skip, key=order.get), closed and not nested))
    node_block: dict[str, str] = {}
    for blk in sorted((b for b in blocks if b.removable), key=lambda b: -len(b.branch)):
        for m in blk.branch + [blk.add]:
            node_block[m] = blk.name  # smaller (inner) blocks overwrite larger ones

    # --- dims ----------------------------------------------------------------------------------------------
    producers: dict[int, list[GNode]] = {}
    consumers: dict[int, list[GNode]] = {}
    for n in nodes:
        root = out_space.get(n.name)
        if n.op in ("conv", "linear") and root is not None:
            if n.op == "linear" or _grouped_kind(n) != "grouped":
                producers.setdefault(root, []).append(n)
        if n.op in ("conv", "linear") and n.inputs:
            consumers.setdefault(out_space[n.inputs[0]], []).append(n)
    root_size: dict[int, int] = {}
    for n in nodes:
        root = out_space.get(n.name)
        if root is not None and len(n.shape) >= 2:
            root_size.setdefault(root, int(n.shape[axis[n.name]]) // repeat.get(n.name, 1))
    dim_of_root: dict[int, str] = {}
    dims: list[SpaceDim] = []
    roots = sorted({r for r in out_space.values() if r is not None},
                   key=lambda r: min(order[k] for k, v in out_space.items() if v == r))
    taken: set[str] = set()
    prefixes = {}
    for r in roots:
        paths = [p.module or p.name for p in producers.get(r, [])]
        prefixes[r] = _common_prefix(paths) if len(paths) > 1 else None
    for r in roots:
        if uf.fixed[r] or r not in producers or r in composite:
            continue
        paths = [p.module or p.name for p in producers[r]]
        if len(paths) == 1:
            name = paths[0]
        else:
            pre = prefixes[r]
            unique = pre and sum(1 for q in prefixes.values() if q == pre) == 1
            name = f"{pre}.res" if unique else f"{paths[0]}+{len(paths) - 1}"
        while name in taken:
            name += "'"
        taken.add(name)
        size, align = root_size[r], uf.align[r]
        s, opts = _options(size, step, max_options, multiple, align)
        slices: list[Slice] = []
        members = [n for n in nodes if out_space.get(n.name) == r and n.op in ("conv", "bn", "linear", "ln2d",
                                                                               "layernorm", "scale")]
        for n in members:
            path = n.module or n.name
            if n.op == "bn":
                slices += [Slice(path, p, 0) for p in ("weight", "bias", "running_mean", "running_var")]
            elif n.op in ("ln2d", "layernorm"):
                slices += [Slice(path, p, 0) for p in ("weight", "bias")]
            elif n.op == "scale":
                slices.append(Slice(path, n.attrs["param"], len(n.attrs["param_shape"]) - len(n.shape) + axis[n.name]))
            else:
                slices.append(Slice(path, "weight", 0))
                if n.attrs.get("bias"):
                    slices.append(Slice(path, "bias", 0))
        for n in consumers.get(r, []):
            if n.op == "linear" or _grouped_kind(n) == "dense":
                slices.append(Slice(n.module or n.name, "weight", 1))
        touched = {n.name for n in members} | {n.name for n in consumers.get(r, [])}
        owner = {node_block.get(t) for t in touched}
        block = owner.pop() if len(owner) == 1 else None
        dims.append(SpaceDim(name, size, s, opts, slices, block, "channels", align=align,
                             coupled=sorted(paths)))
        dim_of_root[r] = name

    analysis = CnnAnalysis(graph, out_space, dim_of_root, root_size, {r: uf.align[r] for r in roots},
                           blocks, node_block, None, composite, axis, repeat)  # type: ignore[arg-type]
    terms = _terms(analysis, users)
    space_blocks = [SpaceBlock(b.name, b.removable, [by_name[m].module or m for m in b.branch]) for b in blocks]
    for b in blocks:
        if b.skip_nodes:
            space_blocks.append(SpaceBlock(f"{b.name}.skip", False, [by_name[m].module or m for m in b.skip_nodes]))
    stem = _stem_nodes(graph, users)
    if stem:
        space_blocks.insert(0, SpaceBlock("stem", False, [by_name[m].module or m for m in stem]))
    head = [n.module or n.name for n in nodes if n.op == "linear"]
    if head:
        space_blocks.append(SpaceBlock("head", False, head))
    analysis.space = PruningSpace(model_name, "cnn", tuple(input_shape), dims, terms, space_blocks)
    return analysis


def _stem_nodes(graph: CnnGraph, users: dict[str, list[str]]) -> list[str]:
    """The first conv and the single-user chain of bn/act/pool after it."""
    chain: list[str] = []
    for n in graph.nodes:
        if n.op == "conv":
            chain.append(n.name)
            break
    while chain:
        nxt = users[chain[-1]]
        if len(nxt) != 1 or graph.node(nxt[0]).op not in _PASS:
            break
        chain.append(nxt[0])
    return chain


def _hw(graph: CnnGraph, node: GNode) -> list[int]:
    shape = graph.node(node.inputs[0]).shape
    return [int(shape[2]), int(shape[3])] if len(shape) == 4 else [1, 1]


class _TermWidths:
    """The channel widths of one term: a dim becomes a role (a LUT axis), anything else a fixed size.

    A width in a term's context is an int (fixed), a role name (the same dim as that role) or a list of role
    names and ints whose sum is the width (a concatenation of several dims)."""

    def __init__(self, a: CnnAnalysis):
        self.a = a
        self.roles: list[str] = []
        self.dims: list[str] = []

    def _role(self, dim: str, name: str) -> str:
        if dim in self.dims:
            return self.roles[self.dims.index(dim)]
        self.roles.append(name)
        self.dims.append(dim)
        return name

    def ref(self, root: int | None, name: str, ctx: dict[str, Any]) -> None:
        """Set ``name``'s width: a role if ``root`` is a dim, a list of parts for a concatenation, else a size."""
        a = self.a
        dim = a.dim_of_root.get(root) if root is not None else None
        if dim is not None:
            role = self._role(dim, name)
            if role != name:
                ctx[name] = role
            return
        if root in a.parts:
            segments = a.segments(root)
            new = {a.dim_of_root[s] for s, _o, _n in segments if s in a.dim_of_root} - set(self.dims)
            if new and len(self.dims) + len(new) <= MAX_TERM_DIMS:
                items: list[Any] = []
                for sub, _off, size in segments:
                    d = a.dim_of_root.get(sub)
                    items.append(self._role(d, f"{name}{len(self.dims)}") if d else size)
                ctx[name] = items
                return
        ctx[name] = a.root_size[root] if root is not None else 0


def _shape_context(graph: CnnGraph, a: CnnAnalysis, name: str) -> dict[str, Any]:
    """Where an op's input lives: ``hw`` for an NCHW map, else ``shape`` (channel entry 0) and ``axis``."""
    shape = list(graph.node(name).shape)
    ax = a.axis.get(name, 1)
    if len(shape) == 4 and ax == 1 and a.repeat.get(name, 1) == 1:
        return {"hw": [int(shape[2]), int(shape[3])]}
    shape[ax] = 0
    return {"shape": [int(s) for s in shape[1:]], "axis": ax, "repeat": a.repeat.get(name, 1)}


_TERM_SKIP = ("input", "output", "flatten")
_ATTR_NOT_IN_CONTEXT = ("num_features", "momentum", "track_running_stats", "normalized_shape", "param_shape",
                        "param")


def _terms(a: CnnAnalysis, users: dict[str, list[str]]) -> list[SpaceTerm]:
    """One latency term per op group as it runs after export: conv(+bn)(+act) fused, linear, every other op."""
    graph = a.graph
    terms: list[SpaceTerm] = []
    covered: set[str] = set()
    for n in graph.nodes:
        if n.name in covered or n.op in _TERM_SKIP:
            continue
        w = _TermWidths(a)
        block = a.node_block.get(n.name)
        in_root = a.in_root(n)
        out_root = a.out_space.get(n.name)
        if n.op == "conv":
            at = n.attrs
            ctx: dict[str, Any] = {"hw": _hw(graph, n)}
            group = [n.name]
            nxt = users[n.name]
            if len(nxt) == 1 and graph.node(nxt[0]).op == "bn":
                group.append(nxt[0])
                nxt = users[nxt[0]]
            if len(nxt) == 1 and graph.node(nxt[0]).op == "act":
                group.append(nxt[0])
            has_bn = len(group) > 1 and graph.node(group[1]).op == "bn"
            act = graph.node(group[-1]).attrs["kind"] if graph.node(group[-1]).op == "act" else None
            ctx.update(k=at["kernel_size"], stride=at["stride"], padding=at["padding"], dilation=at["dilation"],
                       bias=at["bias"], bn=has_bn, act=act)
            if at.get("pad"):
                ctx["pad"] = at["pad"]
            kind = _grouped_kind(n)
            din, dout = a.dim_in(n), a.dim_out(n)
            if kind == "grouped":
                ctx["mode"] = "grouped"
                ctx["group_size"] = at["in_channels"] // at["groups"]
                w.ref(out_root, "c", ctx)
            elif kind == "grouped_fixed":
                ctx.update(mode="grouped", groups=at["groups"], cin=at["in_channels"], cout=at["out_channels"])
            elif din is not None and din == dout:
                ctx["mode"] = "dense"
                w.ref(out_root, "c", ctx)
            else:
                ctx["mode"] = "dense"
                w.ref(in_root, "cin", ctx)
                w.ref(out_root, "cout", ctx)
            op = "conv_bn_act"
            covered.update(group)
        elif n.op == "linear":
            op = "linear"
            ctx = {"bias": n.attrs["bias"]}
            in_shape = graph.node(n.inputs[0]).shape
            rows = math.prod(int(s) for s in in_shape[1:-1])
            if rows > 1:
                ctx["rows"] = rows  # a linear over channels-last tokens (ConvNeXt's MLP)
            mult = a.repeat.get(n.inputs[0], 1)
            if mult > 1:
                ctx["cin_mult"] = mult  # input is a flattened map: each channel is H*W features
            w.ref(in_root, "cin", ctx)
            w.ref(out_root, "cout", ctx)
        elif n.op == "cat":
            op = "cat"
            ctx = _shape_context(graph, a, n.inputs[0])
            for k, i in enumerate(n.inputs):
                w.ref(a.out_space[i], f"c{k}", ctx)
            ctx["parts"] = len(n.inputs)
        else:
            op = n.op
            ctx = _shape_context(graph, a, n.inputs[0])
            ctx.update({k: v for k, v in n.attrs.items() if k not in _ATTR_NOT_IN_CONTEXT})
            if n.op == "mul" and "gate" in n.attrs:
                ctx["gate"] = n.attrs["gate"]
            w.ref(out_root, "c", ctx)
        terms.append(SpaceTerm(n.name, op, tuple(w.dims), tuple(w.roles), ctx, block))
    return terms


def discover_space(model_name: str, resolution: int = 224, pretrained: str | None = None,
                   model_overrides: dict[str, Any] | None = None, **options: Any):
    """Create the dense model by name (``model_overrides``: constructor keywords such as num_classes) and
    discover its space; returns (model, analysis)."""
    from mdp_cli.models import create_model

    model = create_model(model_name, pretrained=pretrained, **(model_overrides or {}))
    analysis = analyze_cnn(model, model_name, (3, resolution, resolution), **options)
    return model, analysis
