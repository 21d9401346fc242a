"""Whole-network fine-tuning of the counter from a decoded-pixel cache (``trainer.pixcache``).

The torchvision classification reference's habits, sized for a 2-core CPU: AdamW with mixed
learning rates (the new head at ``lr``, the ImageNet backbone at ``lr * backbone_lr_mult``),
linear warm-up then cosine decay per step, an exponential moving average of the weights (EMA,
``torch.optim.swa_utils``), progressive resizing (one input size per epoch, e.g. 160 then 224),
count-preserving augmentation (``trainer.datasets.count_preserving_augment``) and Gaussian soft
labels over neighbouring counts (``trainer.tail.soft_label_loss``).

Checkpoints hold model, optimiser, scheduler, EMA, the epoch, the batches done in it and the RNG
state, every ``checkpoint_every_s`` seconds and after each epoch. The batch order depends only
on (seed, epoch) and every random draw is the training process's own (no DataLoader workers), so
``resume`` continues a run killed mid-epoch to exactly the weights of an uninterrupted run.

On a GPU (``device="cuda"``) the whole cache moves to the device once, augmentation runs on the
batch there (``trainer.batchaug``), the forward pass under bfloat16 autocast (``amp``), and the
running loss is read back every ``_SYNC_EVERY`` steps rather than after each one, so the host
keeps queueing work ahead of the device.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchvision.transforms import v2

from core.model.architectures import build_model
from core.model.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize
from trainer import checkpoint as ckpt
from trainer.batchaug import augment_batch
from trainer.datasets import count_preserving_augment
from trainer.tail import soft_label_loss

log = logging.getLogger(__name__)
CHECKPOINT = "whole-checkpoint.pt"
_SYNC_EVERY = 20  # steps between reads of the loss on an accelerator (each read is a sync)


class WholeConfig(BaseModel):
    """One whole-network recipe (frozen; written into the card and the results)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    architecture: str = "efficientnet_lite0"
    classes: int = Field(11, ge=2)  # counts 0..classes-1; more trains as the last class
    # input size of each epoch (progressive resizing): 4 at 160 px, then 6 at the card's 224
    sizes: tuple[int, ...] = (160,) * 4 + (224,) * 6
    eval_size: int = 224
    batch_size: int = Field(16, ge=1)  # 1.5x the img/s of 32 on this CPU (bench)
    lr: float = Field(1e-3, gt=0)
    backbone_lr_mult: float = Field(0.3, gt=0)
    weight_decay: float = Field(0.02, ge=0)
    warmup_steps: int = Field(300, ge=0)
    sigma: float = Field(0.6, gt=0)
    dropout: float = Field(0.2, ge=0, lt=1)
    ema_decay: float = Field(0.998, gt=0, lt=1)  # half-life ~350 steps
    augment: bool = True
    decoding: Literal["argmax", "median"] = "median"
    seed: int = 0
    threads: int = Field(2, ge=1)
    device: str = "cpu"
    amp: bool = False  # bfloat16 autocast of the training forward pass
    batched_augment: bool = False  # trainer.batchaug on the batch's device (GPU) vs per image

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def epochs(self) -> int:
        return len(self.sizes)

    def class_counts(self) -> list[int]:
        return list(range(self.classes))

    def targets(self, counts: np.ndarray) -> np.ndarray:
        return np.clip(counts, 0, self.classes - 1)


@dataclass
class RunState:
    """Where a run is: the next epoch, batches already done in it, the per-epoch history."""

    epoch: int = 1
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    loss_sum: float = 0.0  # of this epoch's batches so far (a resumed epoch reports all of it)
    seen: int = 0


EpochHook = Callable[[dict[str, float], AveragedModel], None]


@dataclass
class Trained:
    model: nn.Module
    ema: AveragedModel
    history: list[dict[str, float]]


def warmup_cosine(total_steps: int, warmup: int) -> Any:
    """Multiplier of each group's base lr at a step: linear warm-up, then cosine to zero."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(total_steps - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _param_groups(model: nn.Module, cfg: WholeConfig) -> list[dict[str, Any]]:
    head = list(model._fc.parameters())  # type: ignore[union-attr]
    head_ids = {id(p) for p in head}
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    return [{"params": head, "lr": cfg.lr},
            {"params": backbone, "lr": cfg.lr * cfg.backbone_lr_mult}]


def build(cfg: WholeConfig, total_steps: int, weights: str | None = "default"
          ) -> tuple[nn.Module, AveragedModel, torch.optim.Optimizer, Any]:
    torch.manual_seed(cfg.seed)  # the new head's initial weights
    model = build_model(cfg.architecture, cfg.classes, weights=weights, dropout=cfg.dropout)
    model = model.to(cfg.torch_device).to(memory_format=torch.channels_last)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay),
                        use_buffers=True)  # batch-norm statistics are averaged too
    opt = torch.optim.AdamW(_param_groups(model, cfg), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total_steps, cfg.warmup_steps))
    return model, ema, opt, sched


def batch_order(rows: np.ndarray, cfg: WholeConfig, epoch: int) -> list[np.ndarray]:
    """This epoch's batches: a permutation that depends on (seed, epoch) only."""
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    order = rows[torch.randperm(len(rows), generator=gen).numpy()]
    return [order[s:s + cfg.batch_size] for s in range(0, len(order), cfg.batch_size)]


def to_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 NCHW -> normalised float at ``size``, channels_last (the serving normalisation)."""
    x = normalize(images, IMAGENET_MEAN, IMAGENET_STD)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
    return x.contiguous(memory_format=torch.channels_last)


Pixels = np.ndarray | torch.Tensor  # a memory-mapped cache, or the cache on the device


def gather(pixels: Pixels, rows: np.ndarray) -> torch.Tensor:
    """uint8 NCHW images of ``rows``, where the cache is."""
    if isinstance(pixels, torch.Tensor):
        return pixels[torch.as_tensor(rows, device=pixels.device)]
    return torch.from_numpy(np.stack([pixels[r] for r in rows]))


def _standardize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> the serving normalisation, channels_last."""
    m = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    sd = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return ((x - m) / sd).contiguous(memory_format=torch.channels_last)


def train_batch(pixels: Pixels, rows: np.ndarray, size: int, augment: v2.Transform | None,
                cfg: WholeConfig | None = None) -> torch.Tensor:
    device = cfg.torch_device if cfg is not None else torch.device("cpu")
    images = gather(pixels, rows).to(device, non_blocking=True)
    if cfg is not None and cfg.augment and cfg.batched_augment:
        return _standardize(augment_batch(images, size))
    if augment is None:
        return to_input(images, size)
    return to_input(torch.stack([augment(im) for im in images]), size)


def on_device(pixels: np.ndarray, cfg: WholeConfig) -> Pixels:
    """The whole cache on an accelerator (1.7 GB at 224 px); on the CPU the memory map stays."""
    if cfg.torch_device.type == "cpu":
        return pixels
    return torch.from_numpy(np.ascontiguousarray(pixels)).to(cfg.torch_device)


def _save(path: Path, model: nn.Module, ema: AveragedModel, opt: torch.optim.Optimizer,
          sched: Any, state: RunState, cfg: WholeConfig) -> None:
    ckpt.save_checkpoint(path, {
        "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
        "lr_scheduler": sched.state_dict(), "epoch": state.epoch, "step": state.step,
        "history": state.history, "loss_sum": state.loss_sum, "seen": state.seen,
        "config": cfg.model_dump(mode="json"),
        "rng": ckpt.rng_state()})


def _restore(path: Path, model: nn.Module, ema: AveragedModel, opt: torch.optim.Optimizer,
             sched: Any, cfg: WholeConfig) -> RunState:
    saved = ckpt.load_checkpoint(path)
    if saved["config"] != cfg.model_dump(mode="json"):
        raise ValueError(f"another recipe wrote {path}; --resume needs the flags it was "
                         f"started with: {saved['config']}")
    model.load_state_dict(saved["model"])
    ema.load_state_dict(saved["ema"])
    opt.load_state_dict(saved["optimizer"])
    sched.load_state_dict(saved["lr_scheduler"])
    ckpt.set_rng_state(saved["rng"])
    log.info("resumed %s at epoch %d after %d batches", path, saved["epoch"], saved["step"])
    return RunState(saved["epoch"], saved["step"], list(saved["history"]),
                    float(saved["loss_sum"]), int(saved["seen"]))


def fit_whole(pixels: np.ndarray, counts: np.ndarray, fit_idx: np.ndarray,
              val_idx: np.ndarray, cfg: WholeConfig, out: Path, *, resume: bool = False,
              checkpoint_every_s: float = 300.0, weights: str | None = "default",
              on_epoch: EpochHook | None = None) -> Trained:
    """Train ``cfg`` on the cached rows ``fit_idx``; validate on ``val_idx`` after each epoch
    (then ``on_epoch(record, ema)``, e.g. to keep the best epoch's weights)."""
    torch.set_num_threads(cfg.threads)
    source = on_device(pixels, cfg)
    sync_every = 1 if cfg.torch_device.type == "cpu" else _SYNC_EVERY
    batches_per_epoch = math.ceil(len(fit_idx) / cfg.batch_size)
    model, ema, opt, sched = build(cfg, batches_per_epoch * cfg.epochs, weights)
    path = out / CHECKPOINT
    state = _restore(path, model, ema, opt, sched, cfg) if resume and path.is_file() \
        else RunState()
    y_all = torch.from_numpy(cfg.targets(counts)).to(cfg.torch_device)
    last_save = time.monotonic()
    while state.epoch <= cfg.epochs:
        size = cfg.sizes[state.epoch - 1]
        augment = count_preserving_augment(size) if cfg.augment else None
        batches = batch_order(fit_idx, cfg, state.epoch)
        if state.step == 0:  # a resumed run restored the generator mid-epoch instead
            torch.manual_seed(cfg.seed + 1_000_003 * state.epoch)
        model.train()
        started, timed = time.perf_counter(), 0
        pending = torch.zeros((), device=cfg.torch_device)  # loss not yet read back
        for b in range(state.step, len(batches)):
            rows = batches[b]
            x = train_batch(source, rows, size, augment, cfg)
            with torch.autocast(cfg.torch_device.type, torch.bfloat16, enabled=cfg.amp):
                logits = model(x)
            loss = soft_label_loss(logits, y_all[torch.as_tensor(rows, device=y_all.device)],
                                   cfg.sigma)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            ema.update_parameters(model)
            state.step, state.seen, timed = b + 1, state.seen + len(rows), timed + len(rows)
            pending += loss.detach() * len(rows)
            saving = time.monotonic() - last_save >= checkpoint_every_s
            if state.step % sync_every == 0 or saving or state.step == len(batches):
                state.loss_sum += float(pending)
                pending.zero_()
                _log_step(state, len(batches), timed, started)
            if saving and state.step < len(batches):
                _save(path, model, ema, opt, sched, state, cfg)
                last_save = time.monotonic()
        seconds = time.perf_counter() - started
        state.history.append(_epoch_record(state.epoch, size, state.loss_sum / max(state.seen, 1),
                                           timed / seconds if seconds else 0.0,
                                           ema, source, counts, val_idx, cfg))
        if on_epoch is not None:
            on_epoch(state.history[-1], ema)
        state.epoch, state.step, state.loss_sum, state.seen = state.epoch + 1, 0, 0.0, 0
        _save(path, model, ema, opt, sched, state, cfg)
        last_save = time.monotonic()
    return Trained(model, ema, state.history)


def _log_step(state: RunState, n_batches: int, timed: int, started: float) -> None:
    if state.step % _SYNC_EVERY == 0 or state.step == n_batches:
        rate = timed / max(time.perf_counter() - started, 1e-9)
        log.info("epoch %d: batch %d/%d, loss %.4f, %.1f img/s", state.epoch, state.step,
                 n_batches, state.loss_sum / max(state.seen, 1), rate)


def _epoch_record(epoch: int, size: int, train_loss: float, images_per_s: float,
                  ema: AveragedModel, pixels: Pixels, counts: np.ndarray,
                  val_idx: np.ndarray, cfg: WholeConfig) -> dict[str, float]:
    logits = predict_logits(ema.module, pixels, val_idx, cfg.eval_size)
    targets = torch.from_numpy(cfg.targets(counts[val_idx]))
    z = torch.from_numpy(logits)
    record = {"epoch": float(epoch), "size": float(size),
              "train_loss": train_loss, "train_images_per_s": images_per_s,
              "val_nll_ema": float(F.cross_entropy(z, targets)) if len(val_idx) else 0.0,
              "val_accuracy_ema": float((z.argmax(1) == targets).float().mean())
              if len(val_idx) else 0.0}
    log.info("epoch %d (%d px): train loss %.4f, %.1f img/s | EMA val NLL %.4f, acc %.3f",
             epoch, size, record["train_loss"], record["train_images_per_s"],
             record["val_nll_ema"], record["val_accuracy_ema"])
    return record


@torch.inference_mode()
def predict_logits(model: nn.Module, pixels: Pixels, rows: np.ndarray, size: int, *,
                   tta: bool = False, batch: int = 16) -> np.ndarray:
    """Logits of the cached ``rows`` at ``size`` (on the model's device); with ``tta`` averaged
    with the mirror image."""
    model.eval()
    device = next(model.parameters()).device
    if device.type != "cpu":
        batch = max(batch, 256)  # an accelerator wants big batches; the result is the same
    outs = []
    for s in range(0, len(rows), batch):
        x = to_input(gather(pixels, rows[s:s + batch]).to(device), size)
        logits = model(x)
        if tta:
            logits = (logits + model(x.flip(3))) / 2
        outs.append(logits.float().cpu())
    return torch.cat(outs).numpy() if outs else np.zeros((0, 1), dtype=np.float32)
