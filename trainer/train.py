"""``train fit`` orchestration: each step is a named helper; the loop only calls them.

Runs single-process or under ``torchrun`` (``python -m trainer.train [fit flags]`` or
``torchrun ... .venv/bin/binaudit train fit ...``); only rank 0 writes files.
"""

from __future__ import annotations

import copy
import json
import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset

from core import plots
from core.model.architectures import apply_freeze, build_model
from core.model.artifact import save_artifact
from core.model.card import ModelCard
from core.model.preprocess import IMAGENET_MEAN, IMAGENET_STD
from core.progress import progress
from core.scoring import counting_metrics, majority_baseline, scalar_metrics
from core.settings import S3Settings
from trainer import checkpoint as ckpt
from trainer import distributed as d
from trainer.calibrate import calibrate_on_validation
from trainer.config import FitConfig
from trainer.data import Manifest, ManifestItem, read_manifest
from trainer.datasets import CountingImages, Decode, make_loader
from trainer.engine import PassStats, Preprocess, evaluate, train_one_epoch
from trainer.profiling import ProfileWindow, write_report

log = logging.getLogger(__name__)
EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class FitResult:
    best_val_loss: float
    best_epoch: int
    history: list[dict[str, float]]
    test_metrics: dict[str, Any] | None = None
    baseline: dict[str, Any] | None = None
    artifact_dir: Path | None = None
    stopped_early: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class _State:
    """Mutable training-loop state (what a checkpoint restores besides the modules)."""

    start_epoch: int = 1
    best_val_loss: float = float("inf")
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_weights: dict[str, torch.Tensor] | None = None


def code_version() -> str:
    """``git describe`` of the checkout (``-dirty`` when modified), else the package version."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).parent, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import version

        return version("binaudit")


def _loaders(
    manifest: Manifest, config: FitConfig, info: d.DistInfo, s3: S3Settings | None
) -> tuple[DataLoader[Any], DistributedSampler[Any], dict[str, DataLoader[Any]]]:
    decode = Decode(config.image_size, config.decode)
    train = CountingImages(_pairs(manifest.split("train")), decode, augment=config.augment,
                           s3=s3)
    # A DistributedSampler even for one process: its order depends on (seed, epoch) only, so a
    # resumed run sees exactly the batches an uninterrupted run would have.
    sampler: DistributedSampler[Any] = DistributedSampler(
        train, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=config.seed)
    pin = config.device != "cpu" and torch.cuda.is_available()
    train_loader = make_loader(train, batch_size=config.batch_size, workers=config.workers,
                               pin_memory=pin, sampler=sampler)
    evals = {}
    for split in ("val", "test"):
        ds = CountingImages(_pairs(manifest.split(split)), decode, s3=s3)
        # Strided shards without padding, so summed metrics count every image exactly once.
        shard = Subset(ds, range(info.rank, len(ds), info.world_size))
        evals[split] = make_loader(shard, batch_size=max(config.batch_size, 64),
                                   workers=config.workers, pin_memory=pin)
    return train_loader, sampler, evals


def _pairs(items: list[ManifestItem]) -> list[tuple[str, int]]:
    return [(item.image_path, item.label) for item in items]


def _model(config: FitConfig, n_classes: int, device: torch.device,
           info: d.DistInfo) -> tuple[nn.Module, list[nn.Module]]:
    torch.manual_seed(config.seed)  # same initial head on every rank (DDP broadcasts anyway)
    model = build_model(config.model, n_classes, weights=config.weights, dropout=config.dropout)
    frozen = apply_freeze(model, config.freeze)
    model = model.to(device).to(memory_format=torch.channels_last)
    if info.distributed:
        ids = [device.index] if device.type == "cuda" else None
        model = DistributedDataParallel(model, device_ids=ids)
    return model, frozen


def _optimizer(model: nn.Module, config: FitConfig
               ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler: torch.optim.lr_scheduler.LRScheduler
    if config.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    else:
        scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    return optimizer, scheduler


def _resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler, device: torch.device) -> _State:
    state = ckpt.load_checkpoint(path, map_location=device)
    ckpt.unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["lr_scheduler"])
    best_path = path.parent / ckpt.BEST_FILE
    best = torch.load(best_path, map_location="cpu", weights_only=True) \
        if best_path.is_file() else None
    log.info("resumed from %s at epoch %d", path, state["epoch"])
    return _State(start_epoch=state["epoch"] + 1, best_val_loss=state["best_val_loss"],
                  best_epoch=state["best_epoch"], bad_epochs=state["bad_epochs"],
                  history=list(state["history"]), best_weights=best)


def _epoch_record(epoch: int, train: dict[str, float], val: dict[str, float], lr: float,
                  seconds: float, data_seconds: float,
                  first_batch_seconds: float = 0.0) -> dict[str, float]:
    return {
        "epoch": epoch, "lr": lr, "seconds": seconds,
        # Share of the epoch spent waiting for the DataLoader (decoding was the bottleneck
        # when it grows; more --workers then).
        "data_wait_fraction": data_seconds / seconds if seconds else 0.0,
        # The first batch also waits for the workers to start (once per run: they persist).
        "first_batch_wait_s": first_batch_seconds,
        "train_loss": train["loss_sum"] / max(train["n"], 1),
        "train_accuracy": train["correct"] / max(train["n"], 1),
        "val_loss": val["loss_sum"] / max(val["n"], 1),
        "val_accuracy": val["correct"] / max(val["n"], 1),
        # All ranks together (``train`` is all-reduced); times and data wait are rank 0's.
        "train_images_per_s": train["n"] / seconds if seconds else 0.0,
    }


def _checkpoint(config: FitConfig, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler, state: _State) -> None:
    ckpt.save_checkpoint(config.out / ckpt.CHECKPOINT_FILE, {
        "model": ckpt.unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(), "epoch": epoch,
        "config": config.model_dump(mode="json"), "best_val_loss": state.best_val_loss,
        "best_epoch": state.best_epoch, "bad_epochs": state.bad_epochs,
        "history": state.history, "rng": ckpt.rng_state(),
    })


def _progress_bar(config: FitConfig, info: d.DistInfo, epoch: int, total: int
                  ) -> tuple[Any, Callable[[int, float, float], None] | None]:
    if not (config.progress and info.is_main):
        return None, None
    bar = progress(total=total, desc=f"epoch {epoch}/{config.epochs}", unit="img",
                   leave=False)

    def update(n: int, loss: float, rate: float) -> None:
        bar.update(n * info.world_size)
        bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{rate * info.world_size:.1f}")

    return bar, update


def _train_epoch(config: FitConfig, info: d.DistInfo, epoch: int, model: nn.Module,
                 frozen: list[nn.Module], loader: DataLoader[Any],
                 optimizer: torch.optim.Optimizer, pre: Preprocess, profile: bool) -> PassStats:
    bar, update = _progress_bar(config, info, epoch, len(loader.dataset))  # type: ignore[arg-type]
    window = ProfileWindow(config.out / "profile", pre.device, len(loader),
                           active=config.profile_steps) if profile else None
    try:
        if window is None:
            return train_one_epoch(model, loader, optimizer, preprocess=pre, frozen=frozen,
                                   progress=update)
        with window:
            stats = train_one_epoch(model, loader, optimizer, preprocess=pre, frozen=frozen,
                                    progress=update, step_hook=window.step)
        write_report(window, stats, batch_size=config.batch_size, world_size=info.world_size)
        return stats
    finally:
        if bar is not None:
            bar.close()


def _final_test(config: FitConfig, manifest: Manifest, model: nn.Module, state: _State,
                loader: DataLoader[Any], pre: Preprocess) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate the best-validation weights once on the test split (all ranks, gathered)."""
    if state.best_weights is not None:
        ckpt.unwrap(model).load_state_dict(state.best_weights)
    _, y_true, y_pred = evaluate(model, loader, preprocess=pre)
    y_true, y_pred = d.all_gather_lists(y_true), d.all_gather_lists(y_pred)
    classes = manifest.classes
    test = counting_metrics([classes[i] for i in y_true], [classes[i] for i in y_pred], classes)
    baseline = majority_baseline([i.count for i in manifest.split("train")],
                                 [classes[i] for i in y_true], classes)
    return test, baseline


def _write_outputs(config: FitConfig, manifest: Manifest, model: nn.Module, result: FitResult
                   ) -> None:
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "history.json").write_text(json.dumps(result.history, indent=1) + "\n")
    if result.history:
        plots.training_curves(result.history, out / "training_curves.png")
    metrics: dict[str, Any] = {"best_val_loss": result.best_val_loss,
                               "best_epoch": result.best_epoch, "history": result.history}
    if result.test_metrics is not None:
        metrics |= {"test": result.test_metrics, "baseline_majority": result.baseline}
        plots.confusion(result.test_metrics["confusion_matrix"], manifest.classes,
                        out / "confusion_matrix.png", title="test confusion matrix")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    if config.write_artifact:
        card_metrics = {"val_loss": result.best_val_loss}
        if result.test_metrics is not None:
            card_metrics |= scalar_metrics(result.test_metrics, prefix="test_")
        card = ModelCard(
            version=config.version, architecture=config.model, class_counts=manifest.classes,
            input_size=config.image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD,
            decode=config.decode,
            calibration=result.extra["calibration"], decision=result.extra["decision"],
            metrics=card_metrics, data_fingerprint=manifest.fingerprint,
            reviewed_bins=manifest.reviewed_bins(),
            hyperparameters=config.hyperparameters(), created_at=datetime.now(UTC),
            code_version=code_version())
        result.artifact_dir = save_artifact(out, ckpt.unwrap(model), card)
        log.info("artifact %s written to %s", config.version, out)


def fit(config: FitConfig, *, s3: S3Settings | None = None,
        on_epoch: EpochCallback | None = None) -> FitResult:
    """Train per ``config`` (single process or one torchrun rank); see the module docstring.

    ``s3`` is where ``s3://`` images of the manifest are read from (endpoint, credentials).
    """
    info = d.dist_info()
    device = d.pick_device(config.device, info)
    d.setup(info, device)
    try:
        return _fit(config, info, device, on_epoch, s3)
    finally:
        d.teardown()


def _fit(config: FitConfig, info: d.DistInfo, device: torch.device,
         on_epoch: EpochCallback | None, s3: S3Settings | None) -> FitResult:
    manifest = read_manifest(config.manifest)
    train_loader, sampler, evals = _loaders(manifest, config, info, s3)
    model, frozen = _model(config, len(manifest.classes), device, info)
    optimizer, scheduler = _optimizer(model, config)
    state = _resume(config.resume, model, optimizer, scheduler, device) \
        if config.resume else _State()
    pre = Preprocess(device, IMAGENET_MEAN, IMAGENET_STD)
    stopped = False
    for epoch in range(state.start_epoch, config.epochs + 1):
        sampler.set_epoch(epoch)
        # Dropout and flips draw from a stream seeded per (epoch, rank): a resumed run draws
        # exactly what the uninterrupted run would have.
        torch.manual_seed(config.seed + 1_000_003 * epoch + info.rank)
        stats = _train_epoch(config, info, epoch, model, frozen, train_loader, optimizer, pre,
                             profile=config.profile and info.is_main and epoch == state.start_epoch)
        scheduler.step()
        val_stats, _, _ = evaluate(model, evals["val"], preprocess=pre)
        record = _epoch_record(epoch, d.all_reduce_sums(stats.sums(), device),
                               d.all_reduce_sums(val_stats.sums(), device),
                               optimizer.param_groups[0]["lr"], stats.seconds,
                               stats.phase_seconds["data"],
                               stats.steps[0]["data"] if stats.steps else 0.0)
        state.history.append(record)
        if record["val_loss"] < state.best_val_loss:
            state.best_val_loss, state.best_epoch, state.bad_epochs = record["val_loss"], epoch, 0
            state.best_weights = copy.deepcopy(
                {k: v.detach().cpu() for k, v in ckpt.unwrap(model).state_dict().items()})
            if info.is_main and config.save_checkpoints:
                ckpt.save_checkpoint(config.out / ckpt.BEST_FILE, state.best_weights)
        else:
            state.bad_epochs += 1
        log.info("epoch %d: train loss %.4f acc %.3f | val loss %.4f acc %.3f | %.1f img/s",
                 epoch, record["train_loss"], record["train_accuracy"], record["val_loss"],
                 record["val_accuracy"], record["train_images_per_s"])  # all ranks already
        if info.is_main and config.save_checkpoints:
            _checkpoint(config, epoch, model, optimizer, scheduler, state)
        if config.debug_rank_metrics:
            _write_rank_metrics(config.out, info.rank, state.history)
        if on_epoch is not None:
            on_epoch(epoch, record)
        if config.patience is not None and state.bad_epochs >= config.patience:
            log.info("early stop after epoch %d: no val improvement for %d epochs",
                     epoch, state.bad_epochs)
            stopped = True
            break
    result = FitResult(best_val_loss=state.best_val_loss, best_epoch=state.best_epoch,
                       history=state.history, stopped_early=stopped)
    if config.evaluate_test:
        result.test_metrics, result.baseline = _final_test(config, manifest, model, state,
                                                           evals["test"], pre)
    elif state.best_weights is not None:
        ckpt.unwrap(model).load_state_dict(state.best_weights)
    if config.write_artifact:
        result.extra["calibration"], result.extra["decision"] = calibrate_on_validation(
            model, evals["val"], pre, class_counts=manifest.classes,
            target=config.target_false_alarm_rate)
    if info.is_main and (config.write_artifact or config.save_checkpoints):
        _write_outputs(config, manifest, model, result)
    d.barrier()
    return result


def _write_rank_metrics(out: Path, rank: int, history: list[dict[str, float]]) -> None:
    # Test hook: every rank writes the all-reduced numbers it computed (times differ per rank).
    path = out / "rank_metrics" / f"rank{rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    keep = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")
    path.write_text(json.dumps([{k: h[k] for k in keep} for h in history]) + "\n")

