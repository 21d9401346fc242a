"""Matplotlib figures written by training, evaluation, tuning and profiling (Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def training_curves(history: Sequence[dict[str, Any]], path: Path) -> Path:
    """Loss and accuracy per epoch, train vs validation."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [h["val_accuracy"] for h in history], "o-", label="validation")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def confusion(matrix: Sequence[Sequence[int]], classes: Sequence[int], path: Path,
              title: str = "confusion matrix") -> Path:
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(matrix, cmap="Blues")
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center")
    ax.set_xticks(range(len(classes)), [str(c) for c in classes])
    ax.set_yticks(range(len(classes)), [str(c) for c in classes])
    ax.set(xlabel="predicted count", ylabel="expected count", title=title)
    return _save(fig, path)


def optimisation_history(values: Sequence[float | None], path: Path) -> Path:
    """Objective per trial (pruned/failed trials as gaps) and the running best."""
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [i for i, v in enumerate(values) if v is not None]
    ys = [v for v in values if v is not None]
    ax.plot(xs, ys, "o", label="trial validation loss")
    best: list[float] = []
    for y in ys:
        best.append(min(y, best[-1]) if best else y)
    ax.step(xs, best, where="post", label="best so far")
    ax.set(xlabel="trial", ylabel="validation loss", title="optimisation history")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def step_phases(steps: Sequence[dict[str, float]], path: Path) -> Path:
    """Stacked bar per profiled step: data / forward / backward / optimizer seconds."""
    fig, ax = plt.subplots(figsize=(8, 4))
    bottom = [0.0] * len(steps)
    for phase in ("data", "forward", "backward", "optimizer"):
        values = [s.get(phase, 0.0) * 1000 for s in steps]
        ax.bar(range(len(steps)), values, bottom=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set(xlabel="step", ylabel="ms", title="step time by phase")
    ax.legend()
    return _save(fig, path)


def histogram(values: Sequence[float], path: Path, *, xlabel: str, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(values, bins=min(30, max(5, len(values))))
    ax.set(xlabel=xlabel, ylabel="steps", title=title)
    return _save(fig, path)


def precision_recall(curve: dict[str, Sequence[float]], path: Path, *, base_rate: float | None,
                     operating_point: tuple[float, float] | None = None,
                     title: str = "discrepancy score: precision-recall") -> Path:
    """The score's precision-recall curve over judged bins (wrong manifest = positive), the
    base rate (a random ranking) and the ``mismatch`` verdicts' (recall, precision)."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if curve["recall"]:
        ax.step([0.0, *curve["recall"]], [curve["precision"][0], *curve["precision"]],
                where="post", label="ranking by discrepancy score")
    if base_rate is not None and _defined(base_rate):
        ax.axhline(base_rate, color="grey", ls="--", label=f"random ({base_rate:.2f})")
    # No mismatch verdict at all (precision undefined): no operating point to mark.
    if operating_point is not None and all(_defined(v) for v in operating_point):
        ax.plot(*operating_point, "ro", label="mismatch verdicts")
    ax.set(xlabel="recall of wrong manifests", ylabel="precision", xlim=(0, 1.02),
           ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    return _save(fig, path)


def _defined(value: float | None) -> bool:
    return value is not None and value == value  # None and NaN are undefined


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
