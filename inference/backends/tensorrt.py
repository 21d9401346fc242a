"""TensorRT through torch-tensorrt (NVIDIA GPUs only), fp16, one engine for batch 1..max."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from inference.backends.base import BackendUnavailable, LoadContext

log = logging.getLogger(__name__)


class TorchTensorRTBackend:
    """``torch_tensorrt.compile(ir="dynamo")`` with a dynamic batch profile; the engine is
    saved as an ExportedProgram in the cache folder and reloaded on the next start."""

    name = "tensorrt"
    concurrent = False  # one CUDA stream: a GPU runs one batch at a time well enough

    def __init__(self, module: Any, device: torch.device) -> None:
        self.module = module
        self.device = device

    @classmethod
    def load(cls, ctx: LoadContext) -> TorchTensorRTBackend:
        if ctx.device.type != "cuda" or not torch.cuda.is_available():
            raise BackendUnavailable(f"TensorRT needs an NVIDIA GPU; device is {ctx.device}")
        try:
            import torch_tensorrt
        except ImportError as exc:
            raise BackendUnavailable("torch-tensorrt is not installed") from exc
        side = ctx.card.input_size
        cache = ctx.cache_dir / f"tensorrt-b{ctx.max_batch_size}.ep"
        if cache.is_file():
            log.info("loading the TensorRT engine from %s", cache)
            return cls(torch.export.load(str(cache)).module(), ctx.device)
        spec = torch_tensorrt.Input(min_shape=(1, 3, side, side),
                                    opt_shape=(ctx.max_batch_size, 3, side, side),
                                    max_shape=(ctx.max_batch_size, 3, side, side),
                                    dtype=torch.float32)
        started = time.perf_counter()
        model = ctx.load_model().to(ctx.device).eval()
        try:
            module = torch_tensorrt.compile(model, ir="dynamo", inputs=[spec],
                                            enabled_precisions={torch.float16})
        except Exception as exc:  # unsupported op, TensorRT/CUDA mismatch...
            raise BackendUnavailable(f"torch-tensorrt compile failed: {exc!r}") from exc
        log.info("TensorRT engine built in %.1fs", time.perf_counter() - started)
        example = torch.zeros(ctx.max_batch_size, 3, side, side, device=ctx.device)
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch_tensorrt.save(module, str(cache), output_format="exported_program",
                            arg_inputs=[example])
        return cls(module, ctx.device)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(batch.pin_memory().to(self.device, non_blocking=True))
