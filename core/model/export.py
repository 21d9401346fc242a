"""Exported forms of an artifact: ONNX (``model.onnx``) and OpenVINO IR (``openvino/model.xml``).

``binaudit model export`` writes them next to ``model.pt`` (with a parity report,
``exports.json``); the inference backends read them from there, or export into their cache
directory when the artifact has none (a read-only artifact still gets the fast backends).
Conversion only: running and comparing the forms is the pipeline's job (inference/).
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from core.model.card import ModelCard

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
OPENVINO_DIR = "openvino"
OPENVINO_FILE = "model.xml"
EXPORTS_FILE = "exports.json"
# ONNX names of the graph's input and output (the backends feed and read them by name).
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
OPSET = 18


class ExportError(RuntimeError):
    """An exporter is missing or failed on this model."""


def example_input(card: ModelCard, batch: int = 2) -> torch.Tensor:
    """A batch of the card's input shape (batch 2 so that the batch axis is not a constant)."""
    return torch.randn(batch, 3, card.input_size, card.input_size)


def export_onnx(model: nn.Module, card: ModelCard, path: Path) -> Path:
    """Write ``model`` as ONNX with a dynamic batch axis; atomic (tmp file, then rename).

    Uses the torch.export-based exporter (``dynamo=True``, the supported one since torch 2.9)
    and falls back to the TorchScript exporter if tracing fails on this torch version.
    """
    try:
        import onnx  # noqa: F401  (the exporter needs it; say so plainly)
    except ImportError as exc:
        raise ExportError("ONNX export needs the onnx package (pip install onnx onnxscript)"
                          ) from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".onnx.tmp")
    model = model.eval()
    x = example_input(card)
    started = time.perf_counter()
    quiet = logging.getLogger("onnx_ir")  # logs one INFO line per deduplicated constant
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters warn at length about internals
        try:
            batch = torch.export.Dim("batch", min=1, max=1024)
            torch.onnx.export(model, (x,), str(tmp), dynamo=True, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},),
                              opset_version=OPSET, optimize=True, external_data=False,
                              verbose=False)
        except Exception as exc:  # torch.export raises many types on unsupported code
            log.warning("dynamo ONNX export failed (%s); using the TorchScript exporter", exc)
            torch.onnx.export(model, (x,), str(tmp), dynamo=False, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=17,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        finally:
            quiet.setLevel(level)
    tmp.replace(path)
    log.info("exported %s to ONNX at %s in %.1fs", card.version, path,
             time.perf_counter() - started)
    return path


def export_openvino(onnx_path: Path, xml_path: Path) -> Path:
    """Convert an ONNX file to OpenVINO IR (``.xml`` + ``.bin``), weights kept in fp32."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise ExportError("OpenVINO export needs the openvino package") from exc
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    ov_model = ov.convert_model(str(onnx_path))
    # compress_to_fp16 defaults to True in save_model: keep fp32 so parity holds on CPU.
    ov.save_model(ov_model, str(xml_path), compress_to_fp16=False)
    log.info("converted %s to OpenVINO IR at %s in %.1fs", onnx_path, xml_path,
             time.perf_counter() - started)
    return xml_path
