"""The model card (``model.json``): everything needed to rebuild and feed a trained counter."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MODEL_FILE = "model.pt"
CARD_FILE = "model.json"


class ArtifactError(RuntimeError):
    """An artifact or a weights file is missing or does not match what was expected."""


class Calibration(BaseModel):
    """Temperature scaling fitted on the validation split: p = softmax(logits / temperature).

    Expected calibration error (ECE, 15 equal-width bins of the top probability) before and
    after, on that split. A card without it means temperature 1 (uncalibrated softmax).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(1.0, gt=0)
    ece_before: float | None = None
    ece_after: float | None = None
    fitted_on: str = "validation"


class DecisionPolicy(BaseModel):
    """Selective verdicts from the calibrated probability of the manifest's count ``p``:
    ``mismatch`` when ``1 - p >= mismatch_min_score``, ``match`` when ``p >= match_min_p``,
    ``uncertain`` otherwise (a mismatch also needs the model to prefer another count). A
    threshold of exactly 1 decides nothing (no mismatch, or no match): what the trainer writes
    when the validation split is too small to promise the target. Chosen by the trainer on
    validation for a target false-alarm rate (share of correct manifests flagged mismatch,
    ``core.model.calibration.choose_policy``); settings may override each threshold.

    A card without one gets these defaults: a mismatch needs P(manifest count) <= 0.05 and a
    match needs P(manifest count) >= 0.5.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    match_min_p: float = Field(0.5, ge=0, le=1)
    mismatch_min_score: float = Field(0.95, ge=0, le=1)
    target_false_alarm_rate: float | None = None
    # What the trainer measured for these thresholds on the split it chose them on.
    measured: dict[str, float] = {}
    chosen_on: str | None = None


class ModelCard(BaseModel):
    """Everything needed to rebuild and feed a trained counter (``model.json``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = 2
    version: str
    architecture: str
    class_counts: list[int]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # How JPEGs are decoded before the resize: "full" decodes every pixel, "draft" lets
    # libjpeg downscale in the DCT domain (faster). Training and inference use the same policy
    # (core.model.preprocess); cards from format 1 were trained on full decodes.
    decode: Literal["full", "draft"] = "full"
    # Which count a distribution stands for: the most likely one (argmax), or its median,
    # which lowers the RMSE of an ordinal count when the model is unsure (trainer/RESULTS.md).
    count_decoding: Literal["argmax", "median"] = "argmax"
    # Test-time augmentation the model was validated with: "hflip" averages the logits of the
    # image and its mirror image (two forward passes per bin; core.model.artifact applies it).
    tta: Literal["none", "hflip"] = "none"
    calibration: Calibration = Calibration()
    decision: DecisionPolicy = DecisionPolicy()
    metrics: dict[str, float] = {}
    data_fingerprint: str | None = None
    # Bins labelled by auditors' reviews among the training and validation data (None: the
    # trainer that made the card does not know; 0: none).
    reviewed_bins: int | None = None
    hyperparameters: dict[str, Any] = {}
    created_at: datetime
    code_version: str

    @field_validator("created_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("created_at must be timezone-aware (UTC)")
        return value.astimezone(UTC)

    @field_validator("class_counts")
    @classmethod
    def _non_empty(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("class_counts must name at least one class")
        return value


def new_version(architecture: str, *, now: datetime | None = None) -> str:
    """A unique version string, e.g. ``efficientnet_lite0-20261129T233000Z-1a2b3c``."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{architecture}-{stamp}-{secrets.token_hex(3)}"


def read_card(directory: Path) -> ModelCard:
    """Parse and validate ``model.json`` of an artifact directory."""
    card_path = directory / CARD_FILE
    if not directory.is_dir():
        raise ArtifactError(f"expected an artifact directory with {CARD_FILE} and {MODEL_FILE} "
                            f"at {directory}, but it does not exist")
    if not card_path.is_file():
        raise ArtifactError(f"expected the model card {CARD_FILE} at {card_path}; not found")
    try:
        return ModelCard.model_validate(json.loads(card_path.read_text()))
    except (ValueError, ValidationError) as exc:
        raise ArtifactError(f"model card {card_path} is not a valid ModelCard: {exc}") from exc
