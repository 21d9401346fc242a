"""The frozen configuration of one training run (built once from CLI flags, never mutated)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The reference SageMaker job's hyperparameter names (hp.json) -> FitConfig fields.
REFERENCE_KEYS = {"batch-size": "batch_size", "epochs": "epochs", "lr": "lr"}


class FitConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    manifest: Path
    out: Path
    version: str
    model: Literal["efficientnet_b4", "efficientnet_lite0"] = "efficientnet_lite0"
    weights: str = "default"  # PATH | default | none
    freeze: str = "backbone"  # backbone | none | k (unfreeze the last k backbone blocks)
    image_size: int = Field(224, ge=32)
    # JPEG decode policy, written into the model card so the worker decodes the same way.
    decode: Literal["full", "draft"] = "full"
    # hflip: the reference's RandomHorizontalFlip; count: flips, 90-degree turns, mild crop
    # and colour (datasets.count_preserving_augment).
    augment: Literal["hflip", "count"] = "hflip"
    batch_size: int = Field(32, ge=1)
    epochs: int = Field(10, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    dropout: float = Field(0.5, ge=0, lt=1)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    seed: int = 0
    workers: int = Field(0, ge=0)
    patience: int | None = Field(None, ge=1)
    resume: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    profile: bool = False
    profile_steps: int = Field(5, ge=1)
    # What a run writes: tuning trials switch the expensive parts off.
    save_checkpoints: bool = True
    evaluate_test: bool = True
    write_artifact: bool = True
    progress: bool = True
    # Decision thresholds are chosen on validation for this share of correct manifests
    # flagged mismatch (core.model.calibration.choose_policy).
    target_false_alarm_rate: float = Field(0.05, gt=0, lt=1)
    debug_rank_metrics: bool = False  # test hook: each rank writes its all-reduced metrics

    @field_validator("freeze")
    @classmethod
    def _freeze(cls, value: str) -> str:
        if value not in ("backbone", "none") and not (value.isdigit() and int(value) >= 0):
            raise ValueError("freeze must be 'backbone', 'none' or a number of blocks")
        return value

    def hyperparameters(self) -> dict[str, Any]:
        """What goes into the model card: the reference keys plus the other training knobs."""
        return {
            "batch-size": self.batch_size, "epochs": self.epochs, "lr": self.lr,
            "freeze": self.freeze, "image_size": self.image_size, "weights": self.weights,
            "decode": self.decode, "augment": self.augment,
            "weight_decay": self.weight_decay, "dropout": self.dropout,
            "lr_schedule": self.lr_schedule, "seed": self.seed, "patience": self.patience,
        }


def read_hyperparameters(path: Path) -> dict[str, Any]:
    """An ``hp.json`` in the reference's keys (``batch-size``, ``epochs``, ``lr``) -> fields.

    SageMaker passes hyperparameters as strings; numbers given as strings are accepted.
    """
    raw = json.loads(path.read_text())
    unknown = set(raw) - set(REFERENCE_KEYS) - set(REFERENCE_KEYS.values())
    if unknown:
        raise ValueError(f"{path}: unknown hyperparameters {sorted(unknown)}; "
                         f"expected {sorted(REFERENCE_KEYS)}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        field = REFERENCE_KEYS.get(key, key)
        out[field] = float(value) if field == "lr" else int(value)
    return out


def write_hyperparameters(path: Path, *, batch_size: int, epochs: int, lr: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"batch-size": batch_size, "epochs": epochs, "lr": lr},
                               indent=2) + "\n")
