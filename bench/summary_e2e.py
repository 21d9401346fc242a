"""The end-to-end section's summary (issue 18): worker vs best model alone per backend ×
batch, vs the old default (eager, batch 16), vs the per-event pattern; start-up timings."""

from __future__ import annotations

from typing import Any

from bench.summary_util import _median, _pct, _target, contention

SPEEDUP_TARGET_CPU = 1.5
# Targets from issue 18 (inference at the hardware's best).
E2E_VS_BEST_TARGET = 0.85
BEST_VS_OLD_DEFAULT_TARGET = 2.0
STARTUP_WARM_TARGET_S = 60.0


def _e2e_rows(sec: dict[str, Any]) -> list[list[Any]]:
    w, b, m = sec["worker"], sec["per_event"], sec["model_alone"]
    best, old = sec.get("best"), sec.get("old_default")

    def alone(name: str, d: dict[str, Any]) -> list[Any]:
        return [name, d["median"], f"before {d['before']['median']}, after "
                                   f"{d['after']['median']}"]

    rows = []
    if best:
        rows.append(alone(f"best model alone: {best['backend']}, batch {best['batch_size']}",
                          best))
    rows.append(alone(f"model alone at the worker's config: {sec.get('backend', 'eager')}, "
                      f"batch {sec['batch_size']}", m))
    if old:
        rows.append(alone("model alone at the old default: eager channels_last, batch 16", old))
    rows += [[f"worker end to end: {sec.get('backend', 'eager')}, max_batch_size "
              f"{sec['batch_size']}, max_wait_ms {sec.get('max_wait_ms', '–')}",
              w["events_per_s"], f"{w['rows_written']} events in {w['window_s']} s, mean batch "
                                 f"{w['mean_batch_size']}"],
             ["per-event baseline (eager, batch 1, insert + commit per event)",
              b["events_per_s"], f"{b['events']} events in {b['window_s']} s; mean ms "
                                 f"{b['mean_ms']}"],
             ["model alone, eager batch 1", _median(m.get("batch_1")), ""]]
    return rows


def summarize_backends(sec: dict[str, Any] | None) -> dict[str, Any] | None:
    """The standalone backend sweep (bench/gpu.sh): table and best model alone."""
    if not sec or "error" in sec or not sec.get("backends"):
        return None
    sizes, table = _e2e_backend_table(sec)
    best = sec.get("best") or {}
    notes = [f"best model alone: {best.get('backend')} at batch {best.get('batch_size')}, "
             f"{best.get('images_per_s', {}).get('median')} images/s"] if best else []
    return {"backend_sizes": sizes, "backend_table": table, "notes": notes}


def _e2e_backend_table(sec: dict[str, Any]) -> tuple[list[int], dict[str, dict[str, Any]]]:
    """backend -> {batch size -> images/s} from the interleaved sweep (errors as text)."""
    sizes = sorted({r["batch_size"] for r in sec.get("backends", []) if r.get("batch_size")})
    table: dict[str, dict[str, Any]] = {}
    for r in sec.get("backends", []):
        row = table.setdefault(r["backend"], {})
        if "error" in r:
            row["error"] = r["error"]
        else:
            row[str(r["batch_size"])] = r["images_per_s"]["median"]
    return sizes, table


def summarize_e2e(sec: dict[str, Any] | None, cores: int = 0,
                  model_at_batch: float | None = None) -> dict[str, Any] | None:
    if not sec or "error" in sec:
        return None
    w, m = sec["worker"], sec["model_alone"]
    spread = max(sec.get(k, {}).get("before_after_spread", 0.0)
                 for k in ("model_alone", "best", "old_default"))
    busy = contention(sec, cores)
    reasons = [busy] if busy else []
    if spread > 0.25:
        reasons.append(f"the model alone moved {spread:.0%} between before and after")
    notes = [f"**UNRELIABLE**: {'; '.join(reasons)}"] if reasons else []
    notes += [f"worker end to end / best model alone: {sec['efficiency']:.2f}; / model "
              f"alone at the worker's own config: {sec.get('efficiency_vs_own_config', '–')}",
              f"best model alone / eager at the old default (channels_last, batch 16): "
              f"{sec.get('best_vs_old_default', '–')}×; worker end to end / that: "
              f"{sec.get('worker_vs_old_default', '–')}×",
              f"worker / per-event baseline: {sec['speedup_vs_per_event']:.2f}×",
              f"worker's busiest stage: {w['bottleneck']}; busy shares {w['busy']}",
              "stage means (ms): " + ", ".join(f"{k} {v['mean_ms']}" for k, v in
                                                w["stages"].items())
              + " (fetch includes waiting for a free S3 slot)",
              f"CPU over the steady window: machine {_pct(w.get('window_machine_cpu_busy'))} "
              f"busy, worker process {w.get('window_process_cpu_cores')} cores"]
    startup = sec.get("startup") or {}
    if startup:
        tuning = startup.get("tuning", {})
        notes.append(f"start-up (open_counter + warm-up, in process): cold cache "
                     f"{startup['cold_s']} s (export + tuning), warm cache {startup['warm_s']} s;"
                     f" autotune chose {tuning.get('backend')} at batch "
                     f"{tuning.get('batch_size')} ({tuning.get('images_per_s', 0):.1f} img/s "
                     f"in its short warm-up); skipped: {tuning.get('skipped') or 'none'}")
    infer = w["stages"]["infer"]
    if infer["count"] and infer["sum_s"]:
        inside = w["mean_batch_size"] * infer["count"] / infer["sum_s"]
        notes.append(f"the model inside the worker ran at {inside:.2f} img/s "
                     f"({inside / m['median']:.0%} of its speed alone): the remaining stages "
                     f"(decode, S3 client and server, Kafka, Postgres) share its CPU cores")
    sizes, table = _e2e_backend_table(sec)
    return {"rows": _e2e_rows(sec), "notes": notes, "efficiency": sec["efficiency"],
            "speedup": sec["speedup_vs_per_event"], "bottleneck": w["bottleneck"],
            "best_vs_old": sec.get("best_vs_old_default"),
            "startup_warm_s": startup.get("warm_s"), "best": sec.get("best"),
            "backend_sizes": sizes, "backend_table": table,
            "unreliable": "; ".join(reasons)}


def _startup_target(seconds: float, note: str, where: str = "in process") -> dict[str, Any]:
    return {"name": f"start-up with autotuning, warm cache ({where})", "value": seconds,
            "value_text": f"{seconds:.1f} s", "target": STARTUP_WARM_TARGET_S,
            "target_text": f"≤ {STARTUP_WARM_TARGET_S:.0f} s",
            "met": seconds <= STARTUP_WARM_TARGET_S, "note": note}


def _e2e_targets(e: dict[str, Any]) -> list[dict[str, Any]]:
    best = e.get("best") or {}
    where = f"best: {best.get('backend')} at batch {best.get('batch_size')}; " if best else ""
    note = where + ("" if e["efficiency"] >= E2E_VS_BEST_TARGET
                    else f"bottleneck: {e['bottleneck']}")
    targets = [_target("worker e2e / best model alone (same run)", e["efficiency"],
                       E2E_VS_BEST_TARGET, note=note)]
    if e.get("best_vs_old") is not None:
        targets.append(_target("best model alone / eager channels_last batch 16",
                               e["best_vs_old"], BEST_VS_OLD_DEFAULT_TARGET, unit="×"))
    targets.append(_target("worker / per-event baseline", e["speedup"], SPEEDUP_TARGET_CPU,
                           unit="×"))
    if e.get("startup_warm_s") is not None:
        targets.append(_startup_target(float(e["startup_warm_s"]), "in process: "
                                       "open_counter + warm-up"))
    if e["unreliable"]:
        for t in targets:
            t["note"] = ("UNRELIABLE (machine contended, see e2e notes); "
                         + t["note"]).rstrip("; ")
    return targets
