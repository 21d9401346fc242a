"""``train evaluate``: an artifact on one split of a manifest, through the serving loader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from core import plots
from core.model.preprocess import load_uint8, normalize
from core.scoring import counting_metrics
from inference.counter import BinCounter
from trainer.data import read_manifest


@torch.inference_mode()
def evaluate_artifact(
    artifact: Path, manifest_path: Path, *, split: str = "test", batch_size: int = 32,
    device: str = "cpu",
) -> dict[str, Any]:
    """Counting metrics of ``artifact`` on ``split`` through the worker's own model stage
    (:class:`BinCounter`) and preprocessing (:mod:`core.model.preprocess`)."""
    counter = BinCounter.from_artifact(artifact, "cuda" if device == "cuda" else "cpu")
    card = counter.card
    manifest = read_manifest(manifest_path)
    if manifest.classes != card.class_counts:
        raise ValueError(f"manifest classes {manifest.classes} differ from the artifact's "
                         f"{card.class_counts}")
    items = manifest.split(split)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        batch = torch.stack([load_uint8(item.image_path, card) for item in chunk])
        for item, p in zip(chunk, counter.infer(normalize(batch, card.mean, card.std)),
                           strict=True):
            rows.append({"id": item.id, "count": item.count, "predicted": p.count,
                         "confidence": p.confidence})
    metrics = counting_metrics([r["count"] for r in rows], [r["predicted"] for r in rows],
                               card.class_counts)
    return {"artifact": str(artifact), "version": card.version, "split": split,
            "manifest_fingerprint": manifest.fingerprint,
            "artifact_fingerprint": card.data_fingerprint, **metrics, "predictions": rows}


def write_evaluation(result: dict[str, Any], out: Path) -> Path:
    """``out`` (JSON) plus the confusion matrix PNG next to it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    plots.confusion(result["confusion_matrix"], result["classes"],
                    out.with_suffix(".confusion.png"), title=f"{result['split']} confusion")
    return out
