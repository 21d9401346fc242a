"""PyTorch backends: eager (the reference) and ``torch.compile`` (inductor) with its cache
kept across restarts (``torch.compiler.save_cache_artifacts``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from inference.backends.base import BackendUnavailable, LoadContext, fixed_shape_logits

log = logging.getLogger(__name__)


class EagerBackend:
    """The model in eager PyTorch: channels_last, and bf16 autocast on CUDA."""

    name = "eager"
    # torch's intra-op threads are one process-wide pool: two callers would share it rather
    # than run side by side, so eager (and compiled) run as a single stream.
    concurrent = False

    def __init__(self, model: nn.Module, device: torch.device, *,
                 channels_last: bool | None = None) -> None:
        self.device = device
        self.is_cuda = device.type == "cuda"
        # channels_last won on both devices in bench/ (CPU: 1.27x fp32 NCHW for B4 at batch 16).
        self.channels_last = True if channels_last is None else channels_last
        model = model.to(device).eval()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model

    @classmethod
    def load(cls, ctx: LoadContext) -> EagerBackend:
        return cls(ctx.load_model(), ctx.device)

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        if self.is_cuda:
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device_type=self.device.type,
                                                    dtype=torch.bfloat16, enabled=self.is_cuda):
            return self.model(self.to_device(batch))


class CompiledBackend(EagerBackend):
    """``torch.compile`` (inductor) at one fixed batch size; partial batches are padded."""

    name = "compiled"

    def __init__(self, model: nn.Module, device: torch.device, *, batch_size: int,
                 cache_file: Path | None = None) -> None:
        super().__init__(model, device)
        self.batch_size = batch_size
        self.cache_file = cache_file
        self.compile_seconds = 0.0
        _load_compile_cache(cache_file)
        # dynamic=False: one static shape (we pad), the fastest code and no recompiles.
        self.compiled: Any = torch.compile(self.model, dynamic=False)

    @classmethod
    def load(cls, ctx: LoadContext) -> CompiledBackend:
        cache = ctx.cache_dir / f"compile-{ctx.device.type}-b{ctx.max_batch_size}.bin"
        backend = cls(ctx.load_model(), ctx.device, batch_size=ctx.max_batch_size,
                      cache_file=cache)
        backend.compile_now(ctx.card.input_size)
        return backend

    def compile_now(self, input_size: int) -> float:
        """Compile (or load from the cache) by running one batch; save the cache after."""
        started = time.perf_counter()
        try:
            self.logits(torch.zeros(self.batch_size, 3, input_size, input_size))
        except Exception as exc:  # inductor needs a C++ compiler (CPU) or triton (CUDA)
            raise BackendUnavailable(f"torch.compile failed on {self.device}: {exc!r}") from exc
        self.compile_seconds = time.perf_counter() - started
        log.info("torch.compile at batch %d ready in %.1fs", self.batch_size,
                 self.compile_seconds)
        _save_compile_cache(self.cache_file)
        return self.compile_seconds

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device_type=self.device.type,
                                                    dtype=torch.bfloat16, enabled=self.is_cuda):
            return fixed_shape_logits(self.compiled, self.to_device(batch), self.batch_size)


def _load_compile_cache(path: Path | None) -> None:
    if path is None or not path.is_file():
        return
    try:
        torch.compiler.load_cache_artifacts(path.read_bytes())
        log.info("loaded torch.compile cache artifacts from %s", path)
    except Exception as exc:  # a cache from another torch version: compile from scratch
        log.warning("ignoring torch.compile cache %s: %s", path, exc)


def _save_compile_cache(path: Path | None) -> None:
    if path is None:
        return
    artifacts = torch.compiler.save_cache_artifacts()
    if artifacts is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(artifacts[0])
    tmp.replace(path)
