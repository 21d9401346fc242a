"""The reliability suite's report: one row per scenario, rendered as Markdown, plus the soak plot.

Pure apart from the ``write_*``/``load_*`` functions. The suite (``tests/reliability``) collects
a :class:`ScenarioRow` per scenario during the session and writes ``reliability/report.md`` once,
at the end; ``make reliability`` (or ``make test``) regenerates it, and the latest result is
checked in next to this file. A session that ran only some scenarios (``pytest -k ...``) replaces
those rows and keeps the others from ``report.json`` (the rows of the last report), each marked
with the time it was measured, so the report never silently drops a scenario.
"""

from __future__ import annotations

import json
import platform
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPORT_PATH = HERE / "report.md"
ROWS_PATH = HERE / "report.json"
SOAK_PLOT_PATH = HERE / "soak.png"


# Bugs this suite found in the worker, and what was changed (kept with the report because the
# scenarios above are their regression tests).
FINDINGS = (
    "**Poison pill: a NUL byte in a Kafka key stopped the worker for good.** A bad record's key "
    "is stored in `dead_letters.key` (text); Postgres text cannot hold NUL, psycopg2 raised "
    "`ValueError` for the whole batch, it escaped the worker loop (only `SinkUnavailable` is "
    "retried) and the worker exited non-zero with the batch unwritten and uncommitted, so a "
    "restarted worker met the same record and died again. Fix (`inference/outcomes.py`): NUL in "
    "the stored key and message is escaped as `\\x00` (the payload is bytea and kept as "
    "is). Regression: corpus case *NUL byte in the Kafka key*, and "
    "`tests/worker/test_security.py::test_nul_in_an_attacker_chosen_key_cannot_stop_the_worker`.",
    "**Poison pill: deeply nested JSON crashed the decoder.** `b\"[\" * 100_000` (200 KB, under "
    "the 1 MiB limit) made `json.loads` raise `RecursionError`, which is not an `EventError`: "
    "the worker's loop would die on it at every restart. Fix (`schemas/events.py`): "
    "`RecursionError` while parsing is `invalid_json`, and the validation-error text no longer "
    "`repr`s a too-deep value. Regression: `tests/schemas/test_event_fuzz.py::"
    "test_deeply_nested_json`.",
    "**Lost events after a rebalance that hands a partition back to its owner.** kafka-python "
    "3.0.12 (EAGER) keeps a partition's fetch position when the new assignment returns it to "
    "the same member, but `Worker._on_revoke` made the offset tracker forget that partition's "
    "in-flight offsets; later commits then started from the next fetched offset and passed "
    "records still in flight. A crash in that window lost them: in the 3-worker scenario the "
    "group's committed offset for partition 0 was 49 while offsets 0 and 1 had no row. Fix "
    "(`worker/app.py`, `worker/offsets.py`): revoked partitions' tracker state is detached and "
    "re-attached if the partition comes back (dropped otherwise). Regression: the 3-worker "
    "scenario and its offset watcher, and `tests/worker/test_offsets.py::"
    "test_a_partition_handed_back_keeps_its_in_flight_offsets`.",
    "**A survivor stalled paused after a rebalance (frozen in-flight count).** When a member "
    "dies, the survivors' rejoin waits out its session timeout (seconds). During that join the "
    "pipeline kept finishing records of the revoked partitions, but the tracker had detached "
    "those partitions and dropped the finishes; when the partitions came back, their offsets "
    "stayed \"in flight\" for ever, the worker sat paused at `max_in_flight` and stopped "
    "consuming (1 in 12 runs of the group scenario). Fix (`worker/offsets.py`): finishes of "
    "detached partitions update the detached state; `in_flight()` counts them. Regression: "
    "`tests/worker/test_offsets.py::"
    "test_records_finishing_during_a_rebalance_count_when_the_partition_comes_back` and the "
    "group scenarios.",
    "**A group member idled for good after its first join (kafka-python 3.0.12 bug).** "
    "The leader rejoins when topic metadata arrives after its first assignment; its own new "
    "assignment makes `need_rejoin()` False while the JoinGroup/SyncGroup is still in flight, "
    "and when the poll that started it had timed out, no later poll awaited it: the new "
    "assignment was never applied and every partition stayed revoked (the corpus worker sat "
    "at \"0 taken, lag 40\"; 1 first join in ~30 in a loop, and the soak once in an earlier "
    "session). Fix (`worker/io/kafka_source.py::finish_forgotten_rebalance`): before each poll, "
    "a rebalance that is under way but no longer wanted by `need_rejoin()` is requested again, "
    "so the poll finishes it; 0 stuck in 60 looped first joins, the work-around stepped in 4 "
    "times. Regression: `tests/worker/io/test_kafka_source.py` (plain consumer stuck, "
    "work-around resumes).",
    "**A partition stalled for good after pause/resume (kafka-python 3.0.12 bug).** The "
    "fetcher parks parsed records of a partition paused mid-batch and only gives them back "
    "when its \"next records\" slot is `None`, which it never is again after the first fetch: "
    "the resumed partition was neither returned nor fetched, and a survivor sat at "
    "\"0 in flight, lag 1\" until the test timed out (about 1 full run in 5). Fix "
    "(`worker/io/kafka_source.py::release_parked_records`): before each poll, drop records "
    "parked for a partition that is no longer paused; the position never passed them, so the "
    "next fetch re-reads them. Regression: `tests/worker/io/test_kafka_source.py` (shows the "
    "plain consumer stalling, and the work-around delivering every record).",
    "**A long SIGTERM drain lost its final commits.** The drain did not poll, so a drain longer "
    "than max.poll.interval.ms (slow model, full pipeline) let kafka-python leave the group and "
    "every commit after it failed (`CommitFailedError`): the next owner re-processed the "
    "drained events. Fix (`Worker._drain`, `EventSource.keep_alive`): the drain polls with all "
    "partitions paused. Regression: `tests/worker/test_worker_e2e.py::"
    "test_a_drain_longer_than_max_poll_interval_still_commits`.",
    "**An idle-exit worker stopped in the middle of a broker outage.** With `exit_when_idle_s` "
    "(demo, tests) a lag query that timed out read as \"no partitions\", and 3x the idle time "
    "later the worker exited although the topic was not drained. Fix (`EventSource.lag` returns "
    "None when the broker cannot answer, bounded to 2 s; a lost assignment restarts the idle "
    "clock). Commits are bounded to 5 s and backed off after a failure, so rows keep being "
    "written during the outage. Regression: `test_idle_exit_waits_out_a_broker_outage`.",
    "**A worker could sit with no partitions.** The first join often ran before the "
    "consumer had the topic's metadata (\"No partition metadata for topic\"), so the leader "
    "assigned nothing; usually a rejoin followed within 0.2 s, but once (the soak) it never did "
    "and the worker idled with lag. Fix (`worker/io/kafka_source.py`): fetch the topic's "
    "partitions before `subscribe`.",
)

# Behaviour worth knowing that the suite measured but did not change.
OBSERVATIONS = (
    "`audit_results` is unique per (event id, model version) and event ids derive from (bin, "
    "capture time): the same event published to a second topic is absorbed as a replay. The "
    "suite gives every publish its own capture times.",
    "moto keeps objects in memory; see the S3 scenario for how its restart is made an outage.",
)


@dataclass
class ScenarioRow:
    """What one scenario sent, what it found in Postgres, and how the worker got through it."""

    name: str
    sent: int  # records published (good + bad)
    good: int  # of which valid events (each must end as exactly one audit_results row)
    rows: int  # audit_results rows found for those events
    lost: int  # good events without a row
    duplicated: int  # rows beyond one per event, plus offsets with both a verdict and a DLQ row
    dead_letters: int
    recovery_s: float | None  # fault end -> next row written (the slowest fault of the scenario)
    recovered_by: str
    passed: bool = True
    notes: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    measured_at: str = ""  # when the session that ran it started (ISO 8601, UTC)


@dataclass(frozen=True)
class RssSample:
    t: float  # seconds since the start of the run
    rss_mb: float
    rows: int  # rows written so far (throughput = its derivative)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render_markdown(rows: Sequence[ScenarioRow], *, duration_s: float,
                    definitions: Sequence[str] = (), findings: Sequence[str] = FINDINGS,
                    now: str | None = None) -> str:
    """The report: a summary table, then each scenario's notes. Rows measured before ``now``
    (kept from an earlier session) say when in the table."""
    now = now or datetime.now(UTC).isoformat(timespec="seconds")
    fresh = [r for r in rows if r.measured_at == now]
    scope = ("every scenario ran in this session" if len(fresh) == len(rows) else
             f"this session ran {len(fresh)} of the {len(rows)} scenarios "
             f"({', '.join(r.name for r in fresh)}); the other rows are kept from the session "
             "named in their *measured* column")
    lines = [
        "# binaudit reliability report",
        "",
        f"Generated {now} by `make reliability` (`pytest -m reliability tests/reliability`) in "
        f"{duration_s:.0f} s on {platform.machine()} / Python {platform.python_version()}, "
        f"against a dedicated Kafka/Postgres/moto stack (never the shared one); {scope}.",
        "",
        "| scenario | sent | good | rows | lost | duplicated | dead letters | recovery s "
        "| recovered by | result | measured |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.sent} | {r.good} | {r.rows} | {r.lost} | {r.duplicated} | "
            f"{r.dead_letters} | {_fmt(r.recovery_s)} | {r.recovered_by} | "
            f"{'pass' if r.passed else '**FAIL**'} | {r.measured_at or '-'} |")
    if definitions:
        lines += ["", "## Definitions", ""] + [f"- {d}" for d in definitions]
    if findings:
        lines += ["", "## Bugs found and fixed", ""] + [f"{i}. {f}" for i, f in
                                                         enumerate(findings, 1)]
    lines += ["", "## Observations (not changed)", ""] + [f"- {o}" for o in OBSERVATIONS]
    lines += ["", "## Scenario notes", ""]
    for r in rows:
        lines.append(f"### {r.name}")
        lines.append("")
        if r.notes:
            lines.append(r.notes)
            lines.append("")
        for key, value in r.extra.items():
            lines.append(f"- {key}: {value}")
        if r.extra:
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def merge_rows(previous: Sequence[ScenarioRow],
               current: Sequence[ScenarioRow]) -> list[ScenarioRow]:
    """``previous`` in its order with this session's rows in place of same-named ones; new
    scenarios at the end."""
    fresh = {r.name: r for r in current}
    merged = [fresh.pop(r.name, r) for r in previous]
    return merged + [r for r in current if r.name in fresh]


def load_rows(json_path: Path = ROWS_PATH, md_path: Path = REPORT_PATH) -> list[ScenarioRow]:
    """The last report's rows: from its JSON, else parsed from its Markdown (reports written
    before the JSON existed)."""
    if json_path.exists():
        return [ScenarioRow(**row) for row in json.loads(json_path.read_text())]
    if md_path.exists():
        return rows_from_markdown(md_path.read_text())
    return []


def rows_from_markdown(text: str) -> list[ScenarioRow]:
    """Rows of a rendered report (table, notes and extra lines)."""
    generated = re.search(r"^Generated (\S+)", text, re.M)
    when = generated.group(1) if generated else ""
    rows: list[ScenarioRow] = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 10 or not cells[1].isdigit():
            continue
        rows.append(ScenarioRow(
            name=cells[0], sent=int(cells[1]), good=int(cells[2]), rows=int(cells[3]),
            lost=int(cells[4]), duplicated=int(cells[5]), dead_letters=int(cells[6]),
            recovery_s=None if cells[7] == "-" else float(cells[7]), recovered_by=cells[8],
            passed=cells[9] == "pass",
            measured_at=cells[10] if len(cells) > 10 and cells[10] != "-" else when))
    sections = re.split(r"^### ", text.split("## Scenario notes", 1)[-1], flags=re.M)[1:]
    by_name = {r.name: r for r in rows}
    for section in sections:
        name, _, body = section.partition("\n")
        row = by_name.get(name.strip())
        if row is None:
            continue
        notes = [ln for ln in body.strip().splitlines() if ln and not ln.startswith("- ")]
        row.notes = "\n".join(notes)
        row.extra = dict(ln[2:].split(": ", 1) for ln in body.splitlines()
                         if ln.startswith("- ") and ": " in ln)
    return rows


def write_report(rows: Sequence[ScenarioRow], *, duration_s: float,
                 definitions: Sequence[str] = (), path: Path = REPORT_PATH,
                 rows_path: Path = ROWS_PATH) -> Path:
    """Write the report: this session's rows merged into the last report's."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    for row in rows:
        row.measured_at = now
    merged = merge_rows(load_rows(rows_path, path), rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_markdown(merged, duration_s=duration_s, definitions=definitions,
                                    now=now))
    rows_path.write_text(json.dumps([asdict(r) for r in merged], indent=1) + "\n")
    return path


def linear_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs (0 for fewer than two points)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def throughput(samples: Sequence[RssSample]) -> list[tuple[float, float]]:
    """(time, rows/s) between consecutive samples."""
    out = []
    for a, b in zip(samples, samples[1:], strict=False):
        if b.t > a.t:
            out.append((b.t, (b.rows - a.rows) / (b.t - a.t)))
    return out


def write_soak_plot(samples: Sequence[RssSample], *, title: str,
                    path: Path = SOAK_PLOT_PATH) -> Path:
    """Throughput and worker RSS over time, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rate = throughput(samples)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.plot([t for t, _ in rate], [r for _, r in rate], color="tab:blue")
    top.set_ylabel("rows written / s")
    top.set_title(title)
    top.grid(alpha=0.3)
    bottom.plot([s.t for s in samples], [s.rss_mb for s in samples], color="tab:red")
    bottom.set_ylabel("worker RSS (MB)")
    bottom.set_xlabel("seconds since the worker started")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
