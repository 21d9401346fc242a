"""Inference backends behind one interface (:class:`Backend`): eager PyTorch, torch.compile,
ONNX Runtime (CPU/CUDA/TensorRT providers), OpenVINO and torch-tensorrt."""

from inference.backends.base import Backend, BackendUnavailable, LoadContext
from inference.backends.registry import GPU_ONLY, LOADERS, default_candidates, load_backend

__all__ = ["GPU_ONLY", "LOADERS", "Backend", "BackendUnavailable", "LoadContext",
           "default_candidates", "load_backend"]
