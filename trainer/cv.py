"""``train cv``: stratified k-fold cross-validation of recipes on a feature cache.

Each fold trains on the other folds, fits the calibration temperature on a held-out tenth of
those training folds (never on the evaluation fold), and scores the evaluation fold. The table
reports mean +- standard deviation over folds (and repeats) next to the majority baseline and
the reference recipe trained on the same data.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core.scoring import distribution_metrics, expected_calibration_error
from trainer.featcache import FeatureCache
from trainer.tail import TailConfig, as_distribution, predict_logits, train

log = logging.getLogger(__name__)

REPORTED = ("accuracy_1_5", "rmse_1_5", "off_by_one_1_5", "coverage", "ece",
            "ece_uncalibrated", "auroc_off_by_one_1_5")
MARK_START, MARK_END = "<!-- cv-table:start -->", "<!-- cv-table:end -->"


def strata(counts: np.ndarray) -> np.ndarray:
    """Stratification key: 0..5 one by one, 6-10, more than 10."""
    return np.where(counts <= 5, counts, np.where(counts <= 10, 6, 7))


def stratified_parts(counts: np.ndarray, fractions: Sequence[float], seed: int
                     ) -> list[np.ndarray]:
    """Disjoint index arrays, one per fraction, each stratum split in those proportions."""
    rng = np.random.default_rng(seed)
    key = strata(counts)
    parts: list[list[int]] = [[] for _ in fractions]
    cumulative = np.cumsum(fractions) / np.sum(fractions)
    for k in np.unique(key):
        idx = np.flatnonzero(key == k)
        rng.shuffle(idx)
        bounds = [0] + [int(round(c * len(idx))) for c in cumulative]
        for j in range(len(fractions)):
            parts[j].extend(idx[bounds[j]:bounds[j + 1]].tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising validation NLL (LBFGS on log T, started at T=1)."""
    z = torch.from_numpy(logits).double()
    y = torch.from_numpy(labels).long()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


@dataclass(frozen=True)
class FoldResult:
    recipe: str
    repeat: int
    fold: int
    metrics: dict[str, float]
    temperature: float
    seconds: float


def run_fold(cache: FeatureCache, train_idx: np.ndarray, eval_idx: np.ndarray,
             cfg: TailConfig, *, seed: int) -> tuple[dict[str, float], float]:
    """Train on ``train_idx`` (minus a calibration tenth), score ``eval_idx``."""
    fit_idx, cal_idx = stratified_parts(cache.counts[train_idx], (0.9, 0.1), seed)
    fit_idx, cal_idx = train_idx[fit_idx], train_idx[cal_idx]
    _, part = train(cache.features, cache.counts, fit_idx, cfg)
    temperature = 1.0
    if cfg.mode != "prior":
        cal_counts = cache.counts[cal_idx]
        inside = (cal_counts >= cfg.first_count) & \
            (cal_counts < cfg.first_count + cfg.classes)
        cal_logits = predict_logits(part, cache.features, cal_idx[inside], cfg)
        temperature = fit_temperature(cal_logits, cfg.targets(cal_counts[inside]))
    logits = predict_logits(part, cache.features, eval_idx, cfg)
    counts = cache.counts[eval_idx]
    metrics = distribution_metrics(as_distribution(logits, cfg, temperature), counts)
    raw = as_distribution(logits, cfg)
    covered = counts < raw.shape[1]
    metrics["ece_uncalibrated"] = expected_calibration_error(raw[covered], counts[covered])
    return metrics, temperature


def cross_validate(cache: FeatureCache, recipes: dict[str, TailConfig], *, folds: int = 5,
                   repeats: int = 1) -> list[FoldResult]:
    """Every recipe on the same folds (seeded per repeat)."""
    results = []
    for repeat in range(repeats):
        parts = stratified_parts(cache.counts, [1.0] * folds, seed=repeat)
        for fold, eval_idx in enumerate(parts):
            train_idx = np.sort(np.concatenate([p for j, p in enumerate(parts) if j != fold]))
            for name, cfg in recipes.items():
                started = time.perf_counter()
                metrics, temperature = run_fold(cache, train_idx, eval_idx, cfg, seed=repeat)
                seconds = time.perf_counter() - started
                log.info("cv %s repeat %d fold %d/%d: acc1-5 %.3f rmse1-5 %.3f auroc %.3f "
                         "(%.0fs)", name, repeat, fold + 1, folds, metrics["accuracy_1_5"],
                         metrics["rmse_1_5"], metrics["auroc_off_by_one_1_5"], seconds)
                results.append(FoldResult(name, repeat, fold, metrics, temperature, seconds))
    return results


def summarize(results: Sequence[FoldResult]) -> dict[str, dict[str, tuple[float, float]]]:
    """recipe -> metric -> (mean, standard deviation) over folds and repeats."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for recipe in dict.fromkeys(r.recipe for r in results):
        rows = [r for r in results if r.recipe == recipe]
        out[recipe] = {}
        for key in (*REPORTED, "seconds"):
            values = [r.seconds if key == "seconds" else r.metrics[key] for r in rows]
            values = [v for v in values if not math.isnan(v)]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            out[recipe][key] = (statistics.fmean(values) if values else float("nan"), sd)
    return out


def markdown_table(summary: dict[str, dict[str, tuple[float, float]]],
                   descriptions: dict[str, str]) -> str:
    head = ("| recipe | accuracy 1-5 | RMSE 1-5 | off-by-one 1-5 | coverage | ECE "
            "(calibrated) | ECE (raw) | AUROC off-by-one | train s/fold |")
    lines = [head, "|" + "---|" * 9]
    pct = {"accuracy_1_5", "off_by_one_1_5", "coverage"}
    for recipe, m in summary.items():
        cells = []
        for key in (*REPORTED, "seconds"):
            mean, sd = m[key]
            cells.append(f"{100 * mean:.1f} ± {100 * sd:.1f} %" if key in pct else
                         f"{mean:.0f}" if key == "seconds" else f"{mean:.3f} ± {sd:.3f}")
        lines.append(f"| {descriptions.get(recipe, recipe)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(results: Sequence[FoldResult], recipes: dict[str, TailConfig],
                  descriptions: dict[str, str], *, json_path: Path, markdown: Path,
                  context: dict[str, Any]) -> None:
    """The per-fold numbers as JSON, and the table between markers in ``markdown``."""
    summary = summarize(results)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({
        **context, "recipes": {k: v.model_dump() for k, v in recipes.items()},
        "summary": summary, "folds": [r.__dict__ for r in results]}, indent=1) + "\n")
    table = f"{MARK_START}\n{markdown_table(summary, descriptions)}\n{MARK_END}"
    text = markdown.read_text() if markdown.exists() else ""
    if MARK_START in text and MARK_END in text:
        before, rest = text.split(MARK_START, 1)
        text = before + table + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + table + "\n"
    markdown.write_text(text)
