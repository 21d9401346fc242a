"""Backends that run an exported form: ONNX Runtime (CPU, CUDA and TensorRT execution
providers) and OpenVINO (CPU). The exported file comes from the artifact when
``binaudit model export`` wrote it there, else it is exported once into the cache folder."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import torch

from core.model.export import (
    INPUT_NAME,
    ONNX_FILE,
    OPENVINO_DIR,
    OPENVINO_FILE,
    ExportError,
    export_onnx,
    export_openvino,
)
from inference.backends.base import BackendUnavailable, LoadContext

log = logging.getLogger(__name__)

# Our name -> ONNX Runtime's execution provider.
ORT_PROVIDERS = {
    "onnxruntime": "CPUExecutionProvider",
    "onnxruntime-cuda": "CUDAExecutionProvider",
    "onnxruntime-tensorrt": "TensorrtExecutionProvider",
}


def onnx_file(ctx: LoadContext) -> Path:
    """The artifact's ``model.onnx``, or one exported into the cache folder now."""
    for path in (ctx.artifact / ONNX_FILE, ctx.cache_dir / ONNX_FILE):
        if path.is_file():
            return path
    try:
        return export_onnx(ctx.load_model(), ctx.card, ctx.cache_dir / ONNX_FILE)
    except (ExportError, RuntimeError) as exc:
        raise BackendUnavailable(f"ONNX export failed: {exc}") from exc


def openvino_file(ctx: LoadContext) -> Path:
    """The artifact's OpenVINO IR, or one converted from the ONNX file into the cache."""
    for path in (ctx.artifact / OPENVINO_DIR / OPENVINO_FILE,
                 ctx.cache_dir / OPENVINO_DIR / OPENVINO_FILE):
        if path.is_file():
            return path
    try:
        return export_openvino(onnx_file(ctx), ctx.cache_dir / OPENVINO_DIR / OPENVINO_FILE)
    except (ExportError, RuntimeError) as exc:
        raise BackendUnavailable(f"OpenVINO conversion failed: {exc}") from exc


class OnnxRuntimeBackend:
    """An ONNX Runtime session on one execution provider."""

    concurrent = True

    def __init__(self, name: str, path: Path, device: torch.device, *, threads: int,
                 trt_cache: Path | None = None, max_batch_size: int = 32,
                 input_size: int = 224) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable("onnxruntime is not installed") from exc
        self.name = name
        self.device = device
        provider = ORT_PROVIDERS[name]
        available = ort.get_available_providers()
        if provider not in available:
            hint = "" if name == "onnxruntime" else " (needs the onnxruntime-gpu package)"
            raise BackendUnavailable(f"{provider} is not among this onnxruntime's providers "
                                     f"{available}{hint}")
        if provider != "CPUExecutionProvider" and device.type != "cuda":
            raise BackendUnavailable(f"{provider} needs a CUDA device; this one is {device}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Threads per request: with several inference streams each infer thread runs its own
        # request (InferenceSession.run is thread-safe), one thread each on a small CPU.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle ORT threads spin by default; in the worker they would take CPU from the decode
        # pool, the S3 client and the Kafka poller between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = _provider_list(provider, device, trt_cache, max_batch_size, input_size)
        self.session = ort.InferenceSession(str(path), sess_options=options,
                                            providers=providers)
        # ORT falls back to CPU silently when a GPU provider fails to load: refuse that here,
        # or a "CUDA" backend would be measured (and reported) on the CPU.
        if provider not in self.session.get_providers():
            raise BackendUnavailable(f"{provider} failed to load (session runs on "
                                     f"{self.session.get_providers()})")
        self.output = self.session.get_outputs()[0].name

    @classmethod
    def load(cls, name: str, ctx: LoadContext) -> OnnxRuntimeBackend:
        return cls(name, onnx_file(ctx), ctx.device, threads=ctx.threads,
                   trt_cache=ctx.cache_dir / "tensorrt", max_batch_size=ctx.max_batch_size,
                   input_size=ctx.card.input_size)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().cpu().contiguous().numpy()
        return torch.from_numpy(self.session.run([self.output], {INPUT_NAME: array})[0])


def _provider_list(provider: str, device: torch.device, trt_cache: Path | None,
                   max_batch_size: int, input_size: int) -> list[Any]:
    if provider == "CPUExecutionProvider":
        return [provider]
    device_id = device.index or 0
    cuda = ("CUDAExecutionProvider", {"device_id": device_id})
    if provider == "CUDAExecutionProvider":
        return [cuda, "CPUExecutionProvider"]
    cache = str(trt_cache or Path("."))
    side = f"3x{input_size}x{input_size}"
    trt = ("TensorrtExecutionProvider", {
        "device_id": device_id,
        "trt_fp16_enable": True,
        # Engines take minutes to build: keep them (and the timing cache) across restarts.
        "trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": True, "trt_timing_cache_path": cache,
        # One optimisation profile covering every batch the micro-batcher can close.
        "trt_profile_min_shapes": f"{INPUT_NAME}:1x{side}",
        "trt_profile_opt_shapes": f"{INPUT_NAME}:{max_batch_size}x{side}",
        "trt_profile_max_shapes": f"{INPUT_NAME}:{max_batch_size}x{side}",
    })
    return [trt, cuda, "CPUExecutionProvider"]


_OV_CORE: Any = None
_OV_CORE_LOCK = threading.Lock()


def openvino_core() -> Any:
    """The process's one ``ov.Core``, never dropped.

    OpenVINO's CPU plugin installs its own signal stack (sigaltstack) on the thread that builds
    it and unmaps that stack when the plugin is destroyed, from whatever thread that happens
    on. A plugin built on one thread and dropped on another, or two plugins dropped out of
    order, leave a thread a dangling signal stack: its next Python signal handler (SIGCHLD,
    SIGALRM, ...) is a SIGSEGV. A Core per backend did exactly that in the full test run. One
    Core builds the plugin once and keeps it for the life of the process.
    """
    global _OV_CORE
    with _OV_CORE_LOCK:
        if _OV_CORE is None:
            import openvino as ov

            _OV_CORE = ov.Core()
        return _OV_CORE


class OpenVinoBackend:
    """OpenVINO's CPU plugin (Intel and AMD x86 CPUs): ``streams`` execution streams of
    ``threads`` threads each, one infer request per calling thread."""

    name = "openvino"
    concurrent = True

    def __init__(self, path: Path, device: torch.device, *, threads: int,
                 streams: int = 1) -> None:
        if device.type != "cpu":
            raise BackendUnavailable(f"the openvino backend runs on the CPU; device is {device}")
        try:
            core = openvino_core()
        except ImportError as exc:
            raise BackendUnavailable("openvino is not installed") from exc
        self.device = device
        if "CPU" not in core.available_devices:
            raise BackendUnavailable(f"OpenVINO sees no CPU device ({core.available_devices})")
        # Explicit streams instead of a performance hint: one stream is the latency setup,
        # several let concurrent requests run side by side instead of queueing.
        layout: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"} if streams == 1 else \
            {"NUM_STREAMS": streams}
        config = {**layout, "INFERENCE_NUM_THREADS": threads * streams,
                  # f32 so results match PyTorch (the CPU plugin may pick bf16 on AMX/AVX512).
                  "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self._local = threading.local()  # an infer request is not thread-safe: one per thread

    @classmethod
    def load(cls, ctx: LoadContext) -> OpenVinoBackend:
        return cls(openvino_file(ctx), ctx.device, threads=ctx.threads, streams=ctx.streams)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().cpu().contiguous().numpy()
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        request.infer({0: array})
        # .data is a view into the request's buffer: copy before the next request reuses it.
        return torch.from_numpy(request.get_output_tensor(0).data.copy())
