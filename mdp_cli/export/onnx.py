"""ONNX export of a pruned model, checked against PyTorch with onnx's reference runtime and ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mdp_cli.errors import MdpError


def export_onnx(net, shape, path: Path) -> dict[str, Any]:
    """Write ONNX (single file, input ``input``) and check its output against PyTorch."""
    import torch

    from mdp_cli.artifacts import atomic_path

    x = torch.randn(1, *shape)
    with atomic_path(path) as tmp:
        torch.onnx.export(net, (x,), str(tmp), input_names=["input"], output_names=["logits"],
                          dynamo=False, opset_version=17)
    return check_onnx(net, shape, path)


def check_onnx(net, shape, path: Path, tolerance: float = 1e-3) -> dict[str, Any]:
    """Run the ONNX file at ``path`` in onnx's reference runtime on a random input of ``shape`` (C, H, W) and
    compare with ``net``: an error past ``tolerance`` is refused."""
    import numpy as np
    import onnx
    import torch
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    x = torch.randn(1, *shape)
    (got,) = ReferenceEvaluator(model).run(None, {model.graph.input[0].name: x.numpy()})
    with torch.no_grad():
        want = net.eval()(x).numpy()
    err = float(np.abs(got - want).max())
    if err > tolerance:
        raise MdpError(f"{path}: ONNX output differs from PyTorch by {err:.2e}")
    out = {"path": str(path), "max_abs_diff": err}
    out.update(check_onnxruntime(path, x.numpy(), want, tolerance))
    return out


def check_onnxruntime(path: Path, x, want, tolerance: float = 1e-3) -> dict[str, Any]:
    """Run the ONNX file in ONNX Runtime (what users deploy on; graph optimisations on, as the LUT's
    onnxruntime rows were timed) and compare with PyTorch; without onnxruntime installed, say so."""
    import importlib.util

    import numpy as np

    if importlib.util.find_spec("onnxruntime") is None:
        return {"onnxruntime": None}
    from mdp_cli.latency.runtimes import ort_session, runtime_version

    session = ort_session(path)
    (got,) = session.run(None, {session.get_inputs()[0].name: x})
    err = float(np.abs(got - want).max())
    if err > tolerance:
        raise MdpError(f"{path}: ONNX Runtime's output differs from PyTorch by {err:.2e}")
    return {"onnxruntime": runtime_version("onnxruntime"), "onnxruntime_max_abs_diff": err}
