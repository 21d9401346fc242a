"""Artifacts: a directory holding ``model.pt`` (a state dict) and ``model.json`` (a
:class:`~core.model.card.ModelCard`). :func:`load_artifact` is the only way to read one.

Imports torch and pydantic only (no DB, no Kafka), so every front end can depend on it.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.model.architectures import ARCHITECTURES, build_model
from core.model.card import CARD_FILE, MODEL_FILE, ArtifactError, ModelCard, read_card

log = logging.getLogger(__name__)


def save_artifact(directory: Path, model: nn.Module, card: ModelCard) -> Path:
    """Write ``model.pt`` (state dict, unwrapped from DDP) and ``model.json``; return the dir."""
    directory.mkdir(parents=True, exist_ok=True)
    inner: Any = getattr(model, "module", model)  # unwrap DistributedDataParallel
    state = {k: v.detach().cpu().contiguous() for k, v in inner.state_dict().items()}
    tmp = directory / (MODEL_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(directory / MODEL_FILE)
    (directory / CARD_FILE).write_text(card.model_dump_json(indent=2) + "\n")
    return directory


def load_artifact(
    directory: Path, *, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelCard]:
    """Load an artifact: the model (in ``eval()``) and its card. Raises :class:`ArtifactError`."""
    directory = Path(directory)
    card = read_card(directory)
    if card.architecture not in ARCHITECTURES:
        raise ArtifactError(f"{directory / CARD_FILE} names architecture {card.architecture!r}; "
                            f"expected one of {ARCHITECTURES}")
    weights_path = directory / MODEL_FILE
    if not weights_path.is_file():
        raise ArtifactError(f"expected the state dict {MODEL_FILE} at {weights_path}; not found")
    try:
        state = torch.load(weights_path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/corrupt files
        raise ArtifactError(f"could not read the state dict {weights_path}: {exc}") from exc
    model = build_model(card.architecture, len(card.class_counts), weights=None)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ArtifactError(
            f"state dict {weights_path} does not match {card.architecture} with "
            f"{len(card.class_counts)} classes: {exc}") from exc
    model.to(map_location)
    model.eval()
    if card.tta == "hflip":
        model = FlipAverage(model).eval()
    return model, card


class FlipAverage(nn.Module):
    """The card's ``tta: hflip``: logits averaged over the image and its mirror image (a flip
    keeps the count), so every backend and export runs what the model was validated with."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.model(x) + self.model(x.flip(3))) / 2


def find_latest_artifact(root: Path) -> Path | None:
    """The artifact directory under ``root`` (itself or below) with the newest ``created_at``."""
    root = Path(root)
    if not root.exists():
        return None
    best: tuple[datetime, Path] | None = None
    for card_path in sorted(root.rglob(CARD_FILE)):
        directory = card_path.parent
        if not (directory / MODEL_FILE).is_file():
            continue
        try:
            card = read_card(directory)
        except ArtifactError as exc:
            log.warning("skipping unreadable artifact %s: %s", directory, exc)
            continue
        if best is None or card.created_at > best[0]:
            best = (card.created_at, directory)
    return best[1] if best else None
