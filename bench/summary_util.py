"""Helpers shared by the summaries (bench/summary.py, bench/summary_e2e.py)."""

from __future__ import annotations

from typing import Any


def _median(d: dict[str, Any] | None) -> float | None:
    if not d or "median" not in d:
        return None
    return float(d["median"])


def _target(name: str, value: float | None, target: float, *, unit: str = "",
            fmt: str = "{:.2f}", note: str = "") -> dict[str, Any]:
    met = None if value is None else value >= target
    return {"name": name, "value": value, "target": target, "met": met, "note": note,
            "value_text": "–" if value is None else fmt.format(value) + unit,
            "target_text": "≥ " + fmt.format(target) + unit}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.0%}"


def contention(sec: dict[str, Any], cores: int) -> str | None:
    """Why a section's numbers cannot be trusted, if the machine was busy when it started."""
    load = (sec.get("load_average_before") or [0.0])[0]
    if cores and load / cores > 1.0:
        return (f"started at load {load} on {cores} cores (other jobs running): torch's "
                f"{cores} threads then lose whole time slices, so the rates in it are not "
                f"comparable with quiet sections; re-run it with `bench/run.sh --sections "
                f"<name> --merge` on a quiet machine")
    return None
