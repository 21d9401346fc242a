"""``train evaluate``: an artifact on one split of a manifest, through the serving loader; and
``train calibrate``: (re)fit an artifact's temperature and thresholds on a split."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core import plots
from core.model.calibration import (
    DEFAULT_TARGET_FALSE_ALARM_RATE,
    calibrate,
    calibrated_probabilities,
    expected_calibration_error,
)
from core.model.card import CARD_FILE, ModelCard
from core.model.preprocess import load_uint8, normalize
from core.quality import TruthRow, audit_quality, json_safe, pr_curve
from core.scoring import counting_metrics
from core.truth import WRONG_MANIFEST_KINDS, perturbed_count
from inference.compare import Prediction, decide, prediction_from_logits
from inference.counter import BinCounter
from trainer.data import Manifest, ManifestItem, read_manifest


@torch.inference_mode()
def split_predictions(counter: BinCounter, items: Sequence[ManifestItem], *,
                      batch_size: int = 32) -> list[Prediction]:
    """The worker's Prediction (calibrated by the card; raw logits in ``scores``) per item."""
    card = counter.card
    out: list[Prediction] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        batch = torch.stack([load_uint8(item.image_path, card) for item in chunk])
        out.extend(counter.infer(normalize(batch, card.mean, card.std)))
    return out


def _load(artifact: Path, manifest_path: Path, device: str) -> tuple[BinCounter, Manifest]:
    counter = BinCounter.from_artifact(artifact, "cuda" if device == "cuda" else "cpu")
    manifest = read_manifest(manifest_path)
    if manifest.classes != counter.card.class_counts:
        raise ValueError(f"manifest classes {manifest.classes} differ from the artifact's "
                         f"{counter.card.class_counts}")
    return counter, manifest


def evaluate_artifact(
    artifact: Path, manifest_path: Path, *, split: str = "test", batch_size: int = 32,
    device: str = "cpu",
) -> dict[str, Any]:
    """Counting metrics, calibration and audit quality of ``artifact`` on ``split`` through
    the worker's own model stage (:class:`BinCounter`) and preprocessing
    (:mod:`core.model.preprocess`)."""
    counter, manifest = _load(artifact, manifest_path, device)
    card = counter.card
    items = manifest.split(split)
    predictions = split_predictions(counter, items, batch_size=batch_size)
    rows = [{"id": item.id, "count": item.count, "predicted": p.count,
             "confidence": p.confidence} for item, p in zip(items, predictions, strict=True)]
    metrics = counting_metrics([i.count for i in items], [p.count for p in predictions],
                               card.class_counts)
    return {"artifact": str(artifact), "version": card.version, "split": split,
            "manifest_fingerprint": manifest.fingerprint,
            "artifact_fingerprint": card.data_fingerprint, **metrics, "predictions": rows,
            **audit_evaluation([list(p.scores) for p in predictions],
                               [i.count for i in items], card, ids=[i.id for i in items])}


def calibrate_artifact(artifact: Path, manifest_path: Path, *, split: str = "val",
                       target: float = DEFAULT_TARGET_FALSE_ALARM_RATE,
                       device: str = "cpu") -> ModelCard:
    """Fit the temperature and thresholds of an existing artifact on ``split`` (e.g. an
    artifact trained before calibration existed) and rewrite its model card."""
    counter, manifest = _load(artifact, manifest_path, device)
    card = counter.card
    items = manifest.split(split)
    logits = [list(p.scores) for p in split_predictions(counter, items)]
    index = {c: i for i, c in enumerate(card.class_counts)}
    calibration, decision = calibrate(
        np.asarray(logits, dtype=np.float64).reshape(-1, len(index)),
        np.asarray([index[i.count] for i in items], dtype=np.int64),
        class_counts=card.class_counts, target=target, split=split,
        decoding=card.count_decoding)
    updated = card.model_copy(update={"calibration": calibration, "decision": decision})
    (artifact / CARD_FILE).write_text(updated.model_dump_json(indent=2) + "\n")
    return updated


def audit_evaluation(logits: Sequence[Sequence[float]], true_counts: Sequence[int],
                     card: ModelCard, *, ids: Sequence[str], seed: int = 0) -> dict[str, Any]:
    """Calibration and audit quality of the card's policy on a labelled split.

    Every image is judged twice, as a bin with a correct manifest and as one with a wrong
    manifest (a seeded kind of :data:`WRONG_MANIFEST_KINDS`), through the worker's own
    ``prediction_from_logits`` and ``decide``. Half the manifests are wrong here, so precision
    is higher than at a production base rate; the false-alarm rate and recall are not.
    """
    rng = random.Random(f"{seed}:evaluate")
    index = {c: i for i, c in enumerate(card.class_counts)}
    rows: list[TruthRow] = []
    for ident, row, true in zip(ids, logits, true_counts, strict=True):
        prediction = prediction_from_logits(row, card)
        kinds = list(WRONG_MANIFEST_KINDS)
        rng.shuffle(kinds)
        wrong = next(((k, m) for k in kinds
                      if (m := perturbed_count(true, k, rng, true_counts)) is not None), None)
        for suffix, manifest, kind in ((":correct", true, None),
                                       *([(":wrong", wrong[1], wrong[0])] if wrong else [])):
            verdict = decide(prediction, expected=manifest, supported_counts=card.class_counts,
                             policy=card.decision)
            rows.append(TruthRow(ident + suffix, manifest, true, verdict.status.value,
                                 verdict.discrepancy_score, kind))
    known = [(r, index[t]) for r, t in zip(logits, true_counts, strict=True) if t in index]
    z = np.asarray([r for r, _ in known], dtype=np.float64).reshape(-1, len(index))
    y = np.asarray([t for _, t in known], dtype=np.int64)
    return {
        "calibration": {"temperature": card.calibration.temperature,
                        "ece_before": expected_calibration_error(calibrated_probabilities(z), y),
                        "ece_after": expected_calibration_error(
                            calibrated_probabilities(z, card.calibration.temperature), y)},
        "decision": card.decision.model_dump(mode="json"),
        "audit_quality": audit_quality(rows),
        "pr_curve": pr_curve(rows),
    }


def write_evaluation(result: dict[str, Any], out: Path) -> Path:
    """``out`` (JSON) plus the confusion matrix and precision-recall PNGs next to it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_safe(result), indent=1, allow_nan=False) + "\n")
    plots.confusion(result["confusion_matrix"], result["classes"],
                    out.with_suffix(".confusion.png"), title=f"{result['split']} confusion")
    quality = result["audit_quality"]
    plots.precision_recall(result["pr_curve"], out.with_suffix(".pr.png"),
                           base_rate=quality["wrong_rate_judged"],
                           operating_point=(quality["recall"], quality["mismatch_precision"]),
                           title=f"{result['split']}: discrepancy score")
    return out

