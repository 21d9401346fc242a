"""`binaudit model export`: exported forms written into the artifact, parity on real images."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from binaudit.cli import app
from core.model.export import EXPORTS_FILE, ONNX_FILE, OPENVINO_DIR, OPENVINO_FILE
from inference.parity import FP32_TOLERANCE

IMAGES = 32  # enough real images for the check, few enough for a 2-core test run


@pytest.fixture(scope="module")
def exported(model_artifact_factory: Callable[..., Path], sample_dir: Path,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    artifact = model_artifact_factory("test-export", seed=3)
    cache = tmp_path_factory.mktemp("inference-cache")
    result = CliRunner().invoke(app, [
        "model", "export", str(artifact), "--images", str(sample_dir / "images"),
        "--limit", str(IMAGES)], env={"BINAUDIT_INFERENCE__INFERENCE_CACHE_DIR": str(cache),
                                      "BINAUDIT_INFERENCE__DEVICE": "cpu"})
    assert result.exit_code == 0, result.output
    return artifact, result.output


def test_export_writes_forms_next_to_the_weights(exported: tuple[Path, str]) -> None:
    artifact, _ = exported
    assert (artifact / ONNX_FILE).stat().st_size > 1_000_000
    assert (artifact / OPENVINO_DIR / OPENVINO_FILE).is_file()
    assert (artifact / OPENVINO_DIR / "model.bin").stat().st_size > 1_000_000
    assert (artifact / "model.pt").is_file()  # the eager form stays the source of truth


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_every_installed_cpu_backend_matches_eager_on_real_images(
        exported: tuple[Path, str], backend: str) -> None:
    artifact, output = exported
    report = json.loads((artifact / EXPORTS_FILE).read_text())
    parity = {p["backend"]: p for p in report["parity"]}
    assert backend in parity, f"{backend} not checked: {report['skipped']}"
    entry = parity[backend]
    assert entry["images"] == IMAGES
    assert entry["max_abs_diff_prob"] < FP32_TOLERANCE
    assert entry["argmax_agree"] == IMAGES  # no tie needed: fp32 differences are ~1e-7
    assert entry["ok"] is True
    assert f"{backend}: max |Δprob|" in output
