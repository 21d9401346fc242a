"""``train evaluate``: an artifact on one split of a manifest, through the serving loader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import PIL.Image
import torch

from core import plots
from core.model.artifact import load_artifact
from core.model.preprocess import eval_transform
from core.scoring import counting_metrics
from trainer.data import read_manifest


@torch.inference_mode()
def evaluate_artifact(
    artifact: Path, manifest_path: Path, *, split: str = "test", batch_size: int = 32,
    device: str = "cpu",
) -> dict[str, Any]:
    """Counting metrics of ``artifact`` on ``split`` using :func:`load_artifact` and
    :func:`eval_transform` (exactly what the worker runs)."""
    model, card = load_artifact(artifact, map_location=device)
    manifest = read_manifest(manifest_path)
    if manifest.classes != card.class_counts:
        raise ValueError(f"manifest classes {manifest.classes} differ from the artifact's "
                         f"{card.class_counts}")
    transform = eval_transform(card)
    items = manifest.split(split)
    y_pred: list[int] = []
    for start in range(0, len(items), batch_size):
        batch = []
        for item in items[start:start + batch_size]:
            with PIL.Image.open(item.image_path) as im:
                batch.append(transform(im))
        logits = model(torch.stack(batch).to(device))
        y_pred.extend(card.class_counts[i] for i in logits.argmax(1).tolist())
    metrics = counting_metrics([i.count for i in items], y_pred, card.class_counts)
    return {"artifact": str(artifact), "version": card.version, "split": split,
            "manifest_fingerprint": manifest.fingerprint,
            "artifact_fingerprint": card.data_fingerprint, **metrics}


def write_evaluation(result: dict[str, Any], out: Path) -> Path:
    """``out`` (JSON) plus the confusion matrix PNG next to it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    plots.confusion(result["confusion_matrix"], result["classes"],
                    out.with_suffix(".confusion.png"), title=f"{result['split']} confusion")
    return out
