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


# The quiet rule (issue 24): a section is contended, and refuses its headline, when the
# 1-minute load at its start or after it settled exceeds this share of the cores, or when
# foreign processes took more than this many cores (median over its measured windows).
BUSY_LOAD_PER_CORE = 0.75
BUSY_FOREIGN_CORES = 0.15


def contention(sec: dict[str, Any], cores: int) -> str | None:
    """Why a section's numbers cannot be trusted (the machine was busy), or None.

    Reads the 1-minute load before the section started (``load_average_before``, recorded by
    the orchestrator, else the section's own ``load_at_start``), the load once the section
    had ended and then waited with nothing running (``load_settled``: the 1-minute average
    decays with a 60 s time constant, so what stays there was someone else's), and the
    median foreign CPU over its windows (``foreign_cores.median``, ``bench.cpusplit``).
    A section that recorded only its start load is judged on that alone."""
    reasons = []
    limit = BUSY_LOAD_PER_CORE * cores
    start = (sec.get("load_average_before") or sec.get("load_at_start") or [0.0])[0]
    if cores and start > limit:
        reasons.append(f"load {start} at start > {limit:.2f} (0.75 × {cores} cores)")
    settled = (sec.get("load_settled") or [0.0])[0]
    if cores and settled > limit:
        reasons.append(f"load {settled} after settling {sec.get('settle_s', '?')} s at the "
                       f"end > {limit:.2f}")
    foreign = (sec.get("foreign_cores") or {}).get("median")
    if foreign is not None and foreign > BUSY_FOREIGN_CORES:
        reasons.append(f"other processes took {foreign:.2f} cores (median over the windows) "
                       f"> {BUSY_FOREIGN_CORES}")
    return "; ".join(reasons) or None
