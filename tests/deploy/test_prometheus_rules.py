"""deploy/: the alert rules pass `promtool check`/`promtool test rules`, the dashboard's queries
parse, and every metric that a rule or a panel names is exported by a live worker or serve."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from core.settings import Settings
from robots.publisher import EventPlan, PublishOptions, publish
from serve.app import ServeMetrics
from serve.server import ModelServer
from tests.serve.harness import ServerThread
from worker.metrics import WorkerMetrics

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO_ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "binaudit-rules.yml"
RULE_TESTS = PROMETHEUS / "binaudit-rules.test.yml"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "binaudit-dashboard.json"

# Series that no binaudit process exports, with why they may still be queried.
NOT_EXPORTED = {"up": "Prometheus writes it for every scrape target"}
# Grafana's variables, replaced by what a default install would send to Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$serve_job": "binaudit-serve",
                     "$job": "binaudit-worker"}

_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "and",
                       "or", "unless", "bool", "offset", "inf", "nan", "atan2"})
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
# An identifier that is not a function call and not part of a number or a duration.
_IDENTIFIER = re.compile(r"(?<![\w.$])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()")
_TYPE_LINE = re.compile(r"^# TYPE (\S+) (\S+)$")
_WORKER_PORT = re.compile(r"metrics and health on :(\d+)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: what is left once strings, label lists,
    label matchers, ranges, function calls and keywords are taken out."""
    for pattern in (_STRINGS, _GROUPING, _MATCHERS, _RANGES):
        expr = pattern.sub(" ", expr)
    return {m for m in _IDENTIFIER.findall(expr) if m not in _KEYWORDS}


def exported_names(exposition: str) -> set[str]:
    """The series names a /metrics page offers: every sample, and every declared family
    (a labelled family has no sample until its first label set); a histogram offers only its
    ``_bucket``/``_sum``/``_count`` series."""
    names: set[str] = set()
    for line in exposition.splitlines():
        typed = _TYPE_LINE.match(line)
        if typed and typed[2] == "histogram":
            names.update(typed[1] + s for s in ("_bucket", "_sum", "_count"))
        elif typed:
            names.add(typed[1])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def rule_exprs() -> dict[str, list[str]]:
    """Alert expressions by rule group (``binaudit-worker``, ``binaudit-serve``,
    ``binaudit-models``)."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {g["name"]: [r["expr"] for r in g["rules"]] for g in groups}


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p["targets"]]


def without_grafana_variables(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def missing(exprs: Iterable[str], exported: set[str]) -> dict[str, set[str]]:
    """Expression -> the names it reads that ``exported`` lacks (NOT_EXPORTED allowed)."""
    gaps = {e: metric_names(e) - exported - NOT_EXPORTED.keys() for e in exprs}
    return {e: names for e, names in gaps.items() if names}


def promtool() -> str:
    """promtool's path; CI must have it (scripts/system-deps.sh installs Debian's prometheus)."""
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing: run scripts/system-deps.sh")
        pytest.skip("promtool is missing (scripts/system-deps.sh installs it)")
    return path


def run_promtool(*args: str | Path) -> str:
    result = subprocess.run([promtool(), *map(str, args)], cwd=PROMETHEUS, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


# ---- promtool -------------------------------------------------------------------------------
def test_rules_and_config_pass_promtool_check() -> None:
    assert "SUCCESS" in run_promtool("check", "rules", RULES)
    assert "SUCCESS" in run_promtool("check", "config", PROMETHEUS / "prometheus.yml")


def test_rule_unit_tests_pass_promtool() -> None:
    assert "SUCCESS" in run_promtool("test", "rules", RULE_TESTS)


def test_every_alert_has_for_severity_and_a_unit_test() -> None:
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            assert "for" in rule and rule["labels"]["severity"], rule["alert"]
            assert {"summary", "description"} <= rule["annotations"].keys(), rule["alert"]
            assert rule["alert"] in tested, f"{rule['alert']} has no promtool unit test"


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Each panel query, as Grafana sends it, is valid PromQL (promtool parses recording rules)."""
    rules = [{"record": f"dashboard:query_{i}", "expr": without_grafana_variables(e)}
             for i, e in enumerate(dashboard_exprs())]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in run_promtool("check", "rules", path)


# ---- names against live scrapes ---------------------------------------------------------------
def test_metric_names_reads_names_not_labels_functions_or_durations() -> None:
    expr = ('histogram_quantile(0.99, sum by (job, le) (rate(x_bucket{route=~".*/inv",le="+Inf"}'
            '[5m] offset 1d))) > 2 * sum without (a) (y_total) and on (instance) up == 0')
    assert metric_names(expr) == {"x_bucket", "y_total", "up"}


def test_a_misspelled_name_is_reported_against_the_registries() -> None:
    """Without services: the names against the metric classes' own exposition, and a
    misspelling (one letter) is caught."""
    worker = exported_names(generate_latest(WorkerMetrics(CollectorRegistry()).registry).decode())
    serve = exported_names(generate_latest(ServeMetrics(CollectorRegistry()).registry).decode())
    groups = rule_exprs()
    assert missing(groups["binaudit-worker"], worker) == {}
    assert missing(groups["binaudit-serve"], serve) == {}
    assert missing(groups["binaudit-models"], worker & serve) == {}
    assert missing(map(without_grafana_variables, dashboard_exprs()), worker | serve) == {}
    typo = groups["binaudit-worker"][0].replace("binaudit_consumer_committed_lag",
                                                "binaudit_consumer_commited_lag")
    assert missing([typo], worker) == {typo: {"binaudit_consumer_commited_lag"}}
    # A histogram is queried through its series, never by its bare name.
    assert missing(["rate(binaudit_stage_seconds[5m])"], worker)


@pytest.fixture
def worker_scrape(settings_factory: Callable[..., Settings], topic_factory: Callable[..., str],
                  model_artifact: Path, sample_dir: Path,
                  worker_process_factory: Callable[..., Any],
                  wait_for: Callable[..., None]) -> str:
    """/metrics of a real `binaudit worker` child once it has judged a few events and dead-
    lettered a few bad records (so the labelled counters have samples)."""
    topic = topic_factory(partitions=2)
    settings = settings_factory(kafka={"topic": topic})
    report = publish(settings, PublishOptions(
        source=sample_dir, topic=topic, plan=EventPlan(bucket=settings.s3.bucket, count=12),
        faults=("malformed_json",), fault_rate=0.5, create_topic=False, progress=False))
    assert report.faults, "the seeded fault draw gave no bad record"
    wp = worker_process_factory(
        "metrics", kafka={"topic": topic, "group_id": f"g-{topic}"},
        inference={"model": model_artifact, "device": "cpu", "max_batch_size": 4,
                   "match_min_p": 0.0, "mismatch_min_score": 0.0})
    wait_for(lambda: _WORKER_PORT.search(wp.log()) is not None, 120, "the metrics port")
    match = _WORKER_PORT.search(wp.log())
    assert match is not None
    url = f"http://127.0.0.1:{match[1]}/metrics"

    def judged_all() -> bool:
        page = requests.get(url, timeout=5).text
        done = sum(float(v) for v in re.findall(r"^binaudit_events_total\{[^}]*\} (\S+)$",
                                                  page, re.MULTILINE))
        return done >= report.published

    wait_for(judged_all, 180, f"{report.published} events counted")
    return requests.get(url, timeout=5).text


@pytest.fixture
def serve_scrape(settings_factory: Callable[..., Settings],
                 model_artifact: Path) -> Iterator[str]:
    """/metrics of a real ModelServer on a socket, after a /ping and an invocation (pinned:
    the scrape is about names, not about what the registry of the default topic holds)."""
    settings = settings_factory(inference={"model": str(model_artifact), "device": "cpu",
                                           "follow_registry": False})
    with ServerThread(ModelServer(settings)) as server:
        server.wait_ready()
        server.invoke(b"not an image")
        yield server.metrics()


@pytest.mark.services
def test_every_rule_and_panel_metric_is_exported(worker_scrape: str, serve_scrape: str) -> None:
    worker, serve = exported_names(worker_scrape), exported_names(serve_scrape)
    assert {"binaudit_events_total", "binaudit_dead_letters_total"} <= worker
    assert re.search(r'^binaudit_dead_letters_total\{kind="invalid_json"\} [1-9]',
                     worker_scrape, re.MULTILINE), "no dead-letter sample in the scrape"
    for scrape in (worker_scrape, serve_scrape):  # the running version, as the panel shows it
        assert re.search(r'^binaudit_model_info\{[^}]*role="production"[^}]*\} 1', scrape,
                         re.MULTILINE), "no binaudit_model_info sample"
    groups = rule_exprs()
    assert set(groups) == {"binaudit-worker", "binaudit-serve", "binaudit-models"}
    assert missing(groups["binaudit-worker"], worker) == {}
    assert missing(groups["binaudit-serve"], serve) == {}
    # Model lifecycle alerts cover workers and serve alike: both must export their series.
    assert missing(groups["binaudit-models"], worker & serve) == {}
    assert missing(map(without_grafana_variables, dashboard_exprs()), worker | serve) == {}
