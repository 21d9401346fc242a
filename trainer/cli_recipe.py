"""`binaudit train cache | cv | counter`: the count-aware recipe on a frozen-prefix cache.

Glue only: flags -> the named modules (featcache, tail, cv, recipes).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import typer

from core.cliutil import console, fail
from core.model.calibration import calibrate
from core.model.card import new_version
from trainer import cv, data
from trainer.datasets import Decode
from trainer.featcache import DEFAULT_CUT, build_cache, load_cache
from trainer.recipes import DESCRIPTIONS, RECIPES, export_counter
from trainer.tail import TailConfig, as_distribution, predict_logits, train
from trainer.train import code_version

Opt = typer.Option


def cache_cmd(
    source_dir: Annotated[list[Path], Opt(help="ABID-format folder with labels.csv; repeat to "
                                               "combine folders.")],
    out: Annotated[Path, Opt(help="Cache directory.")] = Path("artifacts/cache/abid224"),
    image_size: int = 224,
    decode: Annotated[str, Opt(help="full | draft (the card's JPEG decode policy).")] = "full",
    cut: Annotated[int, Opt(help="Frozen blocks (Lite0 has 16).")] = DEFAULT_CUT,
    flip: Annotated[bool, Opt(help="Also cache each image's horizontal flip.")] = True,
    workers: Annotated[int, Opt(help="DataLoader decode processes.")] = 1,
) -> None:
    """Run the frozen front of EfficientNet-Lite0 once over labelled images (every count)."""
    if decode not in ("full", "draft"):
        fail("--decode must be full or draft")
    policy: Literal["full", "draft"] = "draft" if decode == "draft" else "full"
    entries = [e for e in data.entries_from_dirs(source_dir) if e.image_path and e.count >= 0]
    if not entries:
        fail(f"no labelled images found in {', '.join(map(str, source_dir))}")
    started = time.perf_counter()
    build_cache([e.image_path or "" for e in entries], [e.count for e in entries],
                [e.id for e in entries], out, decode=Decode(image_size, policy), cut=cut,
                flip=flip, workers=workers)
    console.print(f"cached {len(entries)} images in {time.perf_counter() - started:.0f}s -> {out}")


def cv_cmd(
    cache: Annotated[Path, Opt(help="Cache directory from `train cache`.")],
    folds: int = 5,
    repeats: Annotated[int, Opt(help="Repeat with other fold seeds.")] = 1,
    recipe: Annotated[list[str] | None, Opt(
        help=f"Recipes to compare (default: all of {', '.join(RECIPES)}).")] = None,
    results_md: Path = Path("trainer/RESULTS.md"),
    results_json: Path = Path("trainer/results/cv.json"),
    epochs: Annotated[int | None, Opt(help="Override every recipe's epochs (quick runs).")
                      ] = None,
    tail_epochs: Annotated[int | None, Opt(
        help="Override the epochs of fine-tuning (tail) recipes only, when a CPU cannot "
             "afford k full fits; recorded in the results.")] = None,
) -> None:
    """Stratified k-fold CV of the recipes; writes the table into RESULTS.md and a JSON."""
    names = recipe or list(RECIPES)
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        fail(f"unknown recipe(s) {unknown}; choose from {sorted(RECIPES)}")
    head_only = all(RECIPES[n].mode != "tail" for n in names)
    loaded = load_cache(cache, pooled=head_only)
    # How much of the backbone is frozen is a property of the cache.
    recipes = {n: _with_epochs(RECIPES[n], tail_epochs if RECIPES[n].mode == "tail" and
                               tail_epochs is not None else epochs).model_copy(
        update={"cut": int(loaded.meta["cut"])}) for n in names}
    if not head_only:
        pooled = load_cache(cache, pooled=True)
    started = time.perf_counter()
    results = []
    for name, cfg in recipes.items():
        source = pooled if cfg.mode == "head" and not head_only else loaded
        results += cv.cross_validate(source, {name: cfg}, folds=folds, repeats=repeats)
    context = {"cache": str(cache), "images": len(loaded.ids), "folds": folds,
               "repeats": repeats, "seconds": time.perf_counter() - started,
               "image_size": loaded.meta["size"], "decode": "draft" if loaded.meta["draft"]
               else "full", "cut": loaded.meta["cut"], "code_version": code_version()}
    descriptions = {n: DESCRIPTIONS[n] + (f" ({cfg.epochs} epochs in CV)"
                                          if cfg.epochs != RECIPES[n].epochs else "")
                    for n, cfg in recipes.items()}
    cv.write_results(results, recipes, descriptions, json_path=results_json,
                     markdown=results_md, context=context)
    console.print(cv.markdown_table(cv.summarize(results), descriptions))
    console.print(f"written to {results_md} and {results_json}")


def counter_cmd(
    cache: Annotated[Path, Opt(help="Cache directory from `train cache`.")],
    recipe: Annotated[str, Opt(help="A recipe of `train cv`.")] = "count",
    out: Annotated[Path | None, Opt(help="Artifact directory [default: artifacts/models/"
                                         "<version>].")] = None,
    val_fraction: Annotated[float, Opt(help="Held out for temperature and thresholds.")] = 0.1,
    target_false_alarm_rate: float = 0.05,
    half: Annotated[bool, Opt(help="Store float16 weights (a few MB).")] = True,
    seed: int = 0,
    epochs: Annotated[int | None, Opt(help="Override the recipe's epochs.")] = None,
    calibration_ids: Annotated[Path | None, Opt(
        help="Ids (one a line) that the temperature and thresholds are fitted on, within the "
             "validation split: images like production's (e.g. full-size originals).")] = None,
) -> None:
    """Train the shipped counter: fit on the cache, calibrate and choose thresholds on a
    validation split, write a standard artifact (model.pt + model.json)."""
    if recipe not in RECIPES or RECIPES[recipe].mode == "prior":
        fail(f"--recipe must be a trainable recipe of {sorted(RECIPES)}")
    cfg = _with_epochs(RECIPES[recipe], epochs)
    loaded = load_cache(cache, pooled=cfg.mode == "head")
    cfg = cfg.model_copy(update={"seed": seed, "cut": int(loaded.meta["cut"])})
    fit_idx, val_idx = cv.stratified_parts(loaded.counts, (1 - val_fraction, val_fraction),
                                           seed)
    full, part = train(loaded.features, loaded.counts, fit_idx, cfg)
    val_counts = loaded.counts[val_idx]
    logits = predict_logits(part, loaded.features, val_idx, cfg)
    inside = (val_counts >= cfg.first_count) & (val_counts < cfg.first_count + cfg.classes)
    if calibration_ids is not None:
        wanted = set(calibration_ids.read_text().split())
        inside &= np.array([loaded.ids[i] in wanted for i in val_idx])
        console.print(f"calibrating on {int(inside.sum())} validation bins of {calibration_ids}")
    # Temperature, ECE and thresholds on the validation bins the classes cover.
    calibration, decision = calibrate(
        logits[inside], cfg.targets(val_counts[inside]), class_counts=cfg.class_counts(),
        target=target_false_alarm_rate, decoding=cfg.decoding)
    probs = as_distribution(logits, cfg, calibration.temperature)
    metrics = {f"val_{k}": v for k, v in
               cv.distribution_metrics(probs, val_counts, decoding=cfg.decoding).items()}
    version = new_version("efficientnet_lite0")
    directory = export_counter(
        full, out or Path("artifacts/models") / version, class_counts=cfg.class_counts(),
        decoding=cfg.decoding, hyperparameters={"recipe": cfg.model_dump()}, version=version,
        input_size=int(loaded.meta["size"]), decode="draft" if loaded.meta["draft"] else "full",
        calibration=calibration, decision=decision, metrics=metrics,
        data_fingerprint=_fingerprint(loaded.ids, loaded.counts), code_version=code_version(),
        half=half)
    console.print(f"counter {version} -> {directory}: validation "
                  f"accuracy 1-5 {metrics['val_accuracy_1_5']:.3f}, "
                  f"RMSE 1-5 {metrics['val_rmse_1_5']:.3f}, "
                  f"AUROC {metrics['val_auroc_off_by_one_1_5']:.3f}, "
                  f"T={calibration.temperature:.2f}, ECE {calibration.ece_before} -> "
                  f"{calibration.ece_after}; thresholds {decision.model_dump()}")


def _with_epochs(cfg: TailConfig, epochs: int | None) -> TailConfig:
    return cfg if epochs is None else cfg.model_copy(update={"epochs": epochs})


def _fingerprint(ids: list[str], counts: np.ndarray) -> str:
    return data.fingerprint([(i, int(c), 0) for i, c in zip(ids, counts, strict=True)])


def register(train_app: typer.Typer) -> None:
    """Mount these commands on ``binaudit train``."""
    train_app.command("cache")(cache_cmd)
    train_app.command("cv")(cv_cmd)
    train_app.command("counter")(counter_cmd)
