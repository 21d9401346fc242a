"""The alert rules end to end: a real Prometheus server scrapes a running worker on the dedicated
stack, Postgres is stopped while events keep arriving, ``BinauditNoCommitWhileLagging`` fires,
and it resolves once Postgres is back. Nothing is lost or duplicated, and the alerts that a
Postgres outage must not raise (worker down, dependency down, dead letters, ...) never fire.

The rules are the project's own ``deploy/prometheus/binaudit-rules.yml`` with time compressed
by :data:`TIME_SCALE`: every duration (``for:``, range windows, offsets) is divided by it, and
nothing else changes (``compression_problems`` checks that, and a fast test below runs it
without services). At 30 the no-commit alert (10 min window, ``for: 10m``) fires about 40 s
after the last commit, and ``BinauditWorkerDown`` (``for: 2m`` → 4 s, four scrapes) still
needs more than a slow scrape or two of a busy 2-core machine to fire.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
import yaml

from robots.publisher import EventPlan, PublishOptions, publish
from tests.reliability import test_faults as faults
from tests.reliability.probes import metrics_port

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy" / "prometheus"
RULES, CONFIG = DEPLOY / "binaudit-rules.yml", DEPLOY / "prometheus.yml"
WORKER_JOB = "binaudit-worker"
TIME_SCALE = 30  # one production minute is two test seconds
SCRAPE_S = 1  # scrape and evaluation interval of the test server
NO_COMMIT = "BinauditNoCommitWhileLagging"
# Alerts that may fire here, and why; every other alert of the rule file must not.
MAY_FIRE = {
    NO_COMMIT: "the alert under test",
    "BinauditDependencyRetrying": "how a Postgres outage pages (asserted to fire below)",
    "BinauditConsumerLagGrowing": "the backlog does grow while Postgres is down",
    "BinauditMismatchRateSpike": "judges the model's verdict mix, which an untrained model "
                                 "on a repeated sample makes noise, not this fault",
}
# Capture times of this test's stream. Harness.publish gives each call a 30-day slot from
# conftest's EPOCH (2020) on; a stream of many small publishes would walk those slots into
# the future (refused by the broker), so the stream has its own year before EPOCH, one
# second per event: event ids derive from (bin, captured_at), so none repeats.
STREAM_EPOCH = datetime(2019, 1, 1, tzinfo=UTC)


# ---- time compression of the rule file (pure) ------------------------------------------------

_DURATION = r"(?:\d+(?:ms|[smhdwy]))+"
_DURATION_RE = re.compile(_DURATION)
_DURATION_PART = re.compile(r"(\d+)(ms|[smhdwy])")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
            "w": 7 * 86_400_000, "y": 365 * 86_400_000}
# In PromQL, durations stand in range selectors and subqueries (`[10m]`, `[5m:1m]`) and after
# `offset`; string literals (label matchers) are matched first so that they are left alone.
_EXPR_DURATIONS = re.compile(
    r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`'
    r"|\[(?P<range>[^\]]*)\]"
    rf"|(?P<offset>\boffset\s+-?)(?P<by>{_DURATION})")


def duration_ms(text: str) -> int:
    """A Prometheus duration (``1h30m``, ``0m``, ``500ms``) in milliseconds."""
    if not re.fullmatch(_DURATION, text):
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _UNIT_MS[unit] for n, unit in _DURATION_PART.findall(text))


def format_ms(ms: int) -> str:
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def scale_duration(text: str, scale: int = TIME_SCALE) -> str:
    """``text`` divided by ``scale``, rounded to the millisecond (``10m`` / 30 → ``20s``)."""
    return format_ms(round(duration_ms(text) / scale))


def map_durations(expr: str, fn: Callable[[str], str]) -> str:
    """``expr`` with every duration token replaced by ``fn(token)``."""
    def one(m: re.Match[str]) -> str:
        if m["range"] is not None:
            return "[" + _DURATION_RE.sub(lambda d: fn(d[0]), m["range"]) + "]"
        if m["offset"] is not None:
            return m["offset"] + fn(m["by"])
        return m[0]  # a string literal

    return _EXPR_DURATIONS.sub(one, expr)


def expr_durations(expr: str) -> list[str]:
    """The duration tokens of ``expr``, in order."""
    found: list[str] = []

    def keep(token: str) -> str:
        found.append(token)
        return token

    map_durations(expr, keep)
    return found


def compressed_rules(rules: dict[str, Any], scale: int = TIME_SCALE) -> dict[str, Any]:
    """The rule file with time compressed: every ``for:``/``keep_firing_for:``, every range
    window and offset in ``expr``, and a group's ``interval`` divided by ``scale``."""
    out = copy.deepcopy(rules)
    for group in out["groups"]:
        if "interval" in group:
            group["interval"] = scale_duration(str(group["interval"]), scale)
        for rule in group["rules"]:
            rule["expr"] = map_durations(rule["expr"], lambda d: scale_duration(d, scale))
            for key in ("for", "keep_firing_for"):
                if key in rule:
                    rule[key] = scale_duration(str(rule[key]), scale)
    return out


def compression_problems(original: dict[str, Any], compressed: dict[str, Any],
                         scale: int = TIME_SCALE) -> list[str]:
    """What differs between the two rule files beyond durations divided by ``scale`` (same
    groups, alert names, expressions, labels and annotations), and windows too short to hold
    four scrapes of the test server."""
    problems: list[str] = []
    groups = [(g["name"], g["rules"]) for g in original["groups"]]
    test_groups = [(g["name"], g["rules"]) for g in compressed["groups"]]
    if [n for n, _ in groups] != [n for n, _ in test_groups]:
        return [f"groups {[n for n, _ in groups]} became {[n for n, _ in test_groups]}"]
    for (name, rules), (_, test_rules) in zip(groups, test_groups, strict=True):
        names = [r.get("alert") for r in rules]
        if names != [r.get("alert") for r in test_rules]:
            problems.append(f"{name}: alerts {names} became {[r.get('alert') for r in test_rules]}")
            continue
        for rule, test in zip(rules, test_rules, strict=True):
            alert = rule["alert"]
            if map_durations(rule["expr"], lambda _: "<d>") != map_durations(test["expr"],
                                                                             lambda _: "<d>"):
                problems.append(f"{alert}: expression changed beyond durations")
            if {k: v for k, v in rule.items() if k not in ("expr", "for", "keep_firing_for")} \
                    != {k: v for k, v in test.items() if k not in ("expr", "for",
                                                                   "keep_firing_for")}:
                problems.append(f"{alert}: labels, annotations or keys changed")
            before_all, after_all = expr_durations(rule["expr"]), expr_durations(test["expr"])
            if len(before_all) != len(after_all):
                problems.append(f"{alert}: durations {before_all} became {after_all}")
                continue
            pairs = list(zip(before_all, after_all, strict=True))
            pairs += [(str(rule[k]), str(test.get(k))) for k in ("for", "keep_firing_for")
                      if k in rule]
            for before, after in pairs:
                if abs(duration_ms(before) / scale - duration_ms(after)) > 1:
                    problems.append(f"{alert}: {before} became {after}, not {before}/{scale}")
            for window in expr_durations(test["expr"]):
                if 0 < duration_ms(window) < 4 * SCRAPE_S * 1000:
                    problems.append(f"{alert}: window {window} holds fewer than 4 scrapes")
    return problems


def test_time_compression_keeps_alerts_and_expressions() -> None:
    """No services: the transformation itself, on the real rule file and on edge cases."""
    assert scale_duration("10m") == "20s" and scale_duration("1d") == "2880s"
    assert scale_duration("0m") == "0s" and scale_duration("1h30m") == "180s"
    # Ranges, subquery steps and offsets change; a string literal that looks like one does not.
    expr = 'rate(x{a=~"[5m]"}[5m:1m] offset 30m) > 2'
    assert map_durations(expr, scale_duration) == 'rate(x{a=~"[5m]"}[10s:2s] offset 60s) > 2'
    assert map_durations("binaudit_offset_commits_total > 0", lambda _: "<d>") == \
        "binaudit_offset_commits_total > 0"
    original = yaml.safe_load(RULES.read_text())
    compressed = compressed_rules(original)
    assert compression_problems(original, compressed) == []
    rule = next(r for g in compressed["groups"] for r in g["rules"] if r["alert"] == NO_COMMIT)
    assert rule["for"] == "20s" and "[20s]" in rule["expr"]
    # The check catches a changed expression.
    broken = copy.deepcopy(compressed)
    broken["groups"][0]["rules"][0]["expr"] += " > 1"
    assert compression_problems(original, broken)


# ---- a real Prometheus server ----------------------------------------------------------------

@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    """The server binary; a missing one fails (CI counts a skip as a failure), before the
    stack is started."""
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if found is None:
        pytest.fail("the `prometheus` server binary is missing: run scripts/system-deps.sh "
                    "(Debian package `prometheus`)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    """One ``prometheus`` process in ``folder``, scraping a worker with the compressed rules;
    its HTTP API through small helpers. :meth:`stop` is the fixture's teardown."""

    def __init__(self, binary: str, folder: Path, log_path: Path) -> None:
        self.binary, self.folder, self.log_path = binary, folder, log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.started = 0.0

    def start(self, target: str) -> None:
        self.folder.mkdir(parents=True)
        rules = self.folder / "binaudit-rules.compressed.yml"
        rules.write_text(yaml.safe_dump(compressed_rules(yaml.safe_load(RULES.read_text())),
                                        sort_keys=False))
        config = yaml.safe_load(CONFIG.read_text())  # the deployed jobs, with test settings
        interval = f"{SCRAPE_S}s"
        config["global"] = {"scrape_interval": interval, "scrape_timeout": interval,
                            "evaluation_interval": interval}
        config["rule_files"] = [str(rules)]
        jobs = [j for j in config["scrape_configs"] if j["job_name"] == WORKER_JOB]
        assert jobs, f"{CONFIG} has no {WORKER_JOB} job"
        jobs[0]["static_configs"] = [{"targets": [target]}]
        config["scrape_configs"] = jobs[:1]
        (self.folder / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT, cwd=self.folder)
        self.started = time.time()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"prometheus exited ({self.proc.returncode}):\n"
                                     f"{self.log()[-3000:]}")
            try:
                if requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise AssertionError(f"prometheus not ready in 60 s:\n{self.log()[-3000:]}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        body = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=5).json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=promql)["result"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])

    def active(self, name: str, state: str | None = None) -> list[dict[str, Any]]:
        """Alerts ``name`` pending or firing (or only in ``state``); [] when unreachable."""
        try:
            found = self.alerts()
        except (requests.RequestException, ValueError):
            return []
        return [a for a in found if a["labels"].get("alertname") == name
                and (state is None or a["state"] == state)]

    def fired(self) -> list[dict[str, str]]:
        """Label sets of every alert that was firing at any evaluation since the start."""
        window = int(time.time() - self.started) + 60
        return [s["metric"] for s in self.query(f'max_over_time(ALERTS{{alertstate="firing"}}'
                                                f"[{window}s])")]

    def diagnostics(self) -> str:
        try:
            alerts = json.dumps(self.alerts(), indent=1)
        except (requests.RequestException, ValueError) as exc:
            alerts = f"(unreachable: {exc})"
        return (f"--- prometheus /api/v1/alerts:\n{alerts[-4000:]}\n"
                f"--- prometheus log tail:\n{self.log()[-1500:]}")

    def stop(self) -> None:
        if self.proc is None or not self.alive():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)


@pytest.fixture
def prometheus(prometheus_bin: str, rel_root: Path, harness: Any) -> Iterator[Prometheus]:
    """A ``Prometheus`` (started by the test, once the worker's port is known), stopped at
    teardown. Its folder is in the session's root, not pytest's tmp_path (see conftest)."""
    server = Prometheus(prometheus_bin, rel_root / f"prometheus-{uuid.uuid4().hex[:8]}",
                        harness.log_dir / "prometheus.log")
    try:
        yield server
    finally:
        server.stop()


# ---- a steady stream of events ---------------------------------------------------------------

class Feeder:
    """Publishes ``chunk`` sample events every ``every_s`` seconds until stopped, as
    ``Harness.publish`` does but with the capture times of :data:`STREAM_EPOCH`."""

    def __init__(self, h: Any, topic: str, sample_dir: Path, *, chunk: int = 10,
                 every_s: float = 2.0) -> None:
        self.h, self.topic, self.sample_dir = h, topic, sample_dir
        self.chunk, self.every_s = chunk, every_s
        self.reports: list[Any] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def __enter__(self) -> Feeder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> SimpleNamespace:
        """Stop, and return everything published (``published``, ``valid``, ``event_ids``)."""
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the feeder did not stop"
        if self.error is not None:
            raise AssertionError(f"publishing failed: {self.error!r}") from self.error
        return SimpleNamespace(published=sum(r.published for r in self.reports),
                               valid=sum(r.valid for r in self.reports),
                               event_ids=[e for r in self.reports for e in r.event_ids])

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += self.every_s
            start = STREAM_EPOCH + timedelta(seconds=len(self.reports) * self.chunk)
            plan = EventPlan(bucket=self.h.settings.s3.bucket, count=self.chunk,
                             start_time=start, interval_s=1.0)
            try:
                self.reports.append(publish(self.h.settings, PublishOptions(
                    source=self.sample_dir, topic=self.topic, plan=plan, create_topic=False,
                    progress=False)))
            except Exception as exc:  # noqa: BLE001 - reported by stop() in the test's thread
                self.error = exc
                return


# ---- the scenario ----------------------------------------------------------------------------

def wait_prom(prom: Prometheus, wp: Any, predicate: Callable[[], bool], timeout: float,
              what: str) -> float:
    """Poll ``predicate`` every 0.5 s; returns the seconds it took. Fails after ``timeout``
    (or at once if the worker or Prometheus died) with /api/v1/alerts and both log tails."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        if not wp.alive() or not prom.alive():
            who = "the worker" if not wp.alive() else "prometheus"
            raise AssertionError(f"{who} exited while waiting for {what}\n{prom.diagnostics()}"
                                 f"\n--- worker log tail:\n{wp.log()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n"
                         f"{prom.diagnostics()}\n--- worker log tail:\n{wp.log()[-3000:]}")


@pytest.mark.reliability
@pytest.mark.services
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_no_commit_alert_fires_on_postgres_outage_and_resolves(
        prometheus_bin: str, prometheus: Prometheus, harness: Any, supervisor: Any,
        sample_dir: Path, scenario_log: Any, offset_watch: Any, waiter: Any) -> None:
    h, prom = harness, prometheus
    topic = h.topic()
    group = f"g-{topic}"
    alert_names = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"]
                   for r in g["rules"]}
    must_not_fire = alert_names - MAY_FIRE.keys()
    assert MAY_FIRE.keys() <= alert_names, "MAY_FIRE names an alert the rules do not have"
    with Feeder(h, topic, sample_dir) as feeder, offset_watch(topic, group) as watch:
        wp = h.worker("alerts-e2e", topic=topic, group=group)
        waiter(lambda: metrics_port(wp.log()) is not None, 180, "the metrics port",
               workers=(wp,))
        target = f"127.0.0.1:{metrics_port(wp.log())}"
        prom.start(target)
        loaded = {r["name"]: r for g in prom.api("rules")["groups"] for r in g["rules"]}
        assert loaded.keys() == alert_names, f"rules loaded: {sorted(loaded)}"
        assert loaded[NO_COMMIT]["duration"] == 600 / TIME_SCALE, loaded[NO_COMMIT]

        # Steady state: scraped, committing, the lag series present, the alert inactive.
        def steady() -> bool:
            try:
                return bool(prom.query(f'up{{job="{WORKER_JOB}"}} == 1')
                            and prom.query("binaudit_offset_commits_total > 0")
                            and prom.query("binaudit_consumer_committed_lag")
                            and not prom.active(NO_COMMIT))
            except (requests.RequestException, ValueError):
                return False

        wait_prom(prom, wp, steady, 120, "a scraped, committing worker with no alert")
        try:
            supervisor.down(only=("postgres",))
            stopped = time.time()
            fired_s = wait_prom(prom, wp, lambda: bool(prom.active(NO_COMMIT, "firing")), 150,
                                f"{NO_COMMIT} firing after Postgres stopped")
            alert = prom.active(NO_COMMIT, "firing")[0]
            lag = prom.query("sum(binaudit_consumer_committed_lag)")
            assert wp.alive(), f"the worker died while Postgres was down:\n{wp.log()[-3000:]}"
        finally:
            supervisor.up(only=("postgres",))
        back = time.time()
        resolved_s = wait_prom(prom, wp, lambda: not prom.active(NO_COMMIT), 90,
                               f"{NO_COMMIT} resolved after Postgres came back")
        recovery = faults.wait_recovered(h, waiter, topic, back, (wp,))
        pub = feeder.stop()
        waiter(lambda: h.written(topic) >= pub.published, 180, f"{pub.published} rows",
               workers=(wp,))
        # Read before the worker stops: a stopped worker is (rightly) a worker down.
        fired = prom.fired()
        codes = [wp.stop()]
    fired_names = sorted({m["alertname"] for m in fired})
    context = f"\nfiring at some point: {fired}\n{prom.diagnostics()}"
    problems = []
    active_at = datetime.fromisoformat(alert["activeAt"].replace("Z", "+00:00")).timestamp()
    if active_at < stopped - 1:
        problems.append(f"{NO_COMMIT} was active before Postgres stopped ({alert['activeAt']})")
    if alert["labels"].get("instance") != target or alert["labels"].get("severity") != \
            "critical":
        problems.append(f"{NO_COMMIT} labels {alert['labels']}")
    if not lag or float(lag[0]["value"][1]) <= 0:
        problems.append(f"no committed lag while the alert fired: {lag}")
    if not any(m["alertname"] == "BinauditDependencyRetrying"
               and m.get("dependency") == "postgres" for m in fired):
        problems.append("BinauditDependencyRetrying{dependency=postgres} never fired")
    if wrong := sorted(set(fired_names) & must_not_fire):
        problems.append(f"alerts that a Postgres outage must not raise fired: {wrong}")
    if "postgres unavailable" not in wp.log():
        problems.append("no 'postgres unavailable' in the worker's log")
    if problems:
        problems.append(context)
    faults.conclude(
        scenario_log, h, name="Postgres stopped until the no-commit alert fired (Prometheus)",
        topic=topic, pub=pub, watch=watch, recovery_s=recovery, exit_codes=codes,
        problems=problems,
        recovered_by=f"by itself; a real Prometheus server raised {NO_COMMIT} "
                     f"{fired_s:.0f} s after the stop and resolved it {resolved_s:.1f} s "
                     "after Postgres was back",
        notes=f"The project's rule file with every duration divided by {TIME_SCALE} "
              f"(for: 10m → 20 s), scraped and evaluated every {SCRAPE_S} s; "
              f"{feeder.chunk} events every {feeder.every_s:.0f} s throughout.",
        extra={"Postgres stopped → alert firing, s": f"{fired_s:.1f}",
               "Postgres back → alert resolved, s": f"{resolved_s:.1f}",
               "committed lag when it fired": lag[0]["value"][1] if lag else "none",
               "alerts that fired": ", ".join(fired_names)})
