"""A CNN as a flat list of plain ops, read from the model by torch.fx tracing (no per-model tables).

``trace_cnn(model, input_shape)`` returns a ``CnnGraph``: nodes in execution order, each with an ``op``
from a small vocabulary, its input node names, the attributes needed to rebuild it, the dotted path of the
module it came from (for weights) and the shape of its output. Space discovery (channel couplings, residual
blocks) and export (rebuilding a smaller network) both read this graph; the exported model's loader does
not (it only needs the node list written into arch.json).

Vocabulary (what each op means for channels is decided in space/cnn.py, from the op alone):
  input, output, conv (``pad`` = explicit [left, right, top, bottom] zero padding, e.g. timm's TF-"same"),
  bn, act (any elementwise activation, by ``kind``), scalar (``x <fn> constant``: add/sub/mul/div/clamp),
  maxpool, avgpool, adaptive_avgpool, mean (over spatial dims), flatten, linear (over the last axis),
  layernorm (over the last axis), ln2d (LayerNorm over the channel axis of NCHW), scale (multiply by a
  parameter broadcast along one axis: layer-scale gamma), add, mul (two tensors; same shape or a broadcast
  gate such as squeeze-and-excitation), cat (along channels), permute.

Leaf modules: convs (incl. timm's ``Conv2dSame``, whose TF padding becomes fixed ``pad`` at the traced input
size), BatchNorm (incl. timm's ``BatchNormAct2d`` = bn + act), LayerNorm (incl. ``LayerNorm2d``), linears and
activations are not traced into, so their Python control flow never reaches fx.

Anything outside the vocabulary is a one-line error naming the module or node and the op, so a model that
cannot be handled fails loudly instead of being pruned wrongly.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.nn import functional as F

from mdp_cli.errors import MdpError

# Elementwise activations by module type, and by class name for library-defined ones (timm's Swish, HardSigmoid...).
_ACT_TYPES = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu", nn.Hardswish: "hardswish",
              nn.Hardsigmoid: "hardsigmoid", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.Mish: "mish"}
_ACT_NAMES = {"relu": "relu", "relu6": "relu6", "swish": "silu", "silu": "silu", "hardswish": "hardswish",
              "hardsigmoid": "hardsigmoid", "sigmoid": "sigmoid", "tanh": "tanh", "mish": "mish", "gelu": "gelu",
              "gelutanh": "gelu_tanh", "quickgelu": None}
_ACTS_FUNC = {torch.relu: "relu", F.relu: "relu", F.relu6: "relu6", F.silu: "silu", F.hardswish: "hardswish",
              F.hardsigmoid: "hardsigmoid", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh",
              F.tanh: "tanh", F.mish: "mish", F.gelu: "gelu"}
_ACT_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid", "tanh": "tanh",
                "tanh_": "tanh"}
_SCALAR_FUNCS = {operator.add: "add", operator.iadd: "add", torch.add: "add", operator.sub: "sub",
                 operator.mul: "mul", operator.imul: "mul", torch.mul: "mul", operator.truediv: "div",
                 torch.div: "div", operator.itruediv: "div"}
_SCALAR_METHODS = {"add": "add", "add_": "add", "sub": "sub", "mul": "mul", "mul_": "mul", "div": "div",
                   "div_": "div"}
# Identity at inference (stochastic depth and drop path only act while training; the export drops them).
_NO_OPS = {"contiguous", "clone", "dropout", "dropout2d", "alpha_dropout", "feature_alpha_dropout", "stochastic_depth",
           "drop_path"}


def act_kind(module: nn.Module) -> str | None:
    """The elementwise activation a module computes ("identity" for nn.Identity), or None if it is none."""
    if isinstance(module, nn.Identity):
        return "identity"
    if isinstance(module, nn.GELU):
        return "gelu_tanh" if module.approximate == "tanh" else "gelu"
    if type(module) in _ACT_TYPES:
        return _ACT_TYPES[type(module)]
    if isinstance(module, nn.LeakyReLU) and module.negative_slope == 0.01:
        return "leaky_relu"
    if type(module).__module__.startswith("timm.layers"):  # timm's own activation classes, same formulas
        return _ACT_NAMES.get(type(module).__name__.lower())
    return None


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


def _is_norm_forward(module: nn.Module, base: type) -> bool:
    return type(module).forward is base.forward


class _LeafTracer(fx.Tracer):
    """fx tracer that keeps convs, norms, linears and activations whole (their forward may branch on shapes)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.LayerNorm, nn.Linear, nn.Dropout)):
            return True
        if act_kind(m) is not None:
            return True
        return super().is_leaf_module(m, qualname)


def _same_pad(in_hw: tuple[int, int], conv: nn.Conv2d) -> list[int]:
    """TF "same" padding at a fixed input size: [left, right, top, bottom] (timm's pad_same)."""
    pads = []
    for size, k, s, d in zip(in_hw, conv.kernel_size, conv.stride, conv.dilation):
        pads.append(max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0))
    ph, pw = pads
    return [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]


def _conv_attrs(path: str, mod: nn.Conv2d, in_shape: tuple[int, ...]) -> dict[str, Any]:
    attrs = {"in_channels": mod.in_channels, "out_channels": mod.out_channels,
             "kernel_size": _pair(mod.kernel_size), "stride": _pair(mod.stride), "padding": [0, 0],
             "dilation": _pair(mod.dilation), "groups": mod.groups, "bias": mod.bias is not None}
    if mod.padding_mode != "zeros":
        raise MdpError(f"{path}: conv padding mode {mod.padding_mode!r} is not supported (only zero padding)")
    own_forward = type(mod).forward is not nn.Conv2d.forward
    if own_forward and not type(mod).__name__.endswith("Conv2dSame"):
        raise MdpError(f"{path}: {type(mod).__name__} is a Conv2d with its own forward (not a plain conv); "
                       "it is not supported by CNN space discovery")
    if own_forward or mod.padding == "same":
        pad = _same_pad((int(in_shape[2]), int(in_shape[3])), mod)
        if pad[0] == pad[1] and pad[2] == pad[3]:
            attrs["padding"] = [pad[2], pad[0]]
        else:
            attrs["pad"] = pad
    elif isinstance(mod.padding, str):  # "valid"
        attrs["padding"] = [0, 0]
    else:
        attrs["padding"] = _pair(mod.padding)
    return attrs


def _constant_param(node: Any, gm: fx.GraphModule) -> tuple[str, str] | None:
    """(owner module path, parameter name) if ``node`` is a parameter, possibly reshaped/viewed/unsqueezed."""
    while isinstance(node, fx.Node) and node.op == "call_method" and node.target in ("reshape", "view", "unsqueeze",
                                                                                      "squeeze"):
        node = node.args[0]
    if isinstance(node, fx.Node) and node.op == "get_attr":
        owner, _, param = str(node.target).rpartition(".")
        return owner, param
    return None


def trace_cnn(model: nn.Module, input_shape: tuple[int, int, int]) -> CnnGraph:
    """Trace ``model`` with torch.fx (leaf convs/norms/activations) and convert it to the plain-op vocabulary."""
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        graph = _LeafTracer().trace(model)
        gm = fx.GraphModule(model, graph)
    except Exception as exc:  # fx failures are long; keep the first line
        raise MdpError(f"cannot trace {type(model).__name__} with torch.fx: {str(exc).splitlines()[0]}") from None
    was_training = model.training
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros(1, *input_shape))
    except Exception as exc:
        cause = exc.__cause__ or exc  # ShapeProp wraps the error in a message that dumps the module stack
        detail = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        timm_cfg = getattr(model, "pretrained_cfg", None) or {}
        native = list(timm_cfg.get("input_size") or [])[-2:]
        hint = (f"; {type(model).__name__} has a fixed input size {native[-1]} (timm's config): use --resolution "
                f"{native[-1]}" if timm_cfg.get("fixed_input_size") and native and native != list(input_shape[-2:])
                else "")
        raise MdpError(f"{type(model).__name__}: running the traced graph at input {list(input_shape)} failed: "
                       f"{detail}{hint}") from None
    finally:
        model.train(was_training)

    nodes: list[GNode] = []
    alias: dict[str, str] = {}  # fx node -> node that carries its value (for dropped no-ops)

    def shape_of(arg: Any) -> tuple[int, ...]:
        meta = arg.meta.get("tensor_meta") if isinstance(arg, fx.Node) else None
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else ()

    def is_tensor(arg: Any) -> bool:
        return isinstance(arg, fx.Node) and len(shape_of(arg)) > 0

    def src(arg: Any, where: str) -> str:
        if not is_tensor(arg) or arg.op == "get_attr":
            raise MdpError(f"{where}: an input is not a feature map ({arg!r}); not supported by CNN space discovery")
        return alias.get(arg.name, arg.name)

    for fn in gm.graph.nodes:
        shape = shape_of(fn)
        def add(op: str, inputs: list[str], attrs: dict[str, Any], module: str | None = None,
                name: str | None = None, fn: fx.Node = fn, shape: tuple[int, ...] = shape) -> None:
            nodes.append(GNode(name or fn.name, op, inputs, attrs, module, shape))
        if fn.op == "placeholder":
            add("input", [], {"channels": input_shape[0]})
        elif fn.op == "output":
            add("output", [src(fn.args[0], "model output")], {})
        elif fn.op == "get_attr":
            continue  # parameters are read by the op that uses them (scale)
        elif fn.op == "call_module":
            _convert_module(fn, gm, src, shape_of, add, alias)
        elif fn.op in ("call_function", "call_method"):
            _convert_function(fn, gm, src, shape_of, is_tensor, add, alias)
        else:
            raise MdpError(f"{fn.name}: graph node kind {fn.op!r} is not supported")
    return CnnGraph(nodes, tuple(input_shape))


def _convert_module(fn, gm, src, shape_of, add, alias) -> None:
    mod = gm.get_submodule(fn.target)
    path = str(fn.target)
    where = f"{path} ({type(mod).__name__})"
    x = src(fn.args[0], where)
    if isinstance(mod, nn.Conv2d):
        add("conv", [x], _conv_attrs(path, mod, shape_of(fn.args[0])), path)
    elif isinstance(mod, nn.BatchNorm2d):
        act = getattr(mod, "act", None)  # timm BatchNormAct2d: bn, then drop (identity at inference), then act
        if not _is_norm_forward(mod, nn.BatchNorm2d) and act is None:
            raise MdpError(f"{where}: a BatchNorm2d with its own forward is not supported by CNN space discovery")
        add("bn", [x], {"num_features": mod.num_features, "eps": mod.eps, "momentum": mod.momentum,
                        "affine": mod.affine, "track_running_stats": mod.track_running_stats}, path)
        kind = act_kind(act) if act is not None else "identity"
        if kind is None:
            raise MdpError(f"{where}: activation {type(act).__name__} is not supported by CNN space discovery")
        if kind != "identity":
            add("act", [fn.name], {"kind": kind}, f"{path}.act", name=f"{fn.name}_act")
            alias[fn.name] = f"{fn.name}_act"
    elif isinstance(mod, nn.LayerNorm):
        name = type(mod).__name__
        attrs = {"normalized_shape": list(mod.normalized_shape), "eps": mod.eps,
                 "affine": mod.elementwise_affine, "bias": getattr(mod, "bias", None) is not None}
        if len(mod.normalized_shape) != 1:
            raise MdpError(f"{where}: LayerNorm over {len(mod.normalized_shape)} axes is not supported (one axis only)")
        if name.endswith("LayerNorm2d"):
            add("ln2d", [x], attrs, path)
        elif _is_norm_forward(mod, nn.LayerNorm) or name == "LayerNorm":
            add("layernorm", [x], attrs, path)
        else:
            raise MdpError(f"{where}: a LayerNorm with its own forward is not supported by CNN space discovery")
    elif isinstance(mod, nn.Linear):
        add("linear", [x], {"in_features": mod.in_features, "out_features": mod.out_features,
                            "bias": mod.bias is not None}, path)
    elif isinstance(mod, nn.Dropout) or act_kind(mod) == "identity":
        alias[fn.name] = x  # identity at inference; export drops it
    elif act_kind(mod) is not None:
        add("act", [x], {"kind": act_kind(mod)}, path)
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
        add("flatten", [x], {"start_dim": mod.start_dim % len(shape_of(fn.args[0]))}, path)
    else:
        raise MdpError(f"{where}: module type {type(mod).__name__} is not supported by CNN space discovery")


def _convert_function(fn, gm, src, shape_of, is_tensor, add, alias) -> None:
    target = fn.target
    tname = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    where = f"node {fn.name} ({tname})"
    shape = shape_of(fn)
    args = list(fn.args)
    if not shape:
        # not a tensor (x.size(), x.shape, ints): only shapes feed reshapes, which are checked by their output shape
        if tname in ("chunk", "split", "unbind", "tensor_split"):
            raise MdpError(f"{where}: splitting a feature map into channel groups ({tname}) is not supported by "
                           "CNN space discovery (e.g. ShuffleNet's channel split)")
        if tname == "getitem" and isinstance(args[0], fx.Node) and isinstance(args[0].meta.get("tensor_meta"), (tuple, list)):
            raise MdpError(f"{where}: indexing a tuple of feature maps is not supported by CNN space discovery")
        return
    if _constant_param(fn, gm) is not None:
        return  # a reshaped parameter (timm's gamma.reshape(1, -1, 1, 1)): read by the op that uses it
    if tname in _NO_OPS:
        alias[fn.name] = src(args[0], where)
        return
    if tname in ("add", "add_", "iadd", "__iadd__", "mul", "mul_", "imul", "sub", "truediv", "div", "div_",
                 "itruediv") or target in _SCALAR_FUNCS:
        fn_kind = _SCALAR_FUNCS.get(target) if not isinstance(target, str) else _SCALAR_METHODS.get(target)
        a, b = args[0], args[1] if len(args) > 1 else fn.kwargs.get("other")
        if fn.kwargs.get("alpha", 1) != 1:
            raise MdpError(f"{where}: add with alpha is not supported by CNN space discovery")
        if fn_kind in ("add", "mul") and is_tensor(a) and is_tensor(b) and a.op != "get_attr" and b.op != "get_attr" \
                and _constant_param(a, gm) is None and _constant_param(b, gm) is None:
            inputs = [src(a, where), src(b, where)]
            sa, sb = shape_of(a), shape_of(b)
            if sa == sb:
                add(fn_kind, inputs, {})
            elif fn_kind == "mul" and len(sa) == len(sb) == 4 and sa[:2] == sb[:2] and (sa[2:] == (1, 1) or sb[2:] == (1, 1)):
                add("mul", inputs, {"gate": 0 if sa[2:] == (1, 1) else 1})  # broadcast channel gate (SE, ECA)
            else:
                raise MdpError(f"{where}: {fn_kind} of feature maps of shapes {list(sa)} and {list(sb)} is not "
                               "supported (same shape or a per-channel gate only)")
            return
        if fn_kind == "mul" and (_constant_param(a, gm) or _constant_param(b, gm)):
            x, const = (b, a) if _constant_param(a, gm) else (a, b)
            owner, param = _constant_param(const, gm)
            add("scale", [src(x, where)], {"param_shape": list(shape_of(const)), "param": param}, owner)
            return
        if fn_kind is not None and isinstance(b, (int, float)) and is_tensor(a):
            add("scalar", [src(a, where)], {"fn": fn_kind, "value": float(b)})
            return
        if fn_kind in ("add", "mul") and isinstance(a, (int, float)) and is_tensor(b):
            add("scalar", [src(b, where)], {"fn": fn_kind, "value": float(a)})
            return
        if fn_kind == "sub" and isinstance(a, (int, float)) and is_tensor(b):
            add("scalar", [src(b, where)], {"fn": "rsub", "value": float(a)})
            return
        raise MdpError(f"{where}: this {tname} is not supported by CNN space discovery (tensor op tensor of the same "
                       "shape, a per-channel gate, a parameter scale or a scalar only)")
    if target in _ACTS_FUNC or (isinstance(target, str) and target in _ACT_METHODS):
        kind = _ACTS_FUNC.get(target) if not isinstance(target, str) else _ACT_METHODS[target]
        if kind == "gelu" and fn.kwargs.get("approximate", "none") == "tanh":
            kind = "gelu_tanh"
        add("act", [src(args[0], where)], {"kind": kind})
        return
    if tname in ("clamp", "clamp_", "clip", "hardtanh"):
        lo = fn.kwargs.get("min", args[1] if len(args) > 1 else None)
        hi = fn.kwargs.get("max", args[2] if len(args) > 2 else None)
        if tname == "hardtanh":
            lo, hi = fn.kwargs.get("min_val", args[1] if len(args) > 1 else -1.0), fn.kwargs.get("max_val", args[2] if len(args) > 2 else 1.0)
        add("scalar", [src(args[0], where)], {"fn": "clamp", "min": lo, "max": hi})
        return
    if tname == "flatten":
        in_shape = shape_of(args[0])
        start = args[1] if len(args) > 1 else fn.kwargs.get("start_dim", 0 if target is torch.flatten else 0)
        add("flatten", [src(args[0], where)], {"start_dim": int(start) % len(in_shape)})
        return
    if tname in ("reshape", "view"):
        in_shape = shape_of(args[0])
        if len(shape) == 2 and shape[0] == in_shape[0] and shape[1] == math.prod(in_shape[1:]):
            add("flatten", [src(args[0], where)], {"start_dim": 1})
            return
        if shape == in_shape:
            alias[fn.name] = src(args[0], where)
            return
        raise MdpError(f"{where}: reshaping a feature map {list(in_shape)} -> {list(shape)} "
                       f"{'(a channel shuffle) ' if len(shape) == 5 else ''}cannot be pruned structurally; "
                       "not supported by CNN space discovery")
    if target is F.adaptive_avg_pool2d:
        out = args[1] if len(args) > 1 else fn.kwargs["output_size"]
        add("adaptive_avgpool", [src(args[0], where)], {"output_size": _pair(out)})
        return
    if target is F.avg_pool2d or target is F.max_pool2d:
        raise MdpError(f"{where}: functional pooling is not supported by CNN space discovery (use the nn module)")
    if tname == "mean":
        dims = args[1] if len(args) > 1 else fn.kwargs.get("dim")
        keepdim = fn.kwargs.get("keepdim", args[2] if len(args) > 2 else False)
        in_shape = shape_of(args[0])
        dims = [int(d) % len(in_shape) for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
        add("mean", [src(args[0], where)], {"dims": sorted(dims), "keepdim": bool(keepdim)})
        return
    if tname == "permute":
        dims = args[1:] if len(args) > 2 else (args[1] if len(args) > 1 else fn.kwargs["dims"])
        add("permute", [src(args[0], where)], {"dims": [int(d) for d in dims]})
        return
    if tname == "cat" or tname == "concat":
        tensors = args[0]
        dim = args[1] if len(args) > 1 else fn.kwargs.get("dim", 0)
        if isinstance(tensors, fx.Node):  # cat of a single tensor (e.g. DenseNet's first layer): the tensor itself
            alias[fn.name] = src(tensors, where)
            return
        rank = len(shape)
        if len(tensors) == 1:
            alias[fn.name] = src(tensors[0], where)
            return
        add("cat", [src(t, where) for t in tensors], {"dim": int(dim) % rank})
        return
    if tname == "getitem":
        if shape == shape_of(args[0]):  # a slice that keeps everything, e.g. GhostNet's out[:, :oup] at full width
            alias[fn.name] = src(args[0], where)
            return
        raise MdpError(f"{where}: slicing a feature map {list(shape_of(args[0]))} -> {list(shape)} is not supported "
                       "by CNN space discovery")
    raise MdpError(f"{where}: operation {tname!r} is not supported by CNN space discovery")
