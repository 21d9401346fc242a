"""Backend names -> loaders, and what each device tries by default (fastest first)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from inference.backends.base import Backend, BackendUnavailable, LoadContext
from inference.backends.exported import OnnxRuntimeBackend, OpenVinoBackend
from inference.backends.tensorrt import TorchTensorRTBackend
from inference.backends.torch_backends import CompiledBackend, EagerBackend

LOADERS: dict[str, Callable[[LoadContext], Backend]] = {
    "eager": EagerBackend.load,
    "compiled": CompiledBackend.load,
    "onnxruntime": lambda ctx: OnnxRuntimeBackend.load("onnxruntime", ctx),
    "onnxruntime-cuda": lambda ctx: OnnxRuntimeBackend.load("onnxruntime-cuda", ctx),
    "onnxruntime-tensorrt": lambda ctx: OnnxRuntimeBackend.load("onnxruntime-tensorrt", ctx),
    "openvino": OpenVinoBackend.load,
    "tensorrt": TorchTensorRTBackend.load,
}
GPU_ONLY = ("onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")

# CPU: torch.compile is left out of the default sweep: compiling B4 takes ~2 min per batch
# size on 2 cores and it measured 1.4x eager where ONNX Runtime measured 2.5x (bench/);
# add "compiled" to inference.tune_backends to include it. Eager is always the last resort.
DEFAULT_CANDIDATES = {
    "cpu": ("onnxruntime", "openvino", "eager"),
    "cuda": ("tensorrt", "onnxruntime-tensorrt", "onnxruntime-cuda", "compiled", "eager"),
}


def default_candidates(device: torch.device) -> tuple[str, ...]:
    """The backends autotuning measures on ``device`` when settings name none."""
    return DEFAULT_CANDIDATES.get(device.type, ("eager",))


def load_backend(name: str, ctx: LoadContext) -> Backend:
    """Build backend ``name``; :class:`BackendUnavailable` says why it cannot run here."""
    loader = LOADERS.get(name)
    if loader is None:
        raise BackendUnavailable(f"unknown backend {name!r}; expected one of {sorted(LOADERS)}")
    if name in GPU_ONLY and ctx.device.type != "cuda":
        raise BackendUnavailable(f"{name} needs a CUDA GPU; this device is {ctx.device}")
    return loader(ctx)
