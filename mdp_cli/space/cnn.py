"""Pruning-space discovery for CNNs, from the traced graph (no per-model tables).

Channel spaces: every tensor carries a channel space. A dense conv or a linear starts a new space for its
output and *consumes* its input's space (weight axis 1). BN, activations and pooling pass the space
through. A residual ``add`` unions the spaces of its two inputs (so a ResNet stage's conv3 outputs, its
downsample and the stage input of the following blocks become one coupled dim). A grouped conv whose
input and output widths are equal (depthwise, ResNeXt's grouped 3x3) passes its input space through and
is pruned by whole groups (the dim's ``align`` = channels per group). Spaces that reach the model's
input or output, flatten over a spatial map, or go through a grouped conv with unequal widths are fixed.
By default the stem conv's output is fixed too (the official rule "the stem keeps all channels").

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

_PASS = ("bn", "act", "maxpool", "avgpool", "adaptive_avgpool")


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.fixed: list[bool] = []
        self.align: list[int] = []

    def new(self, fixed: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.fixed.append(fixed)
        self.align.append(1)
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            self.fixed[ra] = self.fixed[ra] or self.fixed[rb]
            self.align[ra] = math.lcm(self.align[ra], self.align[rb])
        return ra

    def fix(self, i: int) -> None:
        self.fixed[self.find(i)] = True


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

    def in_root(self, node: GNode) -> int | None:
        return self.out_space[node.inputs[0]] if node.inputs else None

    def dim_in(self, node: GNode) -> str | None:
        root = self.in_root(node)
        return self.dim_of_root.get(root) if root is not None else None

    def dim_out(self, node: GNode) -> str | None:
        root = self.out_space.get(node.name)
        return self.dim_of_root.get(root) if root is not None else None

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
    first_conv_done = False
    for n in nodes:
        x = space_of.get(n.inputs[0]) if n.inputs else None
        if n.op == "input":
            space_of[n.name] = uf.new(fixed=True)
        elif n.op == "conv":
            kind = _grouped_kind(n)
            if kind == "dense":
                space_of[n.name] = uf.new(fixed=not first_conv_done and not prune_stem)
            elif kind == "grouped":
                uf.align[uf.find(x)] = math.lcm(uf.align[uf.find(x)], n.attrs["in_channels"] // n.attrs["groups"])
                space_of[n.name] = x
            else:
                uf.fix(x)
                space_of[n.name] = uf.new(fixed=True)
            first_conv_done = True
        elif n.op in _PASS:
            space_of[n.name] = x
        elif n.op == "flatten":
            shape_in = graph.node(n.inputs[0]).shape
            if n.attrs["start_dim"] == 1 and len(shape_in) == 4 and shape_in[2] * shape_in[3] == 1:
                space_of[n.name] = x
            else:
                if x is not None:
                    uf.fix(x)
                space_of[n.name] = uf.new(fixed=True)
        elif n.op == "linear":
            space_of[n.name] = uf.new()
        elif n.op == "add":
            a, b = (space_of[i] for i in n.inputs)
            space_of[n.name] = uf.union(a, b)
        elif n.op == "output":
            uf.fix(x)
            space_of[n.name] = None
        else:  # pragma: no cover - trace_cnn only emits the ops above
            raise MdpError(f"{n.name}: op {n.op} not handled")
    out_space = {k: (uf.find(v) if v is not None else None) for k, v in space_of.items()}

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
            root_size.setdefault(root, int(n.shape[1]))
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
        if uf.fixed[r] or r not in producers:
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
        members = [n for n in nodes if out_space.get(n.name) == r and n.op in ("conv", "bn", "linear")]
        for n in members:
            path = n.module or n.name
            if n.op == "bn":
                slices += [Slice(path, p, 0) for p in ("weight", "bias", "running_mean", "running_var")]
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
                           blocks, node_block, None)  # type: ignore[arg-type]
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


def _terms(a: CnnAnalysis, users: dict[str, list[str]]) -> list[SpaceTerm]:
    """One latency term per op group as it runs after export: conv+bn+act fused, add, pools, linear."""
    graph = a.graph
    terms: list[SpaceTerm] = []
    covered: set[str] = set()

    def role(roles: list[str], dims: list[str], ctx: dict[str, Any], name: str, dim: str | None, size: int) -> None:
        if dim is None:
            ctx[name] = size
        else:
            roles.append(name)
            dims.append(dim)

    for n in graph.nodes:
        if n.name in covered or n.op in ("input", "output", "flatten"):
            continue
        roles: list[str] = []
        dims: list[str] = []
        ctx: dict[str, Any] = {"hw": _hw(graph, n)} if n.op != "linear" else {}
        block = a.node_block.get(n.name)
        if n.op == "conv":
            at = n.attrs
            group = [n.name]
            nxt = users[n.name]
            if len(nxt) == 1 and graph.node(nxt[0]).op == "bn":
                group.append(nxt[0])
                nn_ = users[nxt[0]]
                if len(nn_) == 1 and graph.node(nn_[0]).op == "act":
                    group.append(nn_[0])
            ctx.update(k=at["kernel_size"], stride=at["stride"], padding=at["padding"], dilation=at["dilation"],
                       bias=at["bias"], bn=len(group) > 1,
                       act=graph.node(group[2]).attrs["kind"] if len(group) > 2 else None)
            kind = _grouped_kind(n)
            din, dout = a.dim_in(n), a.dim_out(n)
            if kind == "grouped":
                ctx["mode"] = "grouped"
                ctx["group_size"] = at["in_channels"] // at["groups"]
                role(roles, dims, ctx, "c", dout, at["out_channels"])
            elif kind == "grouped_fixed":
                ctx.update(mode="grouped", groups=at["groups"], cin=at["in_channels"], cout=at["out_channels"])
            elif din is not None and din == dout:
                ctx["mode"] = "dense"
                role(roles, dims, ctx, "c", dout, at["out_channels"])
            else:
                ctx["mode"] = "dense"
                role(roles, dims, ctx, "cin", din, at["in_channels"])
                role(roles, dims, ctx, "cout", dout, at["out_channels"])
            op = "conv_bn_act"
            covered.update(group)
        elif n.op == "linear":
            op = "linear"
            ctx.update(cout=n.attrs["out_features"], bias=n.attrs["bias"])
            role(roles, dims, ctx, "cin", a.dim_in(n), n.attrs["in_features"])
        elif n.op in ("bn", "act", "add", "maxpool", "avgpool", "adaptive_avgpool"):
            op = n.op
            ctx.update({k: v for k, v in n.attrs.items() if k not in ("num_features", "momentum", "track_running_stats")})
            size = a.root_size[a.out_space[n.name]]
            role(roles, dims, ctx, "c", a.dim_out(n), size)
        else:  # pragma: no cover
            raise MdpError(f"{n.name}: no latency term for op {n.op}")
        terms.append(SpaceTerm(n.name, op, tuple(dims), tuple(roles), ctx, block))
    return terms


def discover_space(model_name: str, resolution: int = 224, pretrained: str | None = None,
                   model_overrides: dict[str, Any] | None = None, **options: Any):
    """Create the dense model by name (``model_overrides``: constructor keywords such as num_classes) and
    discover its space; returns (model, analysis)."""
    from mdp_cli.models import create_model

    model = create_model(model_name, pretrained=pretrained, **(model_overrides or {}))
    analysis = analyze_cnn(model, model_name, (3, resolution, resolution), **options)
    return model, analysis
