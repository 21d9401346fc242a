"""A broken dependency mid-stream is never a dead letter: S3 access revoked (moto's IAM
authentication, the worker's policy deleted and put back), the bucket deleted and recreated,
the model raising for 30 s. The worker pauses, raises the alert, retries, and resumes by
itself: 0 dead letters, 0 lost, 0 duplicated.

And the two ways an event *does* end as a dead letter for S3's sake, both re-driven after the
fix: an object whose GET keeps failing with an error nobody classified (one ``fetch_failed``
after the budget, the partition keeps committing) and objects deleted before their events
were processed (``missing_object``). ``binaudit dlq redrive`` turns them into verdicts, and a
second re-drive adds nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from robots.publisher import image_key, load_samples
from tests.reliability.probes import FaultProxy, MetricsWatch, reseed_images

pytestmark = [pytest.mark.reliability, pytest.mark.services, pytest.mark.slow]

STRETCH = {"max_batch_size": 4, "artificial_delay_s": 0.05, "max_in_flight": 32}
REPO_ROOT = Path(__file__).resolve().parents[2]


def _test_faults() -> Any:
    """test_faults.py's conclude/wait helpers (a sibling module, loaded by path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("rel_test_faults",
                                                  Path(__file__).with_name("test_faults.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


faults = _test_faults()


def alert_problems(mw: MetricsWatch, dependency: str) -> list[str]:
    """The alert fired, the worker paused and said not-ready, and all of it cleared."""
    problems = []
    if mw.peak.get(f"{dependency}_down") != 1:
        problems.append(f"alert binaudit_dependency_down{{{dependency}}} never seen at 1 "
                        f"({mw.scrapes} scrapes)")
    if mw.last.get(f"{dependency}_down") != 0:
        problems.append(f"alert still {mw.last.get(f'{dependency}_down')} after recovery")
    if mw.peak.get("paused") != 1:
        problems.append("binaudit_paused never seen at 1 during the fault")
    if not mw.not_ready_seen:
        problems.append("/readyz never said not ready during the fault")
    return problems


def alert_extra(mw: MetricsWatch, dependency: str, log: str) -> dict[str, str]:
    return {"alert metric binaudit_dependency_down (peak / at the end)":
            f"{mw.peak.get(f'{dependency}_down')} / {mw.last.get(f'{dependency}_down')}",
            "binaudit_paused seen at 1": str(mw.peak.get("paused") == 1),
            f"{dependency} retries (binaudit_infra_retries_total)":
            str(int(mw.peak.get(f"{dependency}_retries", 0))),
            "ALERT log lines": str(log.count(f"ALERT {dependency}")),
            "metrics scrapes": str(mw.scrapes)}


# ---- S3 access revoked ----------------------------------------------------------------------

class MotoIam:
    """IAM users on the stack's moto server, and its authentication switch."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.root = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                                 aws_access_key_id="testing", aws_secret_access_key="testing")

    @staticmethod
    def policy(actions: list[str]) -> str:
        return json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": actions, "Resource": "*"}]})

    def user(self, name: str, actions: list[str]) -> dict[str, str]:
        """A user with one inline policy ``allow``; returns its access key."""
        self.root.create_user(UserName=name)
        self.root.put_user_policy(UserName=name, PolicyName="allow",
                                  PolicyDocument=self.policy(actions))
        key = self.root.create_access_key(UserName=name)["AccessKey"]
        return {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}

    @contextmanager
    def authentication(self) -> Iterator[None]:
        """moto checks every request's signature and IAM policy inside the block."""
        requests.post(f"{self.endpoint}/moto-api/reset-auth", data="0", timeout=10)
        try:
            yield
        finally:
            requests.post(f"{self.endpoint}/moto-api/reset-auth", data="inf", timeout=10)


def test_s3_access_revoked_then_restored(harness: Any, stack: Any, sample_dir: Path,
                                         scenario_log: Any, offset_watch: Any,
                                         waiter: Any) -> None:
    h = harness
    topic = h.topic()
    group = f"g-{topic}"
    pub = h.publish(topic, sample_dir, 250)  # objects uploaded before authentication is on
    iam = MotoIam(stack.s3.endpoint_url)
    tag = uuid.uuid4().hex[:8]
    worker_user = f"binaudit-worker-{tag}"
    worker_key = iam.user(worker_user, ["s3:GetObject", "s3:ListBucket"])
    admin_key = iam.user(f"rel-admin-{tag}", ["*"])
    admin = boto3.client("iam", endpoint_url=stack.s3.endpoint_url, region_name="us-east-1",
                         aws_access_key_id=admin_key["access_key_id"],
                         aws_secret_access_key=admin_key["secret_access_key"])
    with iam.authentication(), offset_watch(topic, group) as watch:
        wp = h.worker("s3-denied", topic=topic, group=group, s3=worker_key, **STRETCH)
        with MetricsWatch(wp) as mw:
            waiter(lambda: h.written(topic) >= 40, 180, "the first rows", workers=(wp,))
            admin.delete_user_policy(UserName=worker_user, PolicyName="allow")
            revoked, at_revoke = time.time(), h.written(topic)
            waiter(lambda: mw.last.get("s3_down") == 1, 60, "the s3 alert", workers=(wp,))
            time.sleep(10)
            at_restore = h.written(topic)
            assert wp.alive(), f"the worker died without S3 access:\n{wp.log()[-3000:]}"
            admin.put_user_policy(UserName=worker_user, PolicyName="allow",
                                  PolicyDocument=MotoIam.policy(["s3:GetObject",
                                                                 "s3:ListBucket"]))
            back = time.time()
            recovery = faults.wait_recovered(h, waiter, topic, back, (wp,))
            mw.wait_for("s3_down", 0, 60)
            codes = faults.drain_all(h, waiter, topic, pub.published, (wp,))
    log = wp.log()
    faults.conclude(
        scenario_log, h, name="S3 access revoked (IAM policy deleted) and restored", topic=topic,
        pub=pub, watch=watch, recovery_s=recovery, exit_codes=codes,
        recovered_by="by itself: AccessDenied is an infrastructure fault: partitions paused, "
                     "fetches retried with backoff, alert raised; cleared by the first GET "
                     "that succeeds",
        problems=alert_problems(mw, "s3") + ([] if "AccessDenied" in log else
                                              ["no AccessDenied in the worker's log"]),
        notes="moto's IAM authentication is switched on (`POST /moto-api/reset-auth`) for the "
              "whole scenario; the worker signs with its own IAM user's key (inline policy "
              "s3:GetObject + s3:ListBucket). Mid-stream an admin user deletes that policy, "
              "so every GET answers 403 AccessDenied, and puts it back 10 s after the alert.",
        extra={"outage (policy deleted → put back), s": f"{back - revoked:.1f}",
               "rows written while access was revoked (already fetched before)":
                   str(at_restore - at_revoke),
               **alert_extra(mw, "s3", log)})


# ---- the bucket deleted and recreated -------------------------------------------------------

def delete_bucket(client: Any, bucket: str) -> int:
    """Empty and delete ``bucket``; returns how many objects it held."""
    deleted = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
            deleted += len(keys)
    client.delete_bucket(Bucket=bucket)
    return deleted


def test_bucket_deleted_and_recreated(harness: Any, stack_s3: Any, gated_s3: Any,
                                      sample_dir: Path, scenario_log: Any, offset_watch: Any,
                                      waiter: Any) -> None:
    h = harness
    topic = h.topic()
    group = f"g-{topic}"
    pub = h.publish(topic, sample_dir, 250)
    with offset_watch(topic, group) as watch:
        wp = h.worker("bucket-gone", topic=topic, group=group,
                      s3_endpoint=f"http://127.0.0.1:{gated_s3.port}", **STRETCH)
        with MetricsWatch(wp) as mw:
            waiter(lambda: h.written(topic) >= 40, 180, "the first rows", workers=(wp,))
            gated_s3.close_gate()  # so that no GET sees a half-emptied bucket (NoSuchKey)
            try:
                objects = delete_bucket(stack_s3, h.settings.s3.bucket)
            finally:
                gated_s3.open_gate()
            deleted = time.time()
            waiter(lambda: mw.last.get("s3_down") == 1, 60, "the s3 alert", workers=(wp,))
            time.sleep(8)
            assert wp.alive(), f"the worker died with its bucket:\n{wp.log()[-3000:]}"
            gated_s3.close_gate()  # and none sees a half-refilled one
            try:
                reseeded = reseed_images(h.settings, sample_dir)
            finally:
                gated_s3.open_gate()
            back = time.time()
            recovery = faults.wait_recovered(h, waiter, topic, back, (wp,))
            mw.wait_for("s3_down", 0, 60)
            codes = faults.drain_all(h, waiter, topic, pub.published, (wp,))
    log = wp.log()
    faults.conclude(
        scenario_log, h, name="bucket deleted and recreated", topic=topic, pub=pub,
        watch=watch, recovery_s=recovery, exit_codes=codes,
        recovered_by="by itself: NoSuchBucket is an infrastructure fault (paused, retried, "
                     "alert), not a missing object",
        problems=alert_problems(mw, "s3") + ([] if "NoSuchBucket" in log else
                                              ["no NoSuchBucket in the worker's log"]),
        notes="The bucket is emptied and deleted, and later recreated and refilled through the "
              "publisher's upload path, each behind the TCP gate of the S3 scenario above, so "
              "the worker sees only whole states: the bucket there, or gone (`NoSuchBucket`).",
        extra={"bucket gone (as the worker saw it), s": f"{back - deleted:.1f}",
               "objects deleted / re-uploaded": f"{objects} / {reseeded}",
               **alert_extra(mw, "s3", log)})


# ---- the model raising for 30 s -------------------------------------------------------------

def test_model_raising_for_30_s(harness: Any, sample_dir: Path, scenario_log: Any,
                                offset_watch: Any, waiter: Any) -> None:
    h = harness
    topic = h.topic()
    group = f"g-{topic}"
    pub = h.publish(topic, sample_dir, 250)
    flag = h.log_dir / "model-fault.flag"
    with offset_watch(topic, group) as watch:
        wp = h.worker("model-fault", topic=topic, group=group, model_fault_flag=flag, **STRETCH)
        with MetricsWatch(wp) as mw:
            waiter(lambda: h.written(topic) >= 40, 180, "the first rows", workers=(wp,))
            flag.touch()
            started = time.time()
            waiter(lambda: mw.last.get("model_down") == 1, 60, "the model alert",
                   workers=(wp,))
            time.sleep(max(0.0, 30 - (time.time() - started)))
            assert wp.alive(), f"the worker died with its model:\n{wp.log()[-3000:]}"
            flag.unlink()
            back = time.time()
            recovery = faults.wait_recovered(h, waiter, topic, back, (wp,))
            mw.wait_for("model_down", 0, 60)
            codes = faults.drain_all(h, waiter, topic, pub.published, (wp,))
    log = wp.log()
    faults.conclude(
        scenario_log, h, name="model inference raising for 30 s", topic=topic, pub=pub,
        watch=watch, recovery_s=recovery, exit_codes=codes,
        recovered_by="by itself: the batch is retried with backoff (never a dead letter), "
                     "partitions paused, alert raised",
        problems=alert_problems(mw, "model"),
        notes="`inference.model_fault_flag` (a test hook): while the file exists every forward "
              "pass raises RuntimeError, as CUDA out of memory or a broken artifact would.",
        extra={"fault (flag created → removed), s": f"{back - started:.1f}",
               "failed batch attempts logged": str(log.count("inference failed")),
               **alert_extra(mw, "model", log)})


# ---- dead letters of S3's making, re-driven -------------------------------------------------

def redrive_cli(h: Any, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BINAUDIT_")}
    env.update({"BINAUDIT_DB__URL": h.settings.db.url.get_secret_value(),
                "BINAUDIT_KAFKA__BOOTSTRAP_SERVERS": h.settings.kafka.bootstrap_servers,
                "BINAUDIT_ENVIRONMENT": "test", "COLUMNS": "200"})
    done = subprocess.run([sys.executable, "-m", "binaudit", "dlq", "redrive", *args], env=env,
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_poison_and_missing_objects_dead_lettered_then_redriven(
        harness: Any, stack: Any, stack_s3: Any, sample_dir: Path, scenario_log: Any,
        offset_watch: Any, waiter: Any) -> None:
    h = harness
    topic = h.topic()
    group = f"g-{topic}"
    count = 120
    pub = h.publish(topic, sample_dir, count)
    samples = load_samples(sample_dir)[:count]  # event i shows sample i (no shuffle)
    poison, missing = samples[10], samples[20:23]
    for s in missing:
        stack_s3.delete_object(Bucket=h.settings.s3.bucket, Key=image_key(s.id))
    proxy = FaultProxy(stack.services.s3_port)
    proxy.poisoned.add(image_key(poison.id))
    problems: list[str] = []
    try:
        with offset_watch(topic, group) as watch:
            wp = h.worker("poison", topic=topic, group=group,
                          s3_endpoint=f"http://127.0.0.1:{proxy.port}",
                          s3={"max_attempts": 2, "fetch_attempts": 3}, **STRETCH)
            waiter(lambda: h.written(topic) >= count, 300, f"{count} rows", workers=(wp,))
            kinds = {r.error_kind: r.n for r in h.rows(
                "SELECT error_kind, count(*) AS n FROM dead_letters WHERE topic=:t GROUP BY 1",
                t=topic)}
            if kinds != {"fetch_failed": 1, "missing_object": 3}:
                problems.append(f"dead letters by kind {kinds}")
            waiter(lambda: sum(h.committed(group).values()) == count, 60,
                   "every partition committed to its end (past the poison event)",
                   workers=(wp,))
            failed_gets = proxy.failed_gets
            # The fix: the store serves the key again, the deleted objects are restored.
            proxy.poisoned.clear()
            for s in missing:
                assert s.image_path is not None
                stack_s3.put_object(Bucket=h.settings.s3.bucket, Key=image_key(s.id),
                                    Body=s.image_path.read_bytes())
            dry = redrive_cli(h, "--source-topic", topic, "--dry-run")
            redriven = time.time()
            first = redrive_cli(h, "--source-topic", topic)
            waiter(lambda: h.verdicts(topic) >= count, 120, "verdicts for the re-driven events",
                   workers=(wp,))
            recovery = h.first_row_after(topic, redriven)
            second = redrive_cli(h, "--source-topic", topic)
            codes = faults.drain_all(h, waiter, topic, count + 4, (wp,))
    finally:
        proxy.stop()
    audit = h.audit(topic, pub.event_ids)
    marked = int(h.scalar("SELECT count(*) FROM dead_letters WHERE topic=:t AND redriven_at "
                          "IS NOT NULL", t=topic))
    if "would re-drive 4 dead letters" not in dry:
        problems.append(f"dry run: {dry!r}")
    if "re-drove 4 dead letters" not in first or "re-drove 0 dead letters" not in second:
        problems.append(f"re-drives: {first!r}, then {second!r}")
    if audit["lost"] or audit["duplicated"] or audit["unexpected"] or audit["dead_letters"] != 4:
        problems.append(f"rows: {audit}")
    if marked != 4:
        problems.append(f"{marked} dead letters marked re-driven")
    problems += [f"offset watch: {v}" for v in watch.violations[:5]]
    if any(codes):
        problems.append(f"worker exit codes {codes}")
    scenario_log.add(
        name="1 key failing with an unclassified 500 + 3 objects deleted, then `dlq redrive`",
        sent=pub.published, good=pub.valid, rows=audit["rows"], lost=audit["lost"],
        duplicated=audit["duplicated"], dead_letters=audit["dead_letters"],
        recovery_s=recovery, passed=not problems,
        recovered_by="one `fetch_failed` (budget: 3 rounds) + 3 `missing_object` dead letters, "
                     "every partition committed to its end; after the fix `binaudit dlq "
                     "redrive` made all 4 verdicts, a second re-drive sent nothing",
        notes="An HTTP proxy in front of moto answers 500 `InternalError` to every GET of one "
              "key (an error the worker does not classify); 3 other objects are deleted before "
              "the worker starts. The fix: the proxy serves the key again and the 3 objects "
              "are re-uploaded. Dead letters are expected here (4, each re-driven); recovery "
              "is from the first re-drive to the next row.",
        extra={"dead letters by kind": json.dumps(kinds, sort_keys=True),
               "GETs failed by the proxy (botocore retries included)": str(failed_gets),
               "dead letters marked re-driven": str(marked),
               "offset checks (ok / skipped / violations)":
                   f"{watch.checks} / {watch.failed_checks} / {len(watch.violations)}",
               "re-drive output (dry run, first, second)":
                   " | ".join(x.strip() for x in (dry, first, second))})
    assert not problems, problems
