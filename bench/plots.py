"""One PNG, four panels: model vs batch size, preprocessing, end-to-end rates, memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen


def _model_panel(ax: Any, model: dict[str, Any] | None) -> None:
    ax.set_title("model alone: images/s vs batch size")
    if not model:
        ax.text(0.5, 0.5, "not run", ha="center")
        return
    for name, row in model["table"].items():
        pts = sorted((int(b), v) for b, v in row.items() if isinstance(v, float | int))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("images/s")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def _decode_panel(ax: Any, decode: dict[str, Any] | None) -> None:
    ax.set_title("preprocessing: images/s per core")
    if not decode:
        ax.text(0.5, 0.5, "not run", ha="center")
        return
    rows = decode["rows"]
    names = [r["method"] for r in rows]
    y = range(len(rows))
    ax.barh([i + 0.2 for i in y], [r["decode_only"] or 0 for r in rows], 0.4,
            label="decode only")
    ax.barh([i - 0.2 for i in y], [r["full"] or 0 for r in rows], 0.4,
            label="decode + resize + normalise")
    ax.set_yticks(list(y), names, fontsize=7)
    ax.set_xlabel("images/s")
    ax.legend(fontsize=7)


def _rates_panel(ax: Any, summary: dict[str, Any]) -> None:
    ax.set_title("events/s: components, ceiling, end to end")
    bars: list[tuple[str, float]] = []
    if summary.get("ceiling"):
        bars += [(k, v) for k, v in summary["ceiling"]["components"].items() if v]
    for key in ("e2e", "local"):
        if summary.get(key):
            bars += [(str(r[0]), float(r[1])) for r in summary[key]["rows"] if r[1]]
    if not bars:
        ax.text(0.5, 0.5, "not run", ha="center")
        return
    ax.barh(range(len(bars)), [b[1] for b in bars])
    ax.set_yticks(range(len(bars)), [b[0][:40] for b in bars], fontsize=6)
    ax.set_xscale("log")
    ax.set_xlabel("per second (log)")
    for i, (_, v) in enumerate(bars):
        ax.text(v, i, f" {v:,.1f}", va="center", fontsize=6)


def _memory_panel(ax: Any, memory: dict[str, Any]) -> None:
    ax.set_title("memory: peak (MiB)")
    rows = [r for r in memory["rows"] if isinstance(r[4], float | int)]
    if not rows:
        ax.text(0.5, 0.5, "not run", ha="center")
        return
    ax.barh(range(len(rows)), [r[4] for r in rows])
    labels = [f"{r[0]} ({r[1]} ev)" if r[1] != "–" else str(r[0]) for r in rows]
    ax.set_yticks(range(len(rows)), labels, fontsize=6)
    ax.set_xlabel("MiB")


def plot(results: dict[str, Any], summary: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(16, 10))
    _model_panel(axes[0][0], summary.get("model"))
    _decode_panel(axes[0][1], summary.get("decode"))
    _rates_panel(axes[1][0], summary)
    _memory_panel(axes[1][1], summary["memory"])
    m = results["machine"]
    fig.suptitle(f"binaudit bench: {m['host']} {m['device']}, {m['cpu_model']} × {m['cores']}"
                 f"{', ' + m['gpus'][0] if m['gpus'] else ''}; {m['date_utc']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
