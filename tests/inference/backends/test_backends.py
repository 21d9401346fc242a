"""Each backend behind the one interface: same predictions as eager PyTorch on real images;
GPU backends refused with a clear reason on a machine without one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from core.model.artifact import load_artifact
from core.model.preprocess import ImageLimits, Preprocessor
from inference.backends import GPU_ONLY, BackendUnavailable, LoadContext, load_backend
from inference.backends.base import fixed_shape_logits
from inference.backends.exported import OnnxRuntimeBackend
from inference.backends.tensorrt import TorchTensorRTBackend
from inference.counter import BinCounter
from inference.parity import FP32_TOLERANCE

LIMITS = ImageLimits(max_bytes=8 * 1024 * 1024, max_pixels=40_000_000)
needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(),
                                  reason="checks the refusal on a machine without a GPU")


@pytest.fixture(scope="module")
def artifact(model_artifact_factory: Callable[..., Path]) -> Path:
    return model_artifact_factory("test-backends", seed=5)


def context(artifact: Path, cache: Path, device: str = "cpu", max_batch: int = 8) -> LoadContext:
    model, card = load_artifact(artifact)
    return LoadContext(artifact=artifact, card=card, device=torch.device(device),
                       load_model=lambda: load_artifact(artifact)[0], cache_dir=cache,
                       max_batch_size=max_batch, threads=torch.get_num_threads())


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("backend-cache")


@pytest.fixture(scope="module")
def images(artifact: Path, sample_dir: Path) -> torch.Tensor:
    pre = Preprocessor(load_artifact(artifact)[1], LIMITS)
    paths = sorted((sample_dir / "images").glob("*.jpg"))[:12]
    return torch.stack([pre(p.read_bytes()) for p in paths])


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_backend_counts_like_eager_on_real_images(artifact: Path, cache: Path,
                                                  images: torch.Tensor, name: str) -> None:
    eager = BinCounter.from_artifact(artifact, "cpu")
    backend = load_backend(name, context(artifact, cache))
    counter = BinCounter(backend, eager.card)
    assert counter.backend_name == name
    # An artifact without exported forms gets them in the cache folder, not in the artifact.
    assert (cache / "model.onnx").is_file() and not (artifact / "model.onnx").exists()
    # Odd sizes: the batch axis is dynamic, partial batches need no padding.
    for rows in (images[:1], images[:5], images):
        got, want = counter.infer(rows), eager.infer(rows)
        assert [p.count for p in got] == [p.count for p in want]
        for g, w in zip(got, want, strict=True):
            for k in w.probabilities:
                assert g.probabilities[k] == pytest.approx(w.probabilities[k],
                                                           abs=FP32_TOLERANCE)


def test_fixed_shape_engine_splits_and_pads() -> None:
    seen: list[int] = []

    def engine(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        return x.sum(dim=(1, 2, 3)).unsqueeze(1)

    batch = torch.arange(11.0).reshape(11, 1, 1, 1)
    out = fixed_shape_logits(engine, batch, 4)
    assert seen == [4, 4, 4]  # every call at the compiled size
    assert out.squeeze(1).tolist() == list(range(11))  # padded rows dropped, order kept


@needs_no_gpu
@pytest.mark.parametrize("name", GPU_ONLY)
def test_gpu_backends_are_refused_with_a_reason_without_a_gpu(artifact: Path, cache: Path,
                                                              name: str) -> None:
    with pytest.raises(BackendUnavailable, match="needs a CUDA GPU"):
        load_backend(name, context(artifact, cache))


@needs_no_gpu
def test_onnxruntime_gpu_providers_missing_are_named(artifact: Path, cache: Path) -> None:
    # Even when asked for a CUDA device, the CPU-only onnxruntime wheel says what is missing.
    path = cache / "model.onnx"
    if not path.is_file():
        load_backend("onnxruntime", context(artifact, cache))
    import onnxruntime

    for name, provider in (("onnxruntime-cuda", "CUDAExecutionProvider"),
                           ("onnxruntime-tensorrt", "TensorrtExecutionProvider")):
        if provider in onnxruntime.get_available_providers():
            continue  # onnxruntime-gpu installed: refused later, at the device check
        with pytest.raises(BackendUnavailable, match=provider):
            OnnxRuntimeBackend(name, path, torch.device("cuda"), threads=1)


@needs_no_gpu
def test_torch_tensorrt_needs_an_nvidia_gpu(artifact: Path, cache: Path) -> None:
    with pytest.raises(BackendUnavailable, match="NVIDIA GPU"):
        TorchTensorRTBackend.load(context(artifact, cache, device="cuda"))


@pytest.mark.slow
@pytest.mark.timeout(1800)  # inductor compiles C++ kernels: ~11 min on 2 contended cores
def test_compiled_backend_matches_eager_and_keeps_its_cache(
        model_artifact_factory: Callable[..., Path], tmp_path: Path, sample_dir: Path) -> None:
    """torch.compile (inductor) on a small input: same predictions as eager, partial batches
    padded to the one compiled shape, cache artifacts written for the next start."""
    small = model_artifact_factory("test-compiled", input_size=96, seed=9)
    eager = BinCounter.from_artifact(small, "cpu")
    pre = Preprocessor(eager.card, LIMITS)
    paths = sorted((sample_dir / "images").glob("*.jpg"))[:3]
    rows = torch.stack([pre(p.read_bytes()) for p in paths])
    backend = load_backend("compiled", context(small, tmp_path, max_batch=2))
    counter = BinCounter(backend, eager.card)
    got, want = counter.infer(rows), eager.infer(rows)  # 3 rows: one full batch + one padded
    assert [p.count for p in got] == [p.count for p in want]
    for g, w in zip(got, want, strict=True):
        assert g.confidence == pytest.approx(w.confidence, abs=FP32_TOLERANCE)
    assert (tmp_path / "compile-cpu-b2.bin").stat().st_size > 0
