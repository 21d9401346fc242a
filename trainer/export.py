"""``binaudit model export``: write the exported forms into the artifact, next to model.pt,
and prove each one computes what the eager model computes on real images.

Forms: ``model.onnx`` (ONNX Runtime, and the source of the others) and ``openvino/model.xml``
(OpenVINO IR). Each backend that can run here is then held to the eager fp32 model on the
sample images: max |Δprob| within the tolerance and the same argmax on every image (ties of
the reference excepted). The report goes to ``exports.json``; a form that fails is removed so
no worker picks it up.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from core.model.artifact import load_artifact
from core.model.export import (
    EXPORTS_FILE,
    ONNX_FILE,
    OPENVINO_DIR,
    OPENVINO_FILE,
    ExportError,
    export_onnx,
    export_openvino,
)
from core.model.preprocess import ImageLimits, Preprocessor
from core.settings import InferenceSettings
from inference.backends import BackendUnavailable, LoadContext, load_backend
from inference.counter import resolve_device
from inference.parity import (
    ParityReport,
    backend_logits,
    compare_logits,
    reference_logits,
    tolerance_for,
)

log = logging.getLogger(__name__)

DEFAULT_BACKENDS = ("onnxruntime", "openvino")
# Which exported file each backend runs (removed when that backend fails parity).
FORM_OF = {"onnxruntime": ONNX_FILE, "onnxruntime-cuda": ONNX_FILE,
           "onnxruntime-tensorrt": ONNX_FILE, "openvino": OPENVINO_DIR}
BATCH = 16


def image_batches(images: Sequence[Path], pre: Preprocessor) -> list[torch.Tensor]:
    """The images through the one preprocessing path, in batches of 16."""
    tensors = [pre(path.read_bytes()) for path in images]
    return [torch.stack(tensors[i:i + BATCH]) for i in range(0, len(tensors), BATCH)]


def write_forms(artifact: Path) -> dict[str, str]:
    """Export ONNX and convert it to OpenVINO IR inside the artifact; name -> error if any."""
    model, card = load_artifact(artifact)
    errors: dict[str, str] = {}
    try:
        onnx_path = export_onnx(model, card, artifact / ONNX_FILE)
    except (ExportError, RuntimeError) as exc:
        return {"onnx": str(exc), "openvino": "needs the ONNX file"}
    try:
        export_openvino(onnx_path, artifact / OPENVINO_DIR / OPENVINO_FILE)
    except (ExportError, RuntimeError) as exc:
        errors["openvino"] = str(exc)
    return errors


def check_parity(artifact: Path, images: Sequence[Path], inference: InferenceSettings,
                 backends: Sequence[str]) -> tuple[list[ParityReport], dict[str, str]]:
    """Each backend vs the eager fp32 model on ``images``; (reports, skipped with reasons)."""
    model, card = load_artifact(artifact)
    device = resolve_device(inference.device)
    batches = image_batches(images, Preprocessor(card, ImageLimits.from_settings(inference)))
    reference = reference_logits(model, batches)
    ctx = LoadContext(artifact=artifact, card=card, device=device,
                      load_model=lambda: load_artifact(artifact)[0],
                      cache_dir=inference.inference_cache_dir / "export-check",
                      max_batch_size=BATCH, threads=torch.get_num_threads())
    reports, skipped = [], {}
    for name in backends:
        try:
            backend = load_backend(name, ctx)
        except BackendUnavailable as exc:
            skipped[name] = str(exc)
            continue
        report = compare_logits(name, reference, backend_logits(backend, batches),
                                tolerance_for(device))
        log.info("parity %s", report.describe())
        reports.append(report)
    return reports, skipped


def export_artifact(artifact: Path, images: Sequence[Path], inference: InferenceSettings,
                    backends: Sequence[str] = DEFAULT_BACKENDS) -> dict[str, Any]:
    """Write the forms, check them, drop the failures, write ``exports.json``; the report."""
    artifact = Path(artifact)
    errors = write_forms(artifact)
    reports, skipped = check_parity(artifact, images, inference, backends)
    for report in reports:
        form = FORM_OF.get(report.backend)
        if not report.ok and form and form != ONNX_FILE:
            shutil.rmtree(artifact / form, ignore_errors=True)
    if any(not r.ok for r in reports if FORM_OF.get(r.backend) == ONNX_FILE):
        (artifact / ONNX_FILE).unlink(missing_ok=True)
    summary = {
        "exported_at": datetime.now(UTC).isoformat(),
        "images": len(images),
        "forms": {name: (artifact / path).exists() for name, path in
                  (("onnx", ONNX_FILE), ("openvino", f"{OPENVINO_DIR}/{OPENVINO_FILE}"))},
        "export_errors": errors,
        "parity": [r.as_dict() for r in reports],
        "skipped": skipped,
        "torch": torch.__version__,
    }
    (artifact / EXPORTS_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
