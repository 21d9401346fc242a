"""Raw sections → headline numbers, targets met or missed, and the notes that explain them.

Pure: reads the dict ``bench.run``/``bench.gpu`` assemble, touches nothing else.
"""

from __future__ import annotations

from typing import Any

from bench.summary_e2e import (
    _e2e_targets,
    _startup_target,
    summarize_backends,
    summarize_e2e,
)
from bench.summary_util import _median, _pct, _target

# Targets from issue 7.
EFFICIENCY_TARGET = 0.90
CEILING_TARGET = 0.80
SPEEDUP_TARGET = {"cpu": 1.5, "cuda": 15.0}
GPU_MODEL_TARGET = 5000.0
GPU_DECODE_TARGET = 5000.0
CHANNELS_LAST_GAIN = 1.05  # change a default only for a clear (>5 %) win


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
    if isinstance(e2e, dict) and ("worker" in e2e or e2e.get("rounds")):
        # Rounds: the last worker run (the process has run them all by then).
        w = e2e["rounds"][-1]["worker"] if e2e.get("rounds") else e2e["worker"]
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
    startup = sections.get("startup")
    if isinstance(startup, dict) and "warm_s" in startup:
        t.append(_startup_target(float(startup["warm_s"]), (
            f"fresh process (`binaudit model tune-inference`, imports included); empty cache: "
            f"{startup['cold_s']} s; {startup.get('warm_chosen', '')}"), "fresh process"))
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
