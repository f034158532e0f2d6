"""A CNN as a flat list of plain ops, read from the model by torch.fx tracing (no per-model tables).

``trace_cnn(model, input_shape)`` returns a ``CnnGraph``: nodes in execution order, each with an ``op``
from a small vocabulary (conv, bn, act, maxpool, avgpool, adaptive_avgpool, flatten, linear, add,
identity, input, output), its input node names, the attributes needed to rebuild it, the dotted path of
the module it came from (for weights) and the shape of its output. Space discovery (channel couplings,
residual blocks) and export (rebuilding a smaller network) both read this graph; the exported model's
loader does not (it only needs the node list written into arch.json).

Anything outside the vocabulary is an error naming the op, so a model that cannot be handled fails
loudly instead of being pruned wrongly.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any

import torch
from torch import nn

from mdp_cli.errors import MdpError

_ACTS_MODULE = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu", nn.Hardswish: "hardswish",
                nn.Sigmoid: "sigmoid", nn.GELU: "gelu", nn.Identity: "identity"}
_ACTS_FUNC = {torch.relu: "relu", torch.nn.functional.relu: "relu", torch.nn.functional.relu6: "relu6",
              torch.nn.functional.silu: "silu", torch.nn.functional.hardswish: "hardswish",
              torch.sigmoid: "sigmoid", torch.nn.functional.gelu: "gelu"}


@dataclasses.dataclass
class GNode:
    name: str
    op: str
    inputs: list[str]
    attrs: dict[str, Any]
    module: str | None = None  # dotted path of the source module (weights live there)
    shape: tuple[int, ...] = ()  # output shape at the traced input (batch 1)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op, "inputs": list(self.inputs), "attrs": dict(self.attrs)}


@dataclasses.dataclass
class CnnGraph:
    nodes: list[GNode]
    input_shape: tuple[int, int, int]

    def node(self, name: str) -> GNode:
        return self._index()[name]

    def _index(self) -> dict[str, GNode]:
        if not hasattr(self, "_by_name") or len(self._by_name) != len(self.nodes):
            self._by_name = {n.name: n for n in self.nodes}
        return self._by_name

    def users(self) -> dict[str, list[str]]:
        users: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                users[i].append(n.name)
        return users


def _pair(v: Any) -> list[int]:
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


def trace_cnn(model: nn.Module, input_shape: tuple[int, int, int]) -> CnnGraph:
    """Trace ``model`` with torch.fx and convert it to the plain-op vocabulary, with shapes at batch 1."""
    import torch.fx as fx
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # fx failures are long; keep the first line
        raise MdpError(f"cannot trace {type(model).__name__} with torch.fx: {str(exc).splitlines()[0]}") from None
    was_training = model.training
    gm.eval()
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.zeros(1, *input_shape))
    model.train(was_training)

    nodes: list[GNode] = []
    alias: dict[str, str] = {}  # fx node -> node that carries its value (for dropped no-ops)

    def src(arg: Any) -> str:
        if not isinstance(arg, fx.Node):
            raise MdpError(f"unsupported non-tensor argument {arg!r} in traced graph")
        return alias.get(arg.name, arg.name)

    for fn in gm.graph.nodes:
        meta = fn.meta.get("tensor_meta")
        shape = tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else ()
        add = lambda op, inputs, attrs, module=None: nodes.append(  # noqa: E731
            GNode(fn.name, op, inputs, attrs, module, shape))
        if fn.op == "placeholder":
            add("input", [], {"channels": input_shape[0]})
        elif fn.op == "output":
            add("output", [src(fn.args[0])], {})
        elif fn.op == "call_module":
            mod = gm.get_submodule(fn.target)
            path = str(fn.target)
            x = src(fn.args[0])
            if isinstance(mod, nn.Conv2d):
                if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
                    raise MdpError(f"{path}: conv padding mode {mod.padding_mode!r}/{mod.padding!r} is not supported")
                add("conv", [x], {"in_channels": mod.in_channels, "out_channels": mod.out_channels,
                                  "kernel_size": _pair(mod.kernel_size), "stride": _pair(mod.stride),
                                  "padding": _pair(mod.padding), "dilation": _pair(mod.dilation),
                                  "groups": mod.groups, "bias": mod.bias is not None}, path)
            elif isinstance(mod, nn.BatchNorm2d):
                add("bn", [x], {"num_features": mod.num_features, "eps": mod.eps, "momentum": mod.momentum,
                                "affine": mod.affine, "track_running_stats": mod.track_running_stats}, path)
            elif type(mod) in _ACTS_MODULE:
                kind = _ACTS_MODULE[type(mod)]
                if kind == "identity":
                    alias[fn.name] = x
                    continue
                add("act", [x], {"kind": kind}, path)
            elif isinstance(mod, nn.Dropout):
                alias[fn.name] = x  # identity at inference; export drops it
            elif isinstance(mod, nn.MaxPool2d):
                add("maxpool", [x], {"kernel_size": _pair(mod.kernel_size), "stride": _pair(mod.stride),
                                     "padding": _pair(mod.padding), "dilation": _pair(mod.dilation),
                                     "ceil_mode": mod.ceil_mode}, path)
            elif isinstance(mod, nn.AvgPool2d):
                add("avgpool", [x], {"kernel_size": _pair(mod.kernel_size), "stride": _pair(mod.stride or mod.kernel_size),
                                     "padding": _pair(mod.padding), "ceil_mode": mod.ceil_mode,
                                     "count_include_pad": mod.count_include_pad}, path)
            elif isinstance(mod, nn.AdaptiveAvgPool2d):
                add("adaptive_avgpool", [x], {"output_size": _pair(mod.output_size)}, path)
            elif isinstance(mod, nn.Flatten):
                add("flatten", [x], {"start_dim": mod.start_dim}, path)
            elif isinstance(mod, nn.Linear):
                add("linear", [x], {"in_features": mod.in_features, "out_features": mod.out_features,
                                    "bias": mod.bias is not None}, path)
            else:
                raise MdpError(f"{path}: module type {type(mod).__name__} is not supported by CNN space discovery")
        elif fn.op in ("call_function", "call_method"):
            target = fn.target
            tname = target if isinstance(target, str) else getattr(target, "__name__", str(target))
            if target in (operator.add, operator.iadd, torch.add) or tname in ("add", "add_", "__iadd__"):
                if len(fn.args) != 2 or fn.kwargs or not all(isinstance(a, fx.Node) for a in fn.args):
                    raise MdpError(f"{fn.name}: only 'tensor + tensor' adds are supported")
                add("add", [src(fn.args[0]), src(fn.args[1])], {})
            elif target in _ACTS_FUNC or tname in ("relu", "relu_", "sigmoid"):
                kind = _ACTS_FUNC.get(target, tname.rstrip("_"))
                add("act", [src(fn.args[0])], {"kind": kind})
            elif target is torch.flatten or tname == "flatten":
                start = fn.args[1] if len(fn.args) > 1 else fn.kwargs.get("start_dim", 0 if tname != "flatten" else 1)
                if target is torch.flatten and len(fn.args) < 2:
                    start = fn.kwargs.get("start_dim", 0)
                add("flatten", [src(fn.args[0])], {"start_dim": int(start)})
            elif target is torch.nn.functional.adaptive_avg_pool2d:
                out = fn.args[1] if len(fn.args) > 1 else fn.kwargs["output_size"]
                add("adaptive_avgpool", [src(fn.args[0])], {"output_size": _pair(out)})
            elif tname in ("dropout",):
                alias[fn.name] = src(fn.args[0])
            else:
                raise MdpError(f"{fn.name}: operation {tname!r} is not supported by CNN space discovery")
        else:
            raise MdpError(f"{fn.name}: graph node kind {fn.op!r} is not supported")
    return CnnGraph(nodes, tuple(input_shape))
