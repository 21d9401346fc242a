"""The end-to-end section's summary (issues 18, 24): the worker against the best model alone
in alternating rounds, each ratio with its spread, the quiet rule, and where the CPU went.

Pure: ``analyse`` derives the per-round ratios from the raw windows and runs (the scenario
stores its result in the section too), ``summarize_e2e`` the rows, notes and tables, and
``_e2e_targets`` the headline rows, which a contended section refuses.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench.summary_util import _median, _pct, _target, contention

SPEEDUP_TARGET_CPU = 1.5
# Targets from issue 18 (inference at the hardware's best).
E2E_VS_BEST_TARGET = 0.85
BEST_VS_OLD_DEFAULT_TARGET = 2.0
STARTUP_WARM_TARGET_S = 60.0
# The worker runs the model plus its own stages: it cannot beat the model alone, so a ratio
# above this is a measurement error (the two ran under different conditions).
RATIO_CEILING = 1.0
MODEL_GROUPS = ("own: infer", "own: model threads (native pools)")
HEADLINE = "worker e2e / best model alone (median of rounds)"


# ---- per-round ratios (pure) -----------------------------------------------------------------

def spread(values: list[float], digits: int = 3) -> dict[str, Any]:
    """Median, min and max of ``values`` ({} when there are none)."""
    if not values:
        return {}
    return {"median": round(statistics.median(values), digits),
            "min": round(min(values), digits), "max": round(max(values), digits),
            "n": len(values)}


def round_ratios(windows: list[dict[str, Any]], rounds: list[dict[str, Any]]
                 ) -> list[dict[str, Any]]:
    """Round i: the worker's events/s over the mean of model alone in window i (just before)
    and window i + 1 (just after), for each configuration measured in both; a ratio above
    1.0 is flagged (``above_one``) and kept."""
    out = []
    for i, run in enumerate(rounds):
        rate = float(run["worker"]["events_per_s"])
        ratios, alone = {}, {}
        for label in ("best", "worker"):
            before, after = windows[i].get(label), windows[i + 1].get(label)
            if before and after:
                alone[label] = (before["images_per_s"] + after["images_per_s"]) / 2
                ratios[label] = round(rate / alone[label], 3)
        out.append({"round": i + 1, "events_per_s": rate,
                    "alone": {k: round(v, 2) for k, v in alone.items()}, "ratio": ratios,
                    "above_one": sorted(k for k, v in ratios.items() if v > RATIO_CEILING)})
    return out


def ratio_summary(values: list[float]) -> dict[str, Any]:
    """A ratio's spread, and whether it is a measurement error: its median above 1.0, or
    more than one round above it (one round may be a fluke of its windows; two are not)."""
    above = sum(v > RATIO_CEILING for v in values)
    s = spread(values)
    return {**s, "rounds_above_one": above,
            "measurement_error": bool(s) and (s["median"] > RATIO_CEILING or above > 1)}


def foreign_cores(sec: dict[str, Any]) -> dict[str, Any]:
    """Foreign CPU (cores) over every measured window: model alone and worker runs."""
    values = [w["cpu"]["foreign_cores"] for window in sec.get("windows", [])
              for w in window.values() if "cpu" in w]
    values += [r["worker"]["cpu"]["foreign_cores"] for r in sec.get("rounds", [])
               if "cpu" in r["worker"]]
    return spread(values)


def analyse(sec: dict[str, Any]) -> dict[str, Any]:
    """Every ratio of a rounds section with its spread over the rounds (or windows)."""
    windows, rounds = sec["windows"], sec["rounds"]
    per_round = round_ratios(windows, rounds)
    out: dict[str, Any] = {"per_round": per_round}
    for label in ("best", "worker"):
        out[label] = ratio_summary([r["ratio"][label] for r in per_round
                                    if label in r["ratio"]])
    out["best_vs_old_default"] = spread([
        w["best"]["images_per_s"] / w["old_default"]["images_per_s"] for w in windows
        if "best" in w and "old_default" in w and w["old_default"]["images_per_s"]])
    out["worker_events_per_s"] = spread([r["events_per_s"] for r in per_round], 2)
    out["alone"] = {label: spread([w[label]["images_per_s"] for w in windows if label in w], 2)
                    for label in ("best", "worker", "old_default")}
    return out


# ---- where the CPU went ----------------------------------------------------------------------

def _model_ms(per_item: dict[str, float]) -> float:
    return sum(v for k, v in per_item.items() if k.startswith(MODEL_GROUPS))


def cpu_table(sec: dict[str, Any]) -> tuple[list[list[Any]], dict[str, Any]]:
    """Per CPU group: ms per event in the worker (median over rounds) and ms per image in
    the worker configuration's model-alone windows (median); then the model's ms alone vs in
    the worker and the rest. (rows, the model/non-model figures for the notes)."""
    runs = [r["worker"]["cpu"]["cpu_ms_per_item"] for r in sec["rounds"] if "cpu" in r["worker"]]
    alone = [w["worker"]["cpu"]["cpu_ms_per_item"] for w in sec["windows"]
             if "cpu" in w.get("worker", {})]
    groups = sorted({g for d in runs + alone for g in d},
                    key=lambda g: (not g.startswith("own:"), g == "other", g))

    def med(items: list[dict[str, float]], key: str) -> float | None:
        return round(statistics.median(d.get(key, 0.0) for d in items), 2) if items else None

    rows: list[list[Any]] = [[g, med(runs, g), med(alone, g)] for g in groups]
    model_w = round(statistics.median(map(_model_ms, runs)), 2) if runs else None
    model_a = round(statistics.median(map(_model_ms, alone)), 2) if alone else None
    total_w = round(statistics.median(sum(d.values()) for d in runs), 2) if runs else None
    rest = None if model_w is None or total_w is None else round(total_w - model_w, 2)
    rows += [["model (own: infer* + model threads)", model_w, model_a],
             ["everything but the model", rest, None], ["total", total_w, None]]
    inflation = round(model_w / model_a, 2) if model_w and model_a else None
    return rows, {"model_worker_ms": model_w, "model_alone_ms": model_a,
                  "non_model_ms": rest, "model_inflation": inflation}


# ---- the summary -----------------------------------------------------------------------------

def _text(s: dict[str, Any], unit: str = "") -> str:
    return "–" if not s else f"{s['median']:.2f}{unit} ({s['min']:.2f}–{s['max']:.2f}{unit})"


def _label(c: dict[str, Any]) -> str:
    return f"{c['backend']}, batch {c['batch_size']} x{c.get('streams', 1)}"


def _rows(sec: dict[str, Any], a: dict[str, Any]) -> list[list[Any]]:
    c, per_event = sec["configs"], sec["per_event"]
    rows = [[f"best model alone: {_label(c['best'])}", a["alone"]["best"].get("median"),
             f"{_text(a['alone']['best'])} over {a['alone']['best'].get('n')} windows"],
            [f"model alone at the worker's config: {_label(c['worker'])}",
             a["alone"]["worker"].get("median"), _text(a["alone"]["worker"])],
            ["model alone at the old default: eager channels_last, batch 16",
             a["alone"]["old_default"].get("median"), _text(a["alone"]["old_default"])],
            [f"worker end to end: {_label(c['worker'])}, max_wait_ms "
             f"{sec.get('max_wait_ms', '–')}", a["worker_events_per_s"].get("median"),
             f"{_text(a['worker_events_per_s'])} over {len(sec['rounds'])} rounds"],
            ["per-event baseline (eager, batch 1, insert + commit per event)",
             per_event["events_per_s"], f"{per_event['events']} events in "
                                        f"{per_event['window_s']} s"]]
    batch1 = next((r["images_per_s"]["median"] for r in sec.get("backends", [])
                   if r.get("backend") == "eager" and r.get("batch_size") == 1), None)
    return rows + [["model alone, eager batch 1", batch1, "from the sweep"]]


def _rounds_table(sec: dict[str, Any], a: dict[str, Any]) -> list[list[Any]]:
    def fixed(x: float | None, digits: int = 3) -> str:  # the report rounds floats to 0.1
        return "–" if x is None else f"{x:.{digits}f}"

    rows = []
    for r, run in zip(a["per_round"], sec["rounds"], strict=True):
        w = run["worker"]
        rows.append([r["round"], w["rows_written"], r["events_per_s"],
                     r["alone"].get("best"), fixed(r["ratio"].get("best")),
                     r["alone"].get("worker"), fixed(r["ratio"].get("worker")),
                     fixed(w.get("cpu", {}).get("foreign_cores"), 2),
                     ", ".join(f"{k} > 1.0: measurement error" for k in r["above_one"])])
    return rows


def _median_run(sec: dict[str, Any]) -> dict[str, Any]:
    """The worker run with the median rate (its stages and busy shares are the notes')."""
    runs = sorted((r["worker"] for r in sec["rounds"]), key=lambda w: w["events_per_s"])
    return dict(runs[(len(runs) - 1) // 2])


def _notes(sec: dict[str, Any], a: dict[str, Any], cpu: dict[str, Any],
           busy: str | None) -> list[str]:
    w = _median_run(sec)
    notes = [f"**BUSY, headline refused**: {busy}; re-run `bench/run.sh --sections e2e` on a "
             f"quiet machine"] if busy else []
    for label, what in (("best", "best model alone"), ("worker", "model alone at its config")):
        if a[label].get("measurement_error"):
            notes.append(f"**measurement error**: worker / {what} is above 1.0 "
                         f"({_text(a[label])}, {a[label]['rounds_above_one']} rounds above)")
    notes += [f"worker end to end / best model alone: {_text(a['best'])}; / model alone at the "
              f"worker's own config: {_text(a['worker'])} (median (min–max) over "
              f"{len(sec['rounds'])} rounds, each against the windows just before and after)",
              f"best model alone / eager at the old default (channels_last, batch 16): "
              f"{_text(a['best_vs_old_default'], '×')} (first and last windows)",
              f"load (1 min) at start {sec.get('load_average_before') or sec['load_at_start']},"
              f" at the end {sec['load_at_end']} (the run's own threads), after "
              f"{sec['settle_s']} s idle {sec['load_settled']}; other processes "
              f"{_text(sec['foreign_cores'])} cores over the windows",
              f"median round: busiest stage {w['bottleneck']}; busy shares {w['busy']}",
              "stage means (ms): " + ", ".join(f"{k} {v['mean_ms']}" for k, v in
                                                w["stages"].items())
              + " (fetch includes waiting for a free S3 slot)",
              f"CPU over the steady window: machine {_pct(w.get('window_machine_cpu_busy'))} "
              f"busy, worker process {w.get('window_process_cpu_cores')} cores"]
    if cpu["model_inflation"]:
        notes.append(f"the model took {cpu['model_worker_ms']} CPU ms an event in the worker vs "
                     f"{cpu['model_alone_ms']} ms an image alone ({cpu['model_inflation']}×), "
                     f"and the worker's other stages and services {cpu['non_model_ms']} ms an "
                     f"event: together they are the e2e gap on a machine whose cores are full")
    startup = sec.get("startup") or {}
    if startup:
        tuning = startup.get("tuning", {})
        notes.append(f"start-up (open_counter + warm-up, in process): cold cache "
                     f"{startup['cold_s']} s (export + tuning), warm cache {startup['warm_s']} s;"
                     f" autotune chose {tuning.get('backend')} at batch "
                     f"{tuning.get('batch_size')} x{tuning.get('streams', 1)} "
                     f"({tuning.get('images_per_s', 0):.1f} img/s in its short windows); "
                     f"skipped: {tuning.get('skipped') or 'none'}")
    return notes


def summarize_e2e(sec: dict[str, Any] | None, cores: int = 0,
                  model_at_batch: float | None = None) -> dict[str, Any] | None:
    if not sec or "error" in sec:
        return None
    if "rounds" not in sec:
        return _legacy(sec)
    a = analyse(sec)
    busy = contention(sec, cores)
    cpu_rows, cpu = cpu_table(sec)
    mark = f" — BUSY ({busy})" if busy else ""
    sizes, table = _e2e_backend_table(sec)
    per_event = sec["per_event"]["events_per_s"]
    worker = a["worker_events_per_s"].get("median")
    return {
        "format": "rounds", "rows": _rows(sec, a), "notes": _notes(sec, a, cpu, busy),
        "ratios": a, "cpu": cpu, "refused": busy or "", "unreliable": busy or "",
        "efficiency": a["best"].get("median"), "best_vs_old": a["best_vs_old_default"],
        "speedup": round(worker / per_event, 2) if worker and per_event else None,
        "bottleneck": _median_run(sec)["bottleneck"], "best": sec.get("best"),
        "startup_warm_s": (sec.get("startup") or {}).get("warm_s"),
        "backend_sizes": sizes, "backend_table": table,
        "tables": [
            {"title": f"End to end: alternating rounds{mark}",
             "header": ["round", "events", "worker events/s", "best alone (mean before/after)",
                        "ratio to best", "worker config alone", "ratio to own config",
                        "other processes (cores)", "flag"],
             "rows": _rounds_table(sec, a)},
            {"title": f"End to end: where the CPU went (ms per event / per image){mark}",
             "header": ["group", "worker (ms/event, median of rounds)",
                        "model alone at the worker's config (ms/image)"],
             "rows": cpu_rows}]}


def _legacy(sec: dict[str, Any]) -> dict[str, Any]:
    """A section from before the rounds (one worker run between two model-alone passes):
    its raw numbers, no headline."""
    why = "measured before alternating rounds (one worker run): re-run it"
    return {"format": "legacy", "rows": [
        ["worker end to end", sec["worker"]["events_per_s"], why],
        ["model alone at the worker's config", _median(sec.get("model_alone")), why]],
        "notes": [f"**UNRELIABLE**: {why}"], "unreliable": why, "refused": why,
        "backend_sizes": [], "backend_table": {}, "tables": []}


def summarize_backends(sec: dict[str, Any] | None) -> dict[str, Any] | None:
    """The standalone backend sweep (bench/gpu.sh): table and best model alone."""
    if not sec or "error" in sec or not sec.get("backends"):
        return None
    sizes, table = _e2e_backend_table(sec)
    best = sec.get("best") or {}
    notes = [f"best model alone: {best.get('backend')} at batch {best.get('batch_size')} "
             f"x{best.get('streams', 1)}, {best.get('images_per_s', {}).get('median')} "
             f"images/s"] if best else []
    return {"backend_sizes": sizes, "backend_table": table, "notes": notes}


def _e2e_backend_table(sec: dict[str, Any]) -> tuple[list[int], dict[str, dict[str, Any]]]:
    """"backend xN" -> {batch size -> images/s} from the interleaved sweep (N: streams;
    errors as text)."""
    sizes = sorted({r["batch_size"] for r in sec.get("backends", []) if r.get("batch_size")})
    table: dict[str, dict[str, Any]] = {}
    for r in sec.get("backends", []):
        name = r["backend"] + (f" x{r['streams']}" if "streams" in r else "")
        row = table.setdefault(name, {})
        if "error" in r:
            row["error"] = r["error"]
        else:
            row[str(r["batch_size"])] = r["images_per_s"]["median"]
    return sizes, table


def _startup_target(seconds: float, note: str, where: str = "in process") -> dict[str, Any]:
    return {"name": f"start-up with autotuning, warm cache ({where})", "value": seconds,
            "value_text": f"{seconds:.1f} s", "target": STARTUP_WARM_TARGET_S,
            "target_text": f"≤ {STARTUP_WARM_TARGET_S:.0f} s",
            "met": seconds <= STARTUP_WARM_TARGET_S, "note": note}


def _spread_target(name: str, s: dict[str, Any], target: float, *, unit: str = "",
                   note: str = "") -> dict[str, Any]:
    t = _target(name, s.get("median"), target, unit=unit, note=note)
    if s:
        t["value_text"] = _text(s, unit)
        t["spread"] = s
    if s.get("measurement_error"):
        t["value_text"] += ": measurement error (worker above model alone)"
        t["met"] = False
    return t


def _e2e_targets(e: dict[str, Any]) -> list[dict[str, Any]]:
    if e.get("format") != "rounds":
        return []  # an old section has no headline (see _legacy)
    best = e.get("best") or {}
    a = e["ratios"]
    note = (f"{a['best'].get('n')} rounds; best: {best.get('backend')} at batch "
            f"{best.get('batch_size')} x{best.get('streams', 1)}")
    if (a["best"].get("median") or 0) < E2E_VS_BEST_TARGET:
        note += f"; bottleneck: {e['bottleneck']}"
    targets = [_spread_target(HEADLINE, a["best"], E2E_VS_BEST_TARGET, note=note),
               _spread_target("best model alone / eager channels_last batch 16",
                              a["best_vs_old_default"], BEST_VS_OLD_DEFAULT_TARGET, unit="×"),
               _target("worker / per-event baseline", e["speedup"], SPEEDUP_TARGET_CPU,
                       unit="×", note="median round")]
    if e.get("startup_warm_s") is not None:
        targets.append(_startup_target(float(e["startup_warm_s"]), "in process: "
                                       "open_counter + warm-up"))
    if e["refused"]:
        for t in targets:
            t.update(value_text=f"refused: machine busy ({e['refused']})", met=False,
                     refused=True)
    return targets
