"""Results → headline ratios against targets, a Markdown report and a PNG of plots.

Pure apart from ``write_all``: ``summarize`` reads the raw sections and derives every number
the Markdown shows, so the JSON carries both the raw measurements and the summary.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from bench.summary import summarize

__all__ = ["summarize", "write_all", "markdown"]

log = logging.getLogger(__name__)


def _fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return out + [""]


def markdown(results: dict[str, Any], summary: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"# binaudit benchmarks: {m['host']} ({m['device']})", "",
             f"- machine: {m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB; "
             f"GPU: {', '.join(m['gpus']) or 'none'}",
             f"- torch {m['torch']}, torchvision {m['torchvision']}, Python {m['python']}, "
             f"{m['torch_threads']} torch threads; date (UTC) {m['date_utc']}",
             f"- load average (1/5/15 min): at start {m['load_average_at_start']}, at end "
             f"{m.get('load_average_at_end')}; waited {results.get('quiet', {}).get('waited_s')}"
             f" s for a quiet machine",
             f"- command: `{results.get('command')}` ({results.get('profile')} profile, "
             f"{results.get('total_s')} s); medians of repeats, ratios from the same run"]
    for rerun in results.get("reruns", []):
        lines.append(f"- re-run of {', '.join(rerun['sections'])} at {rerun['date_utc']} "
                     f"(`{rerun['command']}`): load at its start "
                     f"{rerun['quiet'].get('load_at_start')}, at its end "
                     f"{rerun['load_average_at_end']}")
    lines.append("")
    lines += ["## Headline", ""]
    lines += _table(["measure", "value", "target", "met", "note"],
                    [[t["name"], t["value_text"], t["target_text"],
                      {True: "yes", False: "**no**", None: "–"}[t["met"]], t.get("note", "")]
                     for t in summary["targets"]])
    for key, title in (("model", "Model alone (images/s, median)"),):
        if summary.get(key):
            lines += [f"## {title}", ""]
            s = summary[key]
            lines += _table(["variant / path"] + [str(b) for b in s["batch_sizes"]],
                            [[name] + [row.get(str(b)) for b in s["batch_sizes"]]
                             for name, row in s["table"].items()])
            lines += [f"- {note}" for note in s["notes"]] + [""]
    if summary.get("decode"):
        s = summary["decode"]
        lines += ["## Preprocessing (images/s per core, real sample JPEGs)", ""]
        lines += _table(["method", "decode only", "decode + resize + normalise"],
                        [[r["method"], r.get("decode_only"), r.get("full")] for r in s["rows"]])
        lines += [f"- {note}" for note in s["notes"]] + [""]
    if summary.get("ceiling"):
        s = summary["ceiling"]
        lines += ["## Pipeline ceiling (null model, real Kafka/S3/Postgres)", ""]
        lines += _table(["component alone", "per s (median)"],
                        [[k, v] for k, v in s["components"].items()])
        lines += [f"- {note}" for note in s["notes"]] + [""]
    for key, where in (("e2e", "e2e process"), ("backends", "backends section")):
        s = summary.get(key) or {}
        if not s.get("backend_table"):
            continue
        sizes = s["backend_sizes"]
        lines += [f"## Model alone per inference backend (images/s, BinCounter.infer, "
                  f"interleaved windows, {where})", ""]
        lines += _table(["backend"] + [str(b) for b in sizes] + ["note"],
                        [[name] + [row.get(str(b)) for b in sizes] + [row.get("error", "")]
                         for name, row in s["backend_table"].items()])
        lines += [f"- {note}" for note in s.get("notes", []) if key == "backends"] + [""]
    if summary.get("e2e"):
        s = summary["e2e"]
        lines += ["## End to end with the real counter vs model alone vs per-event", ""]
        lines += _table(["run", "events/s", "note"], s["rows"])
        lines += [f"- {note}" for note in s["notes"]] + [""]
        for t in s.get("tables", []):
            lines += [f"### {t['title']}", ""] + _table(t["header"], t["rows"])
    if summary.get("local"):
        s = summary["local"]
        lines += ["## In-process pipeline (local source, no Kafka)", ""]
        lines += _table(["run", "images/s", "note"], s["rows"])
        lines += [f"- {note}" for note in s["notes"]] + [""]
    if summary.get("postgres"):
        s = summary["postgres"]
        lines += ["## Postgres writes (ResultSink.write)", ""]
        lines += _table(["rows per transaction", "rows/s (median)",
                         "what-if: executemany_mode=values_plus_batch"], s["rows"])
        lines += [f"- {note}" for note in s["notes"]] + [""]
    if summary.get("memory"):
        s = summary["memory"]
        lines += ["## Memory", ""]
        lines += _table(["run", "events", "events/s", "RSS start MiB", "RSS peak MiB",
                         "growth MiB"], s["rows"])
        lines += [f"- {note}" for note in s["notes"]] + [""]
    loads = [[key, s.get("load_average_before"), s.get("seconds")]
             for key, sec in results.get("sections", {}).items()
             for s in (sec if isinstance(sec, list) else [sec]) if isinstance(s, dict)]
    if loads:
        lines += ["## Load during the run", ""]
        lines += _table(["section", "load average (1/5/15) at its start", "seconds"], loads)
    errors = summary.get("errors", [])
    if errors:
        lines += ["## Sections that did not complete", ""] + [f"- {e}" for e in errors] + [""]
    lines += [f"Raw numbers: `{Path(results.get('_json', 'results.json')).name}`; child logs "
              f"were in `{results.get('logs')}`.", ""]
    return "\n".join(lines)


def write_all(results: dict[str, Any], out: Path, stem: str) -> list[Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    paths = [out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.png"]
    results = {**results, "_json": str(paths[0]), "summary": summary}
    paths[0].write_text(json.dumps(results, indent=1, default=str) + "\n")
    paths[1].write_text(markdown(results, summary))
    try:
        from bench.plots import plot

        plot(results, summary, paths[2])
    except Exception as exc:  # noqa: BLE001 - the numbers matter more than the picture
        log.warning("plot not written: %s", exc)
        return paths[:2]
    return paths
