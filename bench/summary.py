"""Raw sections → headline numbers, targets met or missed, and the notes that explain them.

Pure: reads the dict ``bench.run``/``bench.gpu`` assemble, touches nothing else.
"""

from __future__ import annotations

from typing import Any

# Targets from issue 7.
EFFICIENCY_TARGET = 0.90
CEILING_TARGET = 0.80
SPEEDUP_TARGET = {"cpu": 1.5, "cuda": 15.0}
GPU_MODEL_TARGET = 5000.0
GPU_DECODE_TARGET = 5000.0
CHANNELS_LAST_GAIN = 1.05  # change a default only for a clear (>5 %) win
# Targets from issue 18 (inference at the hardware's best).
E2E_VS_BEST_TARGET = 0.85
BEST_VS_OLD_DEFAULT_TARGET = 2.0
STARTUP_WARM_TARGET_S = 60.0


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


def _model_rows(sections: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key, sec in sections.items():
        if (key.startswith("model") or key.startswith("compile")) and isinstance(sec, dict):
            rows += [{**r, "section": key} for r in sec.get("rows", [])]
    return rows


def _rate(row: dict[str, Any]) -> float | None:
    return _median(row.get("images_per_s"))


def summarize_model(sections: dict[str, Any], device: str, batch: int) -> dict[str, Any] | None:
    rows = _model_rows(sections)
    if not rows:
        return None
    sizes = sorted({r["batch_size"] for r in rows})
    table: dict[str, dict[str, Any]] = {}
    for r in rows:
        name = f"{r['variant']} / {r['path']}"
        table.setdefault(name, {})[str(r["batch_size"])] = _rate(r) if _rate(r) is not None \
            else ("timeout" if "timed out" in r.get("error", "") else "error")
    ok = [r for r in rows if _rate(r) is not None]
    notes = []
    best: dict[str, Any] = {}
    for path in sorted({r["path"] for r in ok}):
        top = max((r for r in ok if r["path"] == path), key=lambda r: _rate(r) or 0.0)
        best[path] = top
        notes.append(f"fastest on the `{path}` path: {top['variant']} at batch "
                     f"{top['batch_size']}, {_rate(top):,.1f} images/s")

    def at(variant: str, bs: int, path: str) -> float | None:
        return next((_rate(r) for r in ok if r["variant"] == variant and r["batch_size"] == bs
                     and r["path"] == path), None)

    if device == "cpu":
        plain, cl = at("fp32", batch, "counter"), at("channels_last", batch, "counter")
        if plain and cl:
            ratio = cl / plain
            verdict = ("switch the CPU default to channels_last=True" if ratio >= CHANNELS_LAST_GAIN
                       else "keep the CPU default channels_last=False" if ratio < 1.0
                       else "no clear win either way: keep channels_last=False on CPU")
            notes.append(f"channels_last / fp32 at the worker's batch {batch}: {ratio:.2f}× "
                         f"({cl:.2f} vs {plain:.2f} img/s): {verdict}")
        compiled = [r for r in rows if "compile" in r["variant"]]
        for r in compiled:
            eager = r["variant"].replace("+compile", "")
            same_run = [_rate(e) for e in ok if e["section"] == r["section"]
                        and e["variant"] == eager and e["batch_size"] == r["batch_size"]]
            base = same_run[0] if same_run else at(eager, r["batch_size"], r["path"])
            rate = _rate(r)
            if rate and base:
                notes.append(f"torch.compile ({r['variant']}, inductor) at batch "
                             f"{r['batch_size']}: {rate:.2f} img/s, {rate / base:.2f}× eager "
                             f"{eager} in the same process; compiling took "
                             f"{r.get('compile_s', '?')} s")
            elif "error" in r:
                notes.append(f"torch.compile ({r['variant']}): {r['error']}")
        if not compiled:
            notes.append("torch.compile on CPU not run by default (compiling B4 with inductor "
                         "takes minutes on 2 cores); `--sections ...,compile` tries it")
        notes.append("bf16 on this CPU: not measured (no AVX512-BF16/AMX; autocast would "
                     "emulate it, slower than fp32)")
    else:
        for a, b in (("bf16+cl", "bf16"), ("channels_last", "fp32"), ("bf16+cl", "fp32")):
            path = "forward"
            sizes_a = [int(r["batch_size"]) for r in ok if r["variant"] == a
                       and r["path"] == path and at(b, int(r["batch_size"]), path)]
            top_bs = max(sizes_a, key=lambda bs: at(a, bs, path) or 0.0) if sizes_a else None
            if top_bs is not None and at(b, top_bs, path):
                notes.append(f"{a} / {b} at batch {top_bs} (forward): "
                             f"{(at(a, top_bs, path) or 0) / (at(b, top_bs, path) or 1):.2f}×")
        worker_default = at("bf16+cl", batch, "counter")
        no_cl = at("bf16", batch, "counter")
        if worker_default and no_cl:
            keep = worker_default >= no_cl
            notes.append(f"worker path at batch {batch}: bf16+channels_last {worker_default:,.0f}"
                         f" vs bf16 {no_cl:,.0f} img/s: "
                         f"{'keep' if keep else 'reconsider'} channels_last=True on CUDA")
    return {"batch_sizes": sizes, "table": table, "notes": notes,
            "best": {p: {"variant": r["variant"], "batch_size": r["batch_size"],
                         "images_per_s": _rate(r)} for p, r in best.items()}}


def summarize_decode(sec: dict[str, Any] | None) -> dict[str, Any] | None:
    if not sec or "error" in sec:
        return None
    rows = [{"method": r["method"], "decode_only": _median(r.get("decode_only")),
             "full": _median(r.get("images_per_s"))} for r in sec.get("cpu", [])]
    rows += [{"method": f"{r['method']} batch {r['batch_size']}",
              "decode_only": _median(r.get("images_per_s")) if "(decode)" in r["method"]
              else None,
              "full": _median(r.get("images_per_s")) if "resize" in r["method"] else None}
             for r in sec.get("cuda", []) if "error" not in r]
    notes = []
    d = sec.get("draft_effect")
    if d:
        notes.append(f"draft mode shrank the decode for {d['draft_downscaled']} of "
                     f"{d['images']} images (median short side {d['median_short_side_px']} px: "
                     "libjpeg can only halve while the result stays ≥ the 224 input)")
    by = {r["method"]: r for r in rows}
    if "pillow-draft" in by and by["pillow-draft"]["full"] and by.get("tv-decode-cpu", {}).get(
            "full"):
        ratio = by["tv-decode-cpu"]["full"] / by["pillow-draft"]["full"]
        notes.append(f"torchvision decode_jpeg + tensor resize vs the worker's Pillow path: "
                     f"{ratio:.2f}×")
    return {"rows": rows, "notes": notes}


def summarize_ceiling(sec: dict[str, Any] | None, batch: int, cores: int = 0
                      ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    if not sec or "error" in sec:
        return None, None
    c = sec["components"]
    pg = c["postgres_write"]
    pg_key = min(pg, key=lambda k: abs(int(k) - batch))
    comps = {
        f"S3 GET (concurrency {c['s3_get']['concurrency']})": _median(c["s3_get"]["per_s"]),
        f"decode pool ({c['decode']['workers']} threads)": _median(c["decode"]["per_s"]),
        f"Kafka consume + parse (poll {c['kafka_consume']['max_records']})":
            _median(c["kafka_consume"]["per_s"]),
        f"Postgres write ({pg_key} rows/transaction)": _median(pg[pg_key]),
    }
    valid = {k: v for k, v in comps.items() if v}
    slowest = min(valid, key=lambda k: valid[k])
    rate = float(sec["events_per_s"])
    shared = 1.0 / sum(1.0 / v for v in valid.values())
    runs = sec["worker_runs"]
    mid = sorted(runs, key=lambda r: r["events_per_s"])[len(runs) // 2]
    notes = [f"null-model worker: {rate:,.1f} events/s (median of {len(runs)} runs of "
             f"{sec['events']} events: {', '.join(str(r['events_per_s']) for r in runs)})",
             f"slowest component alone: {slowest} at {valid[slowest]:,.1f}/s → ceiling / "
             f"slowest = {rate / valid[slowest]:.2f}",
             f"if every stage had to share the same CPUs one after another, the bound would be "
             f"1/Σ(1/rate) = {shared:,.1f}/s (ceiling / that = {rate / shared:.2f}); the S3 "
             f"server (moto), Kafka and Postgres run on the same cores as the worker here",
             f"worker's busiest stage (median run): {mid['bottleneck']}; busy shares "
             f"{mid['busy']}",
             f"CPU over the steady window: machine {_pct(mid.get('window_machine_cpu_busy'))} "
             f"busy, worker process {mid.get('window_process_cpu_cores')} cores of "
             f"{cores}"]
    comps_out = {**{k: v for k, v in comps.items()}, "null-model worker (end to end)": rate}
    batched = c.get("postgres_write_values_plus_batch", {})
    rows = [[k, _median(v), _median(batched.get(k))]
            for k, v in sorted(pg.items(), key=lambda kv: int(kv[0]))]
    per_row = _median(pg.get("1"))
    pg_notes = []
    if per_row:
        pg_notes.append(f"{pg_key} rows per transaction (≈ the worker's batch) vs one "
                        f"transaction per row: {(_median(pg[pg_key]) or 0) / per_row:.1f}×")
        top = max(pg, key=lambda k: _median(pg[k]) or 0)
        pg_notes.append(f"best: {top} rows per transaction, {(_median(pg[top]) or 0) / per_row:.1f}"
                        f"× per-row; each verdict row also writes its discrepancy row when the "
                        f"count mismatches")
        if batched.get(pg_key):
            pg_notes.append(
                f"the sink's INSERT … ON CONFLICT goes through psycopg2 executemany, one "
                f"statement per row (SQLAlchemy 2.1 skips insertmanyvalues with ON CONFLICT); "
                f"the same write on an engine with executemany_mode='values_plus_batch': "
                f"{(_median(batched[pg_key]) or 0) / (_median(pg[pg_key]) or 1):.1f}× at "
                f"{pg_key} rows/transaction")
    ceiling = {"components": comps_out, "notes": notes, "events_per_s": rate,
               "slowest": slowest, "slowest_per_s": valid[slowest],
               "ratio": rate / valid[slowest], "bottleneck": mid["bottleneck"]}
    return ceiling, {"rows": rows, "notes": pg_notes}


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


def summarize_local(sec: dict[str, Any] | None) -> dict[str, Any] | None:
    if not sec or "error" in sec or not sec.get("runs"):
        return None
    b = sec["per_event"]
    rows: list[list[Any]] = []
    notes = []
    for run in sec["runs"]:
        p, bs, busy = run["pipeline"], run["batch_size"], run["pipeline"]["busy"]
        rows.append([f"model alone, batch {bs} (Counter.infer, host batch)",
                     _median(run["model_alone"]), ""])
        rows.append([f"pipeline, max_batch_size {bs}, {p['decode_workers']} decode threads",
                     p["events_per_s"], f"{p['events']} images, mean batch {p['mean_batch_size']}"])
        limit = "decode pool" if busy["decode_pool"] > busy["infer_thread"] else "model thread"
        run["bottleneck"] = (f"{limit} (infer thread busy {busy['infer_thread']:.0%}, decode "
                             f"pool {busy['decode_pool']:.0%})")
        notes.append(f"batch {bs}: efficiency {run['efficiency']:.2f}, "
                     f"{run['speedup_vs_per_event']:.1f}× per-event; busiest: {run['bottleneck']}")
    rows.append(["per-event in process (decode, forward batch 1)", b["events_per_s"],
                 f"{b['events']} images"])
    top = max(sec["runs"], key=lambda r: r["pipeline"]["events_per_s"])
    return {"rows": rows, "notes": notes, "efficiency": top["efficiency"],
            "speedup": top["speedup_vs_per_event"], "bottleneck": top["bottleneck"],
            "batch_size": top["batch_size"]}


def summarize_memory(sections: dict[str, Any], model: list[dict[str, Any]]) -> dict[str, Any]:
    rows: list[list[Any]] = []
    notes = []
    runs = [r for r in sections.get("memory", []) if isinstance(r, dict) and "run" in r]
    for r in runs:
        run = r["run"]
        rows.append(["null-model worker", r["events"], run["events_per_s"],
                     run["rss_start_mib"], run["rss_peak_mib"], run["rss_growth_mib"]])
    flat = None
    if len(runs) == 2:
        small, big = runs[0]["run"], runs[1]["run"]
        # Flat: the 10× run peaks within 10 % of the 1× run, and grows by at most 5 % (or
        # 32 MiB) between its first tenth of events and its end.
        late = big.get("rss_growth_10pct_to_end_mib", 0.0)
        flat = (big["rss_peak_mib"] <= 1.1 * small["rss_peak_mib"]
                and late <= max(32.0, 0.05 * big["rss_peak_mib"]))
        notes.append(f"10× more events ({runs[0]['events']} → {runs[1]['events']}): peak RSS "
                     f"{small['rss_peak_mib']} → {big['rss_peak_mib']} MiB; in the 10× run RSS "
                     f"moved {late} MiB from its first tenth of events to its end "
                     f"({'flat' if flat else 'NOT flat'}); throughput "
                     f"{small['events_per_s']} → {big['events_per_s']} events/s")
    e2e = sections.get("e2e")
    if isinstance(e2e, dict) and "worker" in e2e:
        w = e2e["worker"]
        rows.append([f"B4 worker, batch {e2e['batch_size']}", w["rows_written"],
                     w["events_per_s"], w["rss_start_mib"], w["rss_peak_mib"],
                     w["rss_growth_mib"]])
    for r in model:
        peak = r.get("rss_peak_mib", r.get("device_peak_mib"))
        if peak is not None and r["path"] == "counter":
            rows.append([f"model {r['variant']} batch {r['batch_size']}", "–", _rate(r), "–",
                         peak, "–"])
    if any("device_peak_mib" in r for r in model):
        notes.append("model rows on CUDA show peak device memory allocated (MiB)")
    else:
        notes.append("model rows: peak RSS of the model process while that batch size ran "
                     "(ascending sizes, so each is an upper bound for its size)")
    return {"rows": rows, "notes": notes, "flat": flat}


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
    targets.append(_target("worker / per-event baseline", e["speedup"], SPEEDUP_TARGET["cpu"],
                           unit="×"))
    if e.get("startup_warm_s") is not None:
        warm = float(e["startup_warm_s"])
        targets.append({"name": "start-up with autotuning, warm cache", "value": warm,
                        "value_text": f"{warm:.1f} s", "target": STARTUP_WARM_TARGET_S,
                        "target_text": f"≤ {STARTUP_WARM_TARGET_S:.0f} s",
                        "met": warm <= STARTUP_WARM_TARGET_S, "note": "load + warm-up"})
    if e["unreliable"]:
        for t in targets:
            t["note"] = ("UNRELIABLE (machine contended, see e2e notes); "
                         + t["note"]).rstrip("; ")
    return targets


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    sections: dict[str, Any] = results.get("sections", {})
    device = results["machine"]["device"]
    batch = int(results.get("worker_batch_size") or 16)
    out: dict[str, Any] = {"targets": [], "errors": []}
    for key, sec in sections.items():
        for s in (sec if isinstance(sec, list) else [sec]):
            if isinstance(s, dict) and "error" in s:
                out["errors"].append(f"{key}: {s['error']} (log {s.get('log')})")
    out["model"] = summarize_model(sections, device, batch)
    out["decode"] = summarize_decode(sections.get("decode"))
    ceiling, postgres = summarize_ceiling(sections.get("ceiling"), batch,
                                          int(results["machine"].get("cores", 0)))
    out["ceiling"], out["postgres"] = ceiling, postgres
    cores = int(results["machine"].get("cores", 0))
    model_rows = [r for r in _model_rows(sections) if r.get("section") == "model"
                  and r["variant"] == ("bf16+cl" if device == "cuda" else "fp32")
                  and r["batch_size"] == batch and _rate(r)]
    out["e2e"] = summarize_e2e(sections.get("e2e"), cores,
                               _rate(model_rows[0]) if model_rows else None)
    out["local"] = summarize_local(sections.get("local"))
    out["backends"] = summarize_backends(sections.get("backends"))
    out["memory"] = summarize_memory(sections, _model_rows(sections))
    t = out["targets"]
    if out["e2e"]:
        t += _e2e_targets(out["e2e"])
    if ceiling:
        t.append(_target("pipeline ceiling / slowest component", ceiling["ratio"],
                         CEILING_TARGET, note=f"slowest: {ceiling['slowest']}; worker: "
                                              f"{ceiling['bottleneck']}"))
    if out["memory"]["flat"] is not None:
        t.append({"name": "memory flat over 10× events", "value": out["memory"]["flat"],
                  "value_text": "flat" if out["memory"]["flat"] else "grows",
                  "target_text": "flat", "met": out["memory"]["flat"], "note": ""})
    if out["local"]:
        loc = out["local"]
        t.append(_target(f"in-process pipeline / model alone (batch {loc['batch_size']})",
                         loc["efficiency"], EFFICIENCY_TARGET,
                         note=f"busiest: {loc['bottleneck']}"))
        t.append(_target("in-process pipeline / per-event", loc["speedup"],
                         SPEEDUP_TARGET.get(device, 1.5), unit="×"))
    if device == "cuda" and out["model"]:
        bf16 = [r for r in _model_rows(sections) if "bf16" in r["variant"] and _rate(r)]
        top = max(bf16, key=lambda r: _rate(r) or 0.0, default=None)
        if top:
            t.append(_target("B4 bf16 224 images/s (best)", _rate(top), GPU_MODEL_TARGET,
                             fmt="{:,.0f}", note=f"{top['variant']} / {top['path']} batch "
                                                 f"{top['batch_size']}"))
    if device == "cuda" and out["decode"]:
        gpu = [r for r in out["decode"]["rows"] if "cuda" in r["method"] and r["decode_only"]]
        top_d = max(gpu, key=lambda r: r["decode_only"], default=None)
        if top_d:
            t.append(_target("GPU batched JPEG decode images/s", top_d["decode_only"],
                             GPU_DECODE_TARGET, fmt="{:,.0f}", note=top_d["method"]))
    return out
