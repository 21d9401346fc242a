"""Train a counter on a feature cache (featcache.py): fast enough for cross-validation on CPU.

Modes
  head   frozen backbone, Dropout + Linear on the cached pooled features (the reference);
  tail   partial fine-tuning: blocks[cut:] + head conv + classifier on the cached maps of
         blocks[:cut], discriminative learning rates (backbone lr = lr * backbone_lr_mult);
  prior  no model: the training labels' class prior (argmax = the majority baseline).

Augmentation keeps the count: the cached horizontally flipped copy, vertical flips and
90-degree turns of the maps. Evaluation averages logits over the image and its flip (TTA).
Losses: ``ce``; ``soft`` (Gaussian soft labels over neighbouring counts); ``ce_emd``
(cross-entropy + squared earth mover's distance between the CDFs: an ordinal penalty).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from core.model.architectures import build_model
from trainer.featcache import DEFAULT_CUT

log = logging.getLogger(__name__)


class TailConfig(BaseModel):
    """One recipe on the cache (frozen; the CV table prints it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["head", "tail", "prior"] = "tail"
    loss: Literal["ce", "soft", "ce_emd"] = "ce"
    first_count: int = Field(0, ge=0)  # classes are first_count .. first_count + classes - 1
    classes: int = Field(11, ge=2)
    restrict: bool = False  # train only on bins whose count is a class (the reference)
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    backbone_lr_mult: float = Field(0.1, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    sigma: float = Field(0.6, gt=0)
    emd_weight: float = Field(1.0, ge=0)
    rotate: bool = True
    dropout: float = Field(0.2, ge=0, lt=1)
    drop_connect: float = Field(0.2, ge=0, lt=1)
    tta: bool = True
    # The count a distribution stands for, written into the model card (core.model.card).
    decoding: Literal["argmax", "median"] = "argmax"
    seed: int = 0
    cut: int = DEFAULT_CUT

    def class_counts(self) -> list[int]:
        return list(range(self.first_count, self.first_count + self.classes))

    def targets(self, counts: np.ndarray) -> np.ndarray:
        """Class index per bin; counts beyond the last class train as the last class."""
        return np.clip(counts - self.first_count, 0, self.classes - 1)


class Lite0Tail(nn.Module):
    """blocks[cut:] + head conv + pooling + classifier of a Lite0 (shares its modules)."""

    def __init__(self, model: Any, cut: int, drop_connect: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(model._blocks[cut:])
        self.conv_head, self.bn1, self.act = model._conv_head, model._bn1, model._swish
        self.fc = model._fc
        self.first, self.total, self.drop_connect = cut, len(model._blocks), drop_connect

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            # the package's stochastic depth schedule, as in the full model's forward
            rate = self.drop_connect * float(self.first + i) / self.total
            x = block(x, drop_connect_rate=rate if self.training else None)
        x = self.act(self.bn1(self.conv_head(x)))
        return self.fc(x.mean(dim=(2, 3)))


class PriorModel(nn.Module):
    """Constant logits: the log class prior of the training labels."""

    log_prior: torch.Tensor

    def __init__(self, log_prior: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("log_prior", torch.from_numpy(log_prior).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prior.expand(x.shape[0], -1)


def augment(x: torch.Tensor, cfg: TailConfig, gen: torch.Generator) -> torch.Tensor:
    """(B, V, ...) cached views -> (B, ...) float32, a random count-preserving variant each."""
    b, v = x.shape[0], x.shape[1]
    out = x[torch.arange(b), torch.randint(0, v, (b,), generator=gen)].float()
    if out.dim() == 4 and v == 1:  # no cached flip (`train cache --no-flip`): flip the maps
        hflip = torch.rand(b, generator=gen) < 0.5
        out[hflip] = out[hflip].flip(3)
    if out.dim() == 4 and cfg.rotate:
        vflip = torch.rand(b, generator=gen) < 0.5
        out[vflip] = out[vflip].flip(2)
        out = torch.rot90(out, int(torch.randint(0, 4, (1,), generator=gen)), dims=(2, 3))
    return out


def soft_label_loss(logits: torch.Tensor, y: torch.Tensor, sigma: float) -> torch.Tensor:
    """Cross-entropy against a Gaussian over the class axis centred on the true class: a bin
    of 3 called 4 costs less than one called 8 (an ordinal target)."""
    grid = torch.arange(logits.shape[1], dtype=torch.float32, device=logits.device)
    w = torch.exp(-0.5 * ((grid[None] - y[:, None].float()) / sigma) ** 2)
    return -((w / w.sum(1, keepdim=True)) * F.log_softmax(logits.float(), 1)).sum(1).mean()


def loss_fn(logits: torch.Tensor, y: torch.Tensor, cfg: TailConfig) -> torch.Tensor:
    if cfg.loss == "soft":
        return soft_label_loss(logits, y, cfg.sigma)
    ce = F.cross_entropy(logits, y)
    if cfg.loss == "ce":
        return ce
    cdf_gap = logits.softmax(1).cumsum(1) - F.one_hot(y, logits.shape[1]).float().cumsum(1)
    return ce + cfg.emd_weight * (cdf_gap ** 2).sum(1).mean()


def make_model(cfg: TailConfig) -> tuple[nn.Module, nn.Module]:
    """(the full Lite0 with a fresh head, the part that trains on the cache)."""
    full: Any = build_model("efficientnet_lite0", cfg.classes, weights="default",
                            dropout=cfg.dropout)
    if cfg.mode == "tail":
        return full, Lite0Tail(full, cfg.cut, cfg.drop_connect)
    return full, full._fc


def _param_groups(part: nn.Module, cfg: TailConfig) -> list[dict[str, Any]]:
    if cfg.mode == "head":
        return [{"params": list(part.parameters()), "lr": cfg.lr}]
    head = list(part.fc.parameters())  # type: ignore[union-attr]
    head_ids = {id(p) for p in head}
    backbone = [p for p in part.parameters() if id(p) not in head_ids]
    return [{"params": head, "lr": cfg.lr},
            {"params": backbone, "lr": cfg.lr * cfg.backbone_lr_mult}]


def train(features: torch.Tensor, counts: np.ndarray, train_idx: np.ndarray,
          cfg: TailConfig) -> tuple[nn.Module, nn.Module]:
    """Fit ``cfg`` on the cached rows ``train_idx``; returns (full model, trained part)."""
    if cfg.restrict:
        inside = (counts[train_idx] >= cfg.first_count) & \
            (counts[train_idx] < cfg.first_count + cfg.classes)
        train_idx = train_idx[inside]
    y_all = torch.from_numpy(cfg.targets(counts))
    if cfg.mode == "prior":
        prior = np.bincount(y_all[train_idx].numpy(), minlength=cfg.classes) + 1.0
        model = PriorModel(np.log(prior / prior.sum()))
        return model, model
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    full, part = make_model(cfg)
    opt = torch.optim.AdamW(_param_groups(part, cfg), weight_decay=cfg.weight_decay)
    steps = cfg.epochs * int(np.ceil(len(train_idx) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=steps, pct_start=0.15)
    started = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        part.train()
        order = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        total = 0.0
        for s in range(0, len(order), cfg.batch_size):
            rows = order[s:s + cfg.batch_size]
            loss = loss_fn(part(augment(features[rows], cfg, gen)), y_all[rows], cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(rows)
        log.info("%s epoch %d/%d: loss %.4f, %.0fs", cfg.mode, epoch, cfg.epochs,
                 total / max(len(order), 1), time.perf_counter() - started)
    return full, part


@torch.inference_mode()
def predict_logits(part: nn.Module, features: torch.Tensor, rows: np.ndarray,
                   cfg: TailConfig, batch: int = 256) -> np.ndarray:
    """Logits for cached ``rows``; with ``tta``, averaged over the image and its cached flip."""
    part.eval()
    outs = []
    for s in range(0, len(rows), batch):
        xb = features[rows[s:s + batch]]
        logits = part(xb[:, 0].float())
        if cfg.tta and xb.shape[1] == 2:
            logits = (logits + part(xb[:, 1].float())) / 2
        outs.append(logits)
    return torch.cat(outs).numpy() if outs else np.zeros((0, cfg.classes), dtype=np.float32)


def as_distribution(logits: np.ndarray, cfg: TailConfig, temperature: float = 1.0
                    ) -> np.ndarray:
    """Softmax over the config's classes, placed on the count axis 0..last (zeros below)."""
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    full = np.zeros((len(p), cfg.first_count + cfg.classes))
    full[:, cfg.first_count:] = p
    return full
