"""Training checkpoints: one dict {model, optimizer, lr_scheduler, epoch, config, ...}."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best_model.pt"


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (or the module itself)."""
    inner = getattr(model, "module", model)
    assert isinstance(inner, nn.Module)
    return inner


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic write (tmp file + rename) so an interrupted save never leaves a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    state = torch.load(path, map_location=map_location, weights_only=False)
    missing = {"model", "optimizer", "lr_scheduler", "epoch", "config"} - set(state)
    if missing:
        raise ValueError(f"{path} is not a training checkpoint (missing {sorted(missing)})")
    return state
