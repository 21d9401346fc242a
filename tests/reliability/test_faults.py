"""Faults mid-stream on the dedicated stack: worker SIGKILLs, Postgres/Kafka/S3 restarts, group
members killed, a model slower than max.poll.interval.ms.

Each scenario is a bounded run with an exact count check: every good event ends as exactly one
``audit_results`` row, and an offset watcher checks throughout that the group's committed
offsets never pass an unwritten row. Each appends its row to the session report.
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from devstack.services import LocalServices
from tests.reliability.probes import reseed_images

pytestmark = [pytest.mark.reliability, pytest.mark.services, pytest.mark.slow]

# Small batches and a per-batch delay stretch a run so a fault lands mid-stream.
STRETCH = {"max_batch_size": 4, "artificial_delay_s": 0.05, "max_in_flight": 32}


def conclude(scenario_log: Any, h: Any, *, name: str, topic: str, pub: Any, watch: Any,
             recovery_s: float | None, recovered_by: str, exit_codes: list[int],
             notes: str = "", extra: dict[str, str] | None = None,
             problems: list[str] | None = None) -> None:
    """Count rows, record the scenario's row, then fail on anything wrong."""
    audit = h.audit(topic, pub.event_ids)
    problems = list(problems or [])
    if audit["lost"] or audit["duplicated"] or audit["unexpected"]:
        problems.append(f"rows: {audit}")
    if audit["dead_letters"]:
        problems.append(f"{audit['dead_letters']} dead letters from good events")
    problems += [f"offset watch: {v}" for v in watch.violations[:5]]
    if watch.checks < 2:
        problems.append(f"offset watch ran {watch.checks} checks (last error {watch.last_error})")
    if any(rc != 0 for rc in exit_codes):
        problems.append(f"worker exit codes {exit_codes} (SIGTERM must drain and exit 0)")
    extra = {"offset checks (ok / skipped while a service was down / violations)":
             f"{watch.checks} / {watch.failed_checks} / {len(watch.violations)}",
             **(extra or {})}
    scenario_log.add(name=name, sent=pub.published, good=pub.valid, rows=audit["rows"],
                     lost=audit["lost"], duplicated=audit["duplicated"],
                     dead_letters=audit["dead_letters"], recovery_s=recovery_s,
                     recovered_by=recovered_by, passed=not problems, notes=notes, extra=extra)
    assert not problems, problems


def wait_recovered(h: Any, waiter: Any, topic: str, since: float, workers: tuple[Any, ...],
                   timeout: float = 180) -> float:
    waiter(lambda: h.first_row_after(topic, since) is not None, timeout,
           "the first row after the fault", workers=workers)
    seconds = h.first_row_after(topic, since)
    assert seconds is not None
    return float(seconds)


def drain_all(h: Any, waiter: Any, topic: str, total: int, workers: tuple[Any, ...],
              timeout: float = 300) -> list[int]:
    """Wait for a row per record, then SIGTERM every worker (drain, commit, exit 0)."""
    waiter(lambda: h.written(topic) >= total, timeout, f"{total} rows", workers=workers)
    return [wp.stop() for wp in workers]


def test_sigkill_five_times_then_restart(harness: Any, sample_dir: Path, scenario_log: Any,
                                         offset_watch: Any, waiter: Any) -> None:
    h, rng = harness, random.Random(20260101)
    topic = h.topic()
    group = f"g-{topic}"
    # Each round takes up to ~100 rows (10-40 to the kill, a sub-second lag, the restart's first
    # row); 300 events ran out before the fifth kill once, and the fifth restart had nothing left
    # to recover on.
    pub = h.publish(topic, sample_dir, 600)
    recoveries: list[float] = []
    kills: list[int] = []
    with offset_watch(topic, group) as watch:
        wp = h.worker("sigkill-0", topic=topic, group=group, **STRETCH)
        for i in range(5):
            # A seeded random point: some rows after the (re)start, then a random sub-second lag.
            threshold = h.written(topic) + rng.randint(10, 40)
            waiter(lambda t=threshold: h.written(topic) >= t, 180, f"{threshold} rows",
                   workers=(wp,))
            time.sleep(rng.uniform(0.0, 1.0))
            assert h.written(topic) < pub.published, f"all rows written before kill {i + 1}"
            wp.kill()
            kills.append(h.written(topic))
            watch.check()
            restarted = time.time()  # the supervisor restarts the worker at once
            wp = h.worker(f"sigkill-{i + 1}", topic=topic, group=group, **STRETCH)
            recoveries.append(wait_recovered(h, waiter, topic, restarted, (wp,)))
        codes = drain_all(h, waiter, topic, pub.published, (wp,))
    assert max(kills) < pub.published, "the kills came too late to test anything"
    conclude(scenario_log, h, name="SIGKILL worker ×5, restart each time", topic=topic, pub=pub,
             watch=watch, recovery_s=max(recoveries), exit_codes=codes,
             recovered_by="supervisor restart (process gone; the new member resumes from the "
                          "committed offsets, idempotent inserts absorb the replay)",
             extra={"rows written at each kill": ", ".join(map(str, kills)),
                    "recovery per restart (s, includes Python/torch start-up and group join)":
                        ", ".join(f"{r:.1f}" for r in recoveries)})


def test_postgres_stopped_and_restarted(harness: Any, supervisor: LocalServices,
                                        sample_dir: Path, scenario_log: Any, offset_watch: Any,
                                        waiter: Any) -> None:
    h = harness
    topic = h.topic()
    group = f"g-{topic}"
    pub = h.publish(topic, sample_dir, 250)
    with offset_watch(topic, group) as watch:
        wp = h.worker("pg-outage", topic=topic, group=group, **STRETCH)
        waiter(lambda: h.written(topic) >= 40, 180, "the first rows", workers=(wp,))
        try:
            supervisor.down(only=("postgres",))
            stopped = time.time()
            time.sleep(8)
            assert wp.alive(), "the worker died while Postgres was down"
        finally:
            supervisor.up(only=("postgres",))
        back = time.time()
        recovery = wait_recovered(h, waiter, topic, back, (wp,))
        codes = drain_all(h, waiter, topic, pub.published, (wp,))
    log = wp.log()
    conclude(scenario_log, h, name="Postgres stopped 8 s and restarted", topic=topic, pub=pub,
             watch=watch, recovery_s=recovery, exit_codes=codes,
             recovered_by="by itself: paused partitions, held the batch, retried with backoff",
             problems=[] if "postgres unavailable" in log else ["no 'postgres unavailable'"],
             extra={"outage (stop → ready again), s": f"{back - stopped:.1f}",
                    "write retries logged": str(log.count("postgres unavailable"))})


def test_kafka_broker_killed_and_restarted(harness: Any, supervisor: LocalServices,
                                           sample_dir: Path, scenario_log: Any,
                                           offset_watch: Any, waiter: Any) -> None:
    """The consumer prefetches whole partitions (2 MB fetches), so records published before
    the kill may all be processed from its buffer while the broker is down. Half the events are
    therefore published after the restart: they prove the worker fetches again."""
    h = harness
    topic = h.topic()
    group = f"g-{topic}"
    before = h.publish(topic, sample_dir, 150)
    with offset_watch(topic, group) as watch:
        wp = h.worker("kafka-outage", topic=topic, group=group, **STRETCH)
        waiter(lambda: h.written(topic) >= 40, 180, "the first rows", workers=(wp,))
        killed, back = kafka_outage(supervisor, wp, 5)
        after = h.publish(topic, sample_dir, 100)
        waiter(lambda: first_row_of(h, after.event_ids, back) is not None, 180,
               "a row for an event published after the restart", workers=(wp,))
        recovery = first_row_of(h, after.event_ids, back)
        pub = combined(before, after)
        codes = drain_all(h, waiter, topic, pub.published, (wp,))
    conclude(scenario_log, h, name="Kafka broker SIGKILLed and restarted", topic=topic, pub=pub,
             watch=watch, recovery_s=recovery, exit_codes=codes,
             recovered_by="by itself: kafka-python reconnects and rejoins the group; failed "
                          "commits are retried at the next batch",
             notes="150 events before the kill, 100 published after the broker is back; "
                   "recovery is measured to the first row of those 100 (it includes "
                   "publishing them).",
             extra={"outage (kill → broker ready again), s": f"{back - killed:.1f}",
                    "failed commits logged": str(wp.log().count("offset commit failed"))})


def test_idle_exit_waits_out_a_broker_outage(harness: Any, supervisor: LocalServices,
                                             sample_dir: Path, scenario_log: Any,
                                             offset_watch: Any, waiter: Any) -> None:
    """``exit_when_idle_s`` (demo, tests) stops a worker whose partitions are at their end. A
    broker outage is not the end of the topic: the worker waits, takes what is published after
    the restart, and only then exits 0 by itself."""
    h = harness
    topic = h.topic(partitions=2)
    group = f"g-{topic}"
    first = h.publish(topic, sample_dir, 20)
    with offset_watch(topic, group) as watch:
        wp = h.worker("idle-exit", topic=topic, group=group, exit_when_idle_s=2.0,
                      max_batch_size=4, artificial_delay_s=1.0)
        waiter(lambda: h.written(topic) >= 1, 180, "the first row", workers=(wp,))
        # Longer than the old failure needed: a lag query timing out (30 s) read as "no
        # partitions", and 3x the idle time later the worker exited mid-outage.
        _, back = kafka_outage(supervisor, wp, 40)
        second = h.publish(topic, sample_dir, 20)
        pub = combined(first, second)
        waiter(lambda: h.written(topic) >= pub.published, 180, f"{pub.published} rows",
               workers=(wp,))
        recovery = first_row_of(h, second.event_ids, back)
        code = wp.proc.wait(timeout=120)
    conclude(scenario_log, h, name="idle-exit worker through a 40 s Kafka outage", topic=topic,
             pub=pub, watch=watch, recovery_s=recovery, exit_codes=[code],
             recovered_by="by itself: waits out the outage (a broker that cannot answer is not "
                          "an idle topic), then exits 0 once the topic is drained",
             notes="20 events before the kill, 20 published after the broker is back.")


def kafka_outage(supervisor: LocalServices, wp: Any, seconds: float) -> tuple[float, float]:
    """SIGKILL the broker, check the worker outlives ``seconds`` without it, restart it.
    Returns (killed, back) wall times; ``up`` returns once a message round-trips."""
    try:
        supervisor.kill("kafka")
        killed = time.time()
        time.sleep(seconds)
        assert wp.alive(), f"the worker died with the broker:\n{wp.log()[-3000:]}"
    finally:
        supervisor.up(only=("kafka",))
    return killed, time.time()


def combined(*pubs: Any) -> SimpleNamespace:
    """Several publishes of one scenario counted as one, for :func:`conclude`."""
    return SimpleNamespace(published=sum(p.published for p in pubs),
                           valid=sum(p.valid for p in pubs),
                           event_ids=[e for p in pubs for e in p.event_ids])


def first_row_of(h: Any, event_ids: list[str], moment: float) -> float | None:
    first = h.scalar("SELECT extract(epoch FROM min(processed_at)) FROM audit_results "
                     "WHERE event_id = ANY(:ids)", ids=event_ids)
    return None if first is None else float(first) - moment


def test_s3_stopped_and_restarted(harness: Any, supervisor: LocalServices, gated_s3: Any,
                                  sample_dir: Path, scenario_log: Any, offset_watch: Any,
                                  waiter: Any) -> None:
    h = harness
    topic = h.topic()
    group = f"g-{topic}"
    pub = h.publish(topic, sample_dir, 250)
    with offset_watch(topic, group) as watch:
        wp = h.worker("s3-outage", topic=topic, group=group,
                      s3_endpoint=f"http://127.0.0.1:{gated_s3.port}", **STRETCH)
        waiter(lambda: h.written(topic) >= 40, 180, "the first rows", workers=(wp,))
        gated_s3.close_gate()
        stopped = time.time()
        try:
            supervisor.kill("s3")
            time.sleep(6)
        finally:
            supervisor.up(only=("s3",))
        reseeded = reseed_images(h.settings, sample_dir)
        gated_s3.open_gate()
        back = time.time()
        assert wp.alive(), f"the worker died with S3:\n{wp.log()[-3000:]}"
        recovery = wait_recovered(h, waiter, topic, back, (wp,))
        codes = drain_all(h, waiter, topic, pub.published, (wp,))
    log = wp.log()
    conclude(scenario_log, h, name="S3 (moto) killed and restarted", topic=topic, pub=pub,
             watch=watch, recovery_s=recovery, exit_codes=codes,
             recovered_by="by itself: in-flight fetches retried with backoff (never dead "
                          "letters); partitions paused once max_in_flight was reached",
             problems=[] if "S3 unavailable" in log else ["no 'S3 unavailable' retry logged"],
             notes="moto keeps objects in memory, so a restarted moto is empty: it would answer "
                   "NoSuchBucket (an infrastructure fault since issue 14, retried) and then "
                   "NoSuchKey for objects not re-uploaded yet (rightly, for a real store, a "
                   "dead letter). The worker therefore reaches moto "
                   "through a TCP gate that the test closes *before* killing moto and opens "
                   "only after `up` returned and the sample was re-uploaded through the "
                   "publisher's upload path; to the worker the whole window is one outage.",
             extra={"outage seen by the worker, s": f"{back - stopped:.1f}",
                    "objects re-uploaded": str(reseeded),
                    "fetch retries logged": str(log.count("S3 unavailable"))})


def assigned_partitions(log: str) -> set[int]:
    lines = re.findall(r"partitions assigned: (.*)", log)
    return {int(p) for p in re.findall(r"\[(\d+)\]", lines[-1])} if lines else set()


@pytest.mark.parametrize("members", [2, 3])
def test_group_member_killed_rest_finish(members: int, harness: Any, sample_dir: Path,
                                         scenario_log: Any, offset_watch: Any,
                                         waiter: Any) -> None:
    h = harness
    topic = h.topic(partitions=6)
    group = f"g-{topic}"
    pub = h.publish(topic, sample_dir, 300)
    with offset_watch(topic, group) as watch:
        workers = [h.worker(f"member-{i}", topic=topic, group=group, **STRETCH)
                   for i in range(members)]
        # Every member owns partitions (the group settled) and rows are flowing.
        waiter(lambda: all(assigned_partitions(w.log()) for w in workers), 240,
               "every member assigned", workers=tuple(workers))
        waiter(lambda: h.written(topic) >= 60, 180, "rows from the group",
               workers=tuple(workers))
        victim, survivors = workers[-1], tuple(workers[:-1])
        orphaned = assigned_partitions(victim.log())
        victim.kill()
        killed = time.time()
        watch.check()
        waiter(lambda: orphan_row_after(h, topic, orphaned, killed) is not None, 180,
               "a row on the victim's partitions", workers=survivors)
        recovery = orphan_row_after(h, topic, orphaned, killed)
        codes = drain_all(h, waiter, topic, pub.published, survivors)
    revokes = sum(w.log().count("partitions revoked") for w in survivors)
    conclude(scenario_log, h, name=f"{members} workers in one group, one SIGKILLed", topic=topic,
             pub=pub, watch=watch, recovery_s=recovery, exit_codes=codes,
             recovered_by="by the group: session timeout → rebalance; survivors take the "
                          "victim's partitions from its last committed offsets",
             extra={"victim's partitions": ", ".join(map(str, sorted(orphaned))),
                    "recovery measured as": "kill → first row on a victim's partition",
                    "revokes logged by survivors": str(revokes)})


def orphan_row_after(h: Any, topic: str, partitions: set[int], moment: float) -> float | None:
    first = h.scalar(
        'SELECT extract(epoch FROM min(processed_at)) FROM audit_results WHERE topic=:t '
        'AND "partition" = ANY(:ps) AND processed_at >= to_timestamp(:m)',
        t=topic, ps=sorted(partitions), m=moment)
    return None if first is None else float(first) - moment


def test_slow_model_no_rebalance_storm(harness: Any, sample_dir: Path, scenario_log: Any,
                                       offset_watch: Any, waiter: Any) -> None:
    """Each batch takes 8 s, max.poll.interval.ms is 6 s: the main loop keeps polling while
    the inference thread works, so the member is never kicked out of the group."""
    h = harness
    topic = h.topic(partitions=2)
    group = f"g-{topic}"
    pub = h.publish(topic, sample_dir, 48)
    with offset_watch(topic, group) as watch:
        wp = h.worker("slow-model", topic=topic, group=group,
                      kafka={"max_poll_interval_ms": 6000},
                      max_batch_size=16, max_wait_ms=1000, artificial_delay_s=8.0)
        codes = drain_all(h, waiter, topic, pub.published, (wp,), timeout=360)
    log = wp.log()
    before_stop = log.split("stop requested")[0]
    # Rebalances once batches run (the join at start-up may take two rounds; not a storm).
    first_row = re.search(r"progress: \d+ events taken, [1-9]\d* written", before_stop)
    steady = before_stop[first_row.start():] if first_row else ""
    revokes = steady.count("partitions revoked")
    assigns = len(re.findall(r"partitions assigned: (?!none)", steady))
    poll_timeouts = len(re.findall(r"poll timeout", before_stop, re.IGNORECASE))
    drain_timeouts = len(re.findall(r"poll timeout", log, re.IGNORECASE)) - poll_timeouts
    problems = [] if first_row else ["no row was written before the stop"]
    if assigns or revokes or poll_timeouts:
        problems.append(f"while batches ran: assigned {assigns}×, revoked {revokes}×, poll "
                        f"timeouts {poll_timeouts}: the member left the group")
    conclude(scenario_log, h, name="slow model: 8 s/batch, max.poll.interval.ms 6 s",
             topic=topic, pub=pub, watch=watch, recovery_s=None, exit_codes=codes,
             recovered_by="nothing to recover: the main loop keeps polling while the model "
                          "runs", problems=problems,
             extra={"re-assignments / revocations while batches ran": f"{assigns} / {revokes}",
                    "poll-timeout warnings while running": str(poll_timeouts),
                    "poll-timeout warnings during the SIGTERM drain": str(drain_timeouts)},
             notes="Observation, not a failure: the SIGTERM drain (`Worker._drain`) does not "
                   "call poll(), so a drain longer than max.poll.interval.ms lets the heartbeat "
                   "thread leave the group; the last commit may then fail and the next owner "
                   "re-processes those records (idempotent, no loss).")
