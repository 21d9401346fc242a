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

from core.model.calibration import expected_calibration_error, fit_temperature
from core.quality import auroc
from core.scoring import decode_counts, p_of_count
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


def off_by_one_auroc(probs: np.ndarray, true_counts: np.ndarray) -> float:
    """How well 1 - P(manifest) ranks manifests off by one item (true +- 1) above correct
    ones (the audit's discrepancy score; ``probs`` over counts 0..K-1)."""
    correct = 1 - p_of_count(probs, true_counts)
    down = true_counts >= 1
    wrong = np.concatenate([1 - p_of_count(probs, true_counts + 1),
                            1 - p_of_count(probs[down], true_counts[down] - 1)])
    scores = np.concatenate([wrong, correct])
    return auroc(scores.tolist(), [True] * len(wrong) + [False] * len(correct))


def distribution_metrics(probs: np.ndarray, true_counts: np.ndarray, *, first: int = 1,
                         last: int = 5, decoding: str = "argmax") -> dict[str, float]:
    """The counter's quality from distributions over counts 0..K-1 (``decoding``: the count
    each distribution stands for, as the model card says).

    Accuracy, RMSE and off-by-one accuracy on bins with ``first``..``last`` items (where the
    reference and the product targets are defined); coverage (share of all bins whose count is
    a class); ECE on covered bins; AUROC of the discrepancy score for off-by-one manifests.
    """
    predicted = decode_counts(probs, decoding)
    band = (true_counts >= first) & (true_counts <= last)
    err = (predicted[band] - true_counts[band]).astype(float)
    covered = true_counts < probs.shape[1]
    nan = float("nan")
    return {
        "n": float(len(true_counts)),
        "accuracy_1_5": float((err == 0).mean()) if band.any() else nan,
        "rmse_1_5": float(np.sqrt((err ** 2).mean())) if band.any() else nan,
        "off_by_one_1_5": float((np.abs(err) <= 1).mean()) if band.any() else nan,
        "coverage": float(covered.mean()),
        "ece": expected_calibration_error(probs[covered], true_counts[covered]),
        "auroc_off_by_one_1_5": off_by_one_auroc(probs[band], true_counts[band]),
    }


def audit_metrics(probs: np.ndarray, true_counts: np.ndarray, *, wrong_share: float = 0.1,
                  false_alarm: float = 0.05,
                  budgets: Sequence[float] = (0.01, 0.05, 0.10)) -> dict[str, float]:
    """How the discrepancy score 1 - P(manifest) serves auditors, on bins with 1-5 items.

    ``recall_at_fa``: share of off-by-one manifests (true +- 1) scored above the score that
    only ``false_alarm`` of the correct manifests reach. ``top_k`` precision and recall: a
    stream in which every ``1 / wrong_share``-th bin carries a manifest off by one (alternately
    +1 and -1), reviewed from the highest score down to ``k`` of the bins.
    """
    band = (true_counts >= 1) & (true_counts <= 5)
    p, t = probs[band], true_counts[band]
    correct = 1 - p_of_count(p, t)
    down = t >= 1
    wrong_all = np.concatenate([1 - p_of_count(p, t + 1), 1 - p_of_count(p[down], t[down] - 1)])
    threshold = float(np.quantile(correct, 1 - false_alarm)) if len(correct) else 1.0
    out = {"recall_at_fa": float((wrong_all > threshold).mean()) if len(wrong_all) else 0.0}
    step = max(int(round(1 / wrong_share)), 1)
    wrong = np.zeros(len(t), dtype=bool)
    wrong[::step] = True
    manifest = t.copy()
    shift = np.where(np.arange(len(t)) % (2 * step) == 0, 1, -1)
    manifest[wrong] = np.maximum(t[wrong] + shift[wrong], 0)
    wrong &= manifest != t
    score = 1 - p_of_count(p, manifest)
    order = np.argsort(-score, kind="stable")
    for budget in budgets:
        k = max(int(math.ceil(budget * len(t))), 1)
        hits = int(wrong[order[:k]].sum())
        name = f"top_{budget * 100:g}pct"
        out[f"{name}_precision"] = hits / k
        out[f"{name}_recall"] = hits / max(int(wrong.sum()), 1)
    return out


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
    metrics = distribution_metrics(as_distribution(logits, cfg, temperature), counts,
                                   decoding=cfg.decoding)
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
    write_between_markers(markdown, MARK_START, MARK_END, markdown_table(summary, descriptions))


def write_between_markers(markdown: Path, start: str, end: str, body: str) -> None:
    """Replace what lies between ``start`` and ``end`` in ``markdown`` (append both if absent)."""
    block = f"{start}\n{body}\n{end}"
    text = markdown.read_text() if markdown.exists() else ""
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    markdown.write_text(text)
