"""Calibration and decision thresholds (pure numpy): what the trainer fits on the validation
split and writes into the model card, and what inference applies to every logits row.

- :func:`calibrated_probabilities`: softmax(logits / temperature), the one formula every front
  end uses (through ``inference.compare.prediction_from_logits``).
- :func:`fit_temperature`: the temperature that minimises the negative log-likelihood of the
  validation labels (temperature scaling, Guo et al. 2017). NLL is convex in 1/T, so a golden
  section search over 1/T finds the global minimum.
- :func:`expected_calibration_error`: ECE over equal-width bins of the top probability.
- :func:`choose_policy`: the selective-verdict thresholds for a target false-alarm rate,
  with a binomial confidence bound so that a small validation split cannot promise too much.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from core.model.card import Calibration, DecisionPolicy
from core.scoring import decode_counts

ECE_BINS = 15
DEFAULT_TARGET_FALSE_ALARM_RATE = 0.05
# Thresholds promise their rates with this confidence (a small validation split cannot).
CONFIDENCE = 0.95
# Search range of 1/T: temperatures from 0.02 (sharpen 50x) to 100 (flatten 100x).
_INV_T_RANGE = (0.01, 50.0)
_GOLDEN = (math.sqrt(5) - 1) / 2


def calibrated_probabilities(logits: ArrayLike, temperature: float = 1.0) -> NDArray[np.float64]:
    """softmax(logits / temperature) along the last axis, in float64 (numerically stable)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=-1, keepdims=True), dtype=np.float64)


def negative_log_likelihood(logits: ArrayLike, labels: ArrayLike, temperature: float) -> float:
    """Mean NLL of the true class indices under softmax(logits / temperature)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    y = np.asarray(labels, dtype=np.int64)
    m = z.max(axis=1, keepdims=True)
    log_norm = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    return float(np.mean(log_norm - z[np.arange(len(y)), y]))


def fit_temperature(logits: ArrayLike, labels: ArrayLike, *, iterations: int = 80) -> float:
    """The temperature minimising validation NLL; 1.0 for an empty split."""
    z = np.asarray(logits, dtype=np.float64)
    if z.size == 0:
        return 1.0
    lo, hi = _INV_T_RANGE

    def nll(inv_t: float) -> float:
        return negative_log_likelihood(z, labels, 1.0 / inv_t)

    a, b = lo + (1 - _GOLDEN) * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(iterations):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - _GOLDEN) * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = nll(b)
    return 1.0 / ((lo + hi) / 2)


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike,
                               bins: int = ECE_BINS) -> float:
    """Sum over equal-width bins of the top probability of |accuracy - confidence| x share.

    NaN for an empty split.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if p.size == 0:
        return math.nan
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    # Bin i holds (i/bins, (i+1)/bins]; a confidence of exactly 0 cannot happen (max >= 1/K).
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        inside = index == b
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def reaches(values: ArrayLike, threshold: float) -> NDArray[np.bool_]:
    """``values >= threshold``, except that a threshold of 1 is never reached (it is how a
    policy says "decide nothing")."""
    return np.asarray((np.asarray(values) >= threshold) & (threshold < 1.0), dtype=bool)


def max_flags(n: int, target: float, confidence: float = CONFIDENCE) -> int:
    """The most flags out of ``n`` that still show, with ``confidence``, a rate of at most
    ``target`` (one-sided Clopper-Pearson: P(Binomial(n, target) <= k) <= 1 - confidence);
    -1 when even zero flags are not enough evidence (n too small)."""
    if n <= 0:
        return -1
    alpha = 1.0 - confidence
    log_pmf = n * math.log1p(-target)  # P(X = 0)
    cdf, k = math.exp(log_pmf), 0
    if cdf > alpha:
        return -1
    while k < n:
        log_pmf += math.log((n - k) / (k + 1)) + math.log(target) - math.log1p(-target)
        if cdf + math.exp(log_pmf) > alpha:
            return k
        cdf += math.exp(log_pmf)
        k += 1
    return n


def rate_threshold(scores: ArrayLike, target: float, confidence: float = CONFIDENCE) -> float:
    """The smallest threshold t such that ``score >= t`` flags at most :func:`max_flags` of
    these scores: on fresh data like them the flagged share is at most ``target`` with
    ``confidence``. 1.0 (which flags nothing) when the split is too small for that promise;
    -inf scores stand for rows that can never be flagged."""
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    k = max_flags(len(s), target, confidence)
    if k < 0:
        return 1.0
    if k >= len(s) or not math.isfinite(float(s[k])):
        return 0.0
    return min(1.0, float(np.nextafter(s[k], np.inf)))


def _neighbour_manifests(labels: NDArray[np.int64], k: int) -> tuple[NDArray[np.int64],
                                                                     NDArray[np.int64]]:
    """(row, manifest class) pairs for manifests one class off the truth (both sides)."""
    rows, wrong = [], []
    for step in (-1, 1):
        manifest = labels + step
        ok = (manifest >= 0) & (manifest < k)
        rows.append(np.nonzero(ok)[0])
        wrong.append(manifest[ok])
    return np.concatenate(rows), np.concatenate(wrong)


def _flag_scores(probs: NDArray[np.float64], rows: NDArray[np.int64],
                 manifest: NDArray[np.int64], decoding: str = "argmax") -> NDArray[np.float64]:
    """1 - P(manifest) where the model's count (card's ``count_decoding``) differs from the
    manifest, else -inf (a mismatch also needs the model to prefer another count)."""
    p = probs[rows, manifest]
    other = decode_counts(probs[rows], decoding) != manifest
    return np.where(other, 1.0 - p, -np.inf)


def choose_policy(probs: ArrayLike, labels: ArrayLike, *, class_counts: Sequence[int],
                  target: float = DEFAULT_TARGET_FALSE_ALARM_RATE,
                  split: str = "validation", decoding: str = "argmax") -> DecisionPolicy:
    """Thresholds for the selective verdict, from calibrated validation probabilities.

    The validation images stand for correct manifests (manifest = true count) and, one class
    either side, for off-by-one wrong ones. ``mismatch_min_score`` is the smallest threshold
    that keeps the false-alarm rate on correct manifests within ``target`` with 95 %
    confidence (:func:`rate_threshold`); ``match_min_p`` likewise lets at most ``target`` of
    the off-by-one wrong manifests through as ``match`` (and is never below 0.5: a match means
    the manifest's count is more likely than all others together). A validation split too small
    for that promise gives 1.0, which decides nothing: the model then says ``uncertain``.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    k = len(class_counts)
    rows = np.arange(len(y))
    correct_scores = _flag_scores(p, rows, y, decoding)
    mismatch_min_score = rate_threshold(correct_scores, target)
    wrong_rows, wrong_manifest = _neighbour_manifests(y, k)
    wrong_p = p[wrong_rows, wrong_manifest]
    match_min_p = max(0.5, rate_threshold(wrong_p, target))
    measured = policy_rates(p, y, class_counts=class_counts, match_min_p=match_min_p,
                            mismatch_min_score=mismatch_min_score, decoding=decoding)
    return DecisionPolicy(match_min_p=match_min_p, mismatch_min_score=mismatch_min_score,
                          target_false_alarm_rate=target, measured=measured, chosen_on=split)


def policy_rates(probs: NDArray[np.float64], labels: NDArray[np.int64], *,
                 class_counts: Sequence[int], match_min_p: float,
                 mismatch_min_score: float, decoding: str = "argmax") -> dict[str, float]:
    """False-alarm rate and coverage on correct manifests, off-by-one recall and false-match
    rate, for the given thresholds (what a card's ``decision.measured`` records)."""
    rows = np.arange(len(labels))
    flagged_correct = reaches(_flag_scores(probs, rows, labels, decoding), mismatch_min_score)
    matched_correct = reaches(probs[rows, labels], match_min_p) & ~flagged_correct
    wrong_rows, wrong_manifest = _neighbour_manifests(labels, len(class_counts))
    flagged_wrong = reaches(_flag_scores(probs, wrong_rows, wrong_manifest, decoding),
                            mismatch_min_score)
    matched_wrong = reaches(probs[wrong_rows, wrong_manifest], match_min_p) & ~flagged_wrong

    rates = {
        "n_correct": float(len(labels)),
        "n_off_by_one": float(len(wrong_rows)),
        "false_alarm_rate": _share(flagged_correct),
        "off_by_one_recall": _share(flagged_wrong),
        "false_match_rate": _share(matched_wrong),
        "coverage_correct": _share(flagged_correct | matched_correct),
        "coverage_off_by_one": _share(flagged_wrong | matched_wrong),
    }
    # JSON has no NaN: an empty split simply has no rate.
    return {k: v for k, v in rates.items() if math.isfinite(v)}


def _share(mask: NDArray[np.bool_]) -> float:
    return float(mask.mean()) if mask.size else math.nan


def calibrate(logits: ArrayLike, labels: ArrayLike, *, class_counts: Sequence[int],
              target: float = DEFAULT_TARGET_FALSE_ALARM_RATE, split: str = "validation",
              decoding: str = "argmax") -> tuple[Calibration, DecisionPolicy]:
    """Fit the temperature, measure ECE before/after, choose the thresholds (the trainer's
    one call after fitting)."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    temperature = fit_temperature(z, y)
    before = expected_calibration_error(calibrated_probabilities(z, 1.0), y)
    probs = calibrated_probabilities(z, temperature)
    after = expected_calibration_error(probs, y)
    calibration = Calibration(temperature=temperature, ece_before=_finite(before),
                              ece_after=_finite(after), fitted_on=split)
    return calibration, choose_policy(probs, y, class_counts=class_counts, target=target,
                                      split=split, decoding=decoding)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
