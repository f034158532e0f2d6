"""The runtimes a latency is measured in: eager PyTorch, ONNX Runtime, TensorRT.

A latency table measured in eager PyTorch is not the latency of a model deployed through ONNX Runtime or
TensorRT, where fusion and kernel choice differ. ``runner`` turns one ``(module, example input)`` into a
callable that runs it once *in the runtime*; the timing loops (``latency/timing.py``) only ever call
callables, so every runtime is timed by the same loop (turns, warm-up, clock).

ONNX Runtime and TensorRT: the module is exported to ONNX (``torch.onnx.export``, ``dynamo=False``, opset
17) in a temporary directory and loaded from there. An example that is a tuple (ops taking a pair, e.g.
``add``) becomes that many graph inputs. On CUDA the callables are synchronous (ORT synchronises its
stream at the end of ``run``; TensorRT is enqueued on the current torch stream), so CUDA events around
them measure the call.
"""

from __future__ import annotations

import importlib
import importlib.util
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from mdp_cli.errors import MdpError

RUNTIMES = ("eager", "onnxruntime", "tensorrt")
ONNX_OPSET = 17


def check_runtime(runtime: str, device: str = "cpu", dtype: str = "float32") -> str:
    """``runtime`` if it can run here with ``device`` and ``dtype``; else a one-line MdpError naming what is missing."""
    if runtime not in RUNTIMES:
        raise MdpError(f"--runtime {runtime!r} is not known (use one of {', '.join(RUNTIMES)})")
    cuda = str(device).startswith("cuda")
    if runtime == "onnxruntime":
        if importlib.util.find_spec("onnxruntime") is None:
            raise MdpError("--runtime onnxruntime needs the onnxruntime package (pip install onnxruntime, or "
                           "onnxruntime-gpu for --device cuda)")
        if cuda:
            import onnxruntime

            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise MdpError("--runtime onnxruntime --device cuda needs onnxruntime-gpu (this onnxruntime has no "
                               "CUDAExecutionProvider); pip install onnxruntime-gpu, or profile on --device cpu")
        if dtype in ("bfloat16", "bf16"):
            raise MdpError("--runtime onnxruntime with --dtype bfloat16: ONNX Runtime has few bfloat16 kernels; use "
                           "--dtype float16 (cuda) or float32")
        if not cuda and dtype in ("float16", "fp16"):
            raise MdpError("--runtime onnxruntime on cpu needs --dtype float32 (its CPU kernels for float16 are "
                           "missing or slower than float32)")
    if runtime == "tensorrt":
        missing = [what for what, absent in (("the tensorrt package (pip install tensorrt)",
                                              importlib.util.find_spec("tensorrt") is None),
                                             ("--device cuda and an NVIDIA GPU", not cuda or not _cuda_available()))
                   if absent]
        if missing:
            raise MdpError(f"--runtime tensorrt needs {' and '.join(missing)}; use --runtime onnxruntime or eager here")
    return runtime


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def runtime_version(runtime: str) -> str:
    """The version of the runtime's package (recorded in the LUT provenance)."""
    import importlib.metadata as metadata

    package = {"eager": "torch", "onnxruntime": "onnxruntime", "tensorrt": "tensorrt"}[runtime]
    candidates = [package] + (["onnxruntime-gpu"] if runtime == "onnxruntime" else [])
    for name in candidates:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    module = importlib.import_module(package) if importlib.util.find_spec(package) else None
    return str(getattr(module, "__version__", "unknown"))



def as_tuple(example: Any) -> tuple[Any, ...]:
    return tuple(example) if isinstance(example, (tuple, list)) else (example,)


def runner(module: Any, example: Any, runtime: str = "eager", device: str = "cpu", dtype: str = "float32",
           threads: int = 1, onnx_file: Path | None = None) -> Callable[[], Any]:
    """A callable running ``module(example)`` once in ``runtime`` on ``device`` in ``dtype``.

    ``example`` is a tensor or a tuple of tensors (passed to the module as one tuple argument, as the op
    builders of ``latency/ops.py`` define it). Eager: the module on the device under ``inference_mode``.
    ONNX Runtime: an InferenceSession with all graph optimisations, ``threads`` intra-op threads on CPU
    (one inter-op thread, sequential execution, so with one thread the op runs in the calling thread and
    the thread-CPU clock holds), the CUDA provider on ``cuda``. TensorRT: an engine built from the ONNX.
    ``onnx_file``: where the ONNX is kept (reused when it exists: the engine times an item in several rounds,
    and exporting is the slow part); by default a temporary file."""
    import torch

    from mdp_cli.latency.timing import torch_dtype

    # TensorRT takes a float32 graph and lowers its precision itself (builder flags), which also spares the
    # ONNX exporter bfloat16 graphs
    td = torch.float32 if runtime == "tensorrt" else torch_dtype(dtype)
    module = module.to(device=device, dtype=td).eval()
    inputs = tuple(t.to(device=device, dtype=td) for t in as_tuple(example))
    pair = isinstance(example, (tuple, list))
    if runtime == "eager":
        arg = inputs if pair else inputs[0]
        return lambda: module(arg)  # the timing loops run it under inference_mode
    check_runtime(runtime, device, dtype)
    with tempfile.TemporaryDirectory(prefix="mdp-onnx-") as tmp:
        path = Path(onnx_file) if onnx_file is not None else Path(tmp) / "term.onnx"
        if not path.is_file():
            export_term(module, inputs, pair, path)
        if runtime == "onnxruntime":
            return _ort_runner(path, inputs, device, threads)
        return _trt_runner(path, inputs, device, dtype)


class _Unpacked(torch.nn.Module):
    """``module(tuple)`` as ``forward(*inputs)``: one ONNX graph input per tensor of the tuple."""

    def __init__(self, inner: Any):
        super().__init__()
        self.inner = inner

    def forward(self, *inputs: Any) -> Any:
        return self.inner(tuple(inputs))


class _NearlyNothing(torch.nn.Module):
    def forward(self, x: Any) -> Any:
        return x * 1.0  # one node: an empty graph would be pruned to nothing by the exporter


def call_overhead_item() -> tuple[Any, Any]:
    """A graph that does next to nothing (one multiply of one number): its time in a runtime is the fixed
    cost of one run call (ONNX Runtime on CPU: ~25 us measured here, ~10 % of a small term's time)."""
    return _NearlyNothing(), torch.ones(1, 1)


def export_term(module: Any, inputs: tuple[Any, ...], pair: bool, path: Path) -> None:
    """Write ``module`` (called on ``inputs``, as a tuple when ``pair``) as ONNX at ``path``."""
    import warnings

    import torch

    wrapped = _Unpacked(module) if pair else module
    names = [f"input{i}" for i in range(len(inputs))]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, inputs, str(path), input_names=names, dynamo=False, opset_version=ONNX_OPSET,
                          do_constant_folding=True)


def ort_session(path: Path | str, device: str = "cpu", threads: int = 1) -> Any:
    """An ONNX Runtime session for a model file: all graph optimisations; ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if str(device).startswith("cuda"):
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        providers: list[Any] = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    else:
        options.intra_op_num_threads = int(threads)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


def _ort_runner(path: Path, inputs: tuple[Any, ...], device: str, threads: int) -> Callable[[], Any]:
    session = ort_session(path, device, threads)
    names = [i.name for i in session.get_inputs()]
    tensors = dict(zip([f"input{i}" for i in range(len(inputs))], inputs))
    if not str(device).startswith("cuda"):
        feed = {name: tensors[name].detach().cpu().numpy() for name in names}
        return lambda: session.run(None, feed)
    # on the GPU the inputs stay where they are: IO binding to the torch tensors' device memory
    binding = session.io_binding()
    index = inputs[0].device.index or 0
    for name in names:
        t = tensors[name].contiguous()
        tensors[name] = t
        binding.bind_input(name, "cuda", index, _numpy_dtype(t), list(t.shape), t.data_ptr())
    for out in session.get_outputs():
        binding.bind_output(out.name, "cuda", index)

    def call() -> None:
        session.run_with_iobinding(binding)  # synchronous: ORT synchronises its stream before returning

    return call


def _numpy_dtype(t: Any) -> Any:
    import numpy as np
    import torch

    return {torch.float32: np.float32, torch.float16: np.float16}[t.dtype]


def _trt_runner(path: Path, inputs: tuple[Any, ...], device: str, dtype: str) -> Callable[[], Any]:
    """A TensorRT engine built from the ONNX at ``path`` (float16 / bfloat16 precision flags as ``dtype``
    asks), run with ``execute_async_v3`` on the current torch stream with torch-owned buffers."""
    import tensorrt as trt
    import torch

    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt, "NetworkDefinitionCreationFlag") and hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise MdpError(f"TensorRT cannot parse the ONNX of a latency term ({errors})")
    config = builder.create_builder_config()
    if dtype in ("float16", "fp16"):
        config.set_flag(trt.BuilderFlag.FP16)
    elif dtype in ("bfloat16", "bf16"):
        config.set_flag(trt.BuilderFlag.BF16)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise MdpError("TensorRT could not build an engine for a latency term (see its log above)")
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    context = engine.create_execution_context()
    buffers = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        shape = tuple(engine.get_tensor_shape(name))
        torch_type = {trt.float32: torch.float32, trt.float16: torch.float16}.get(engine.get_tensor_dtype(name))
        if torch_type is None and hasattr(trt, "bfloat16") and engine.get_tensor_dtype(name) == trt.bfloat16:
            torch_type = torch.bfloat16
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            k = int(name.removeprefix("input"))
            buf = inputs[k].to(torch_type or torch.float32).contiguous()
        else:
            buf = torch.empty(shape, dtype=torch_type or torch.float32, device=device)
        buffers.append(buf)
        context.set_tensor_address(name, buf.data_ptr())

    def call() -> None:
        context.execute_async_v3(torch.cuda.current_stream().cuda_stream)

    call.engine = engine  # keep the engine alive as long as the callable
    call.buffers = buffers
    return call
