"""Replay that scales out, the pure parts: partition selection (shards cover every partition
exactly once), the checkpoint, the report's coverage, and the Kubernetes Indexed Job that runs
N shards (strict Kubernetes 1.33 schema; its arguments are the CLI's). Offline."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate.utils as kv
import pytest
import typer
import yaml

from binaudit.cli import app
from replay.report import PartitionDone, coverage
from replay.shards import (
    PartitionProgress,
    PartitionSelection,
    format_partitions,
    parse_partitions,
    parse_shard,
)
from tests.conftest import REPO_ROOT

JOB = REPO_ROOT / "deploy" / "k8s" / "replay-job.yaml"
SERVICE_ACCOUNTS = REPO_ROOT / "deploy" / "k8s" / "base" / "serviceaccounts.yaml"


@pytest.mark.parametrize(("spec", "expected"), [
    ("3", {3}), ("0-5", set(range(6))), ("0-2, 7,9-10", {0, 1, 2, 7, 9, 10}), ("4-4", {4}),
])
def test_parse_partitions(spec: str, expected: set[int]) -> None:
    assert parse_partitions(spec) == expected
    assert parse_partitions(format_partitions(expected)) == expected


@pytest.mark.parametrize("spec", ["", "a", "-1", "5-2", "1-", "0-x", "1,,2"])
def test_parse_partitions_refuses(spec: str) -> None:
    with pytest.raises(ValueError, match="partitions must be"):
        parse_partitions(spec)


@pytest.mark.parametrize(("spec", "expected"), [("0/1", (0, 1)), ("3/4", (3, 4)),
                                                (" 1/12 ", (1, 12))])
def test_parse_shard(spec: str, expected: tuple[int, int]) -> None:
    assert parse_shard(spec) == expected


@pytest.mark.parametrize("spec", ["1", "4/4", "-1/4", "0/0", "a/2", "1/b", "1/2/3", ""])
def test_parse_shard_refuses(spec: str) -> None:
    with pytest.raises(ValueError, match="shard must be"):
        parse_shard(spec)


@pytest.mark.parametrize("partitions", [1, 2, 3, 4, 7, 12])
@pytest.mark.parametrize("shards", [1, 2, 3, 4, 5, 12])
def test_shards_cover_every_partition_exactly_once(partitions: int, shards: int) -> None:
    taken = [p for i in range(shards)
             for p in PartitionSelection(shard=(i, shards)).select(range(partitions))]
    assert sorted(taken) == list(range(partitions))


def test_selection() -> None:
    topic = range(6)
    assert PartitionSelection().select(topic) == [0, 1, 2, 3, 4, 5]
    assert PartitionSelection(shard=(1, 4)).select(topic) == [1, 5]
    assert PartitionSelection(shard=(3, 8)).select(topic) == [3]
    assert PartitionSelection(shard=(7, 8)).select(topic) == []  # more shards than partitions
    explicit = PartitionSelection.from_cli(partitions="2-3,5")
    assert explicit.select(topic) == [2, 3, 5] and explicit.label == "partitions 2-3,5"
    with pytest.raises(ValueError, match="no partition \\[6, 7\\]"):
        PartitionSelection.from_cli(partitions="5-7").select(topic)
    with pytest.raises(ValueError, match="not both"):
        PartitionSelection.from_cli(partitions="1", shard="0/2")
    assert PartitionSelection.from_cli(shard="1/4").label == "shard 1/4"


def test_checkpoint_is_the_lowest_offset_without_a_row() -> None:
    progress = PartitionProgress()
    for offset in (10, 11, 12):
        progress.taken(0, offset)
    progress.passed(0, 13)  # outside the time window: needs no row
    progress.taken(1, 5)
    assert progress.checkpoints() == {0: 10, 1: 5}
    # Rows finish out of order: 11 and 12 written, 10 still in flight.
    assert progress.written([(0, 11), (0, 12)]) == {0: 10, 1: 5}
    assert progress.written([(0, 10)]) == {0: 14, 1: 5}
    progress.passed(1, 6)
    assert progress.written([(1, 5)]) == {0: 14, 1: 7}


def _done(p: int, start: int, stop: int, next_offset: int, finished: bool) -> PartitionDone:
    return PartitionDone(p, start, stop, next_offset, finished)


def test_coverage() -> None:
    full = coverage([0, 1, 2], [_done(0, 0, 5, 5, True), _done(1, 3, 3, 3, True),
                                _done(2, 0, 9, 9, True)])
    assert full == {"complete": True, "partitions": 3, "finished": [0, 1, 2], "unfinished": {},
                    "not_started": []}
    partial = coverage([0, 1, 2, 3], [_done(0, 0, 5, 5, True), _done(2, 4, 10, 6, False)])
    assert not partial["complete"]
    assert partial["unfinished"] == {"2": {"next_offset": 6, "stop_offset": 10,
                                           "records_left": 4}}
    assert partial["not_started"] == [1, 3] and partial["finished"] == [0]


# ---- the Kubernetes Job ---------------------------------------------------------------------

def _job() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(JOB.read_text()) if d]
    assert len(docs) == 1
    return docs[0]


def _expand(arg: str, env: dict[str, str]) -> str:
    for name, value in env.items():
        arg = arg.replace(f"$({name})", value)
    return arg


def test_replay_job_is_a_valid_indexed_job() -> None:
    job = _job()
    kv.validate(job, "1.33.0", strict=True)
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    shards = spec["completions"]
    assert spec["parallelism"] == shards >= 2
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[0] == "replay"
    assert args[args.index("--shard") + 1] == f"$(JOB_COMPLETION_INDEX)/{shards}"
    assert args[args.index("--run-id") + 1] == "$(RUN_ID)"
    env = {e["name"]: e for e in container["env"]}
    assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']")
    # Every $(VAR) in the arguments is declared, so Kubernetes expands it.
    for arg in args:
        for name in re.findall(r"\$\((\w+)\)", arg):
            assert name in env, name
    # Secrets only from Secrets; the worker's IRSA identity; non-root, read-only, no caps.
    assert set(env["BINAUDIT_DB__URL"]["valueFrom"]) == {"secretKeyRef"}
    accounts = {d["metadata"]["name"]: d for d in yaml.safe_load_all(SERVICE_ACCOUNTS.read_text())}
    assert pod["serviceAccountName"] in accounts
    assert "eks.amazonaws.com/role-arn" in accounts[pod["serviceAccountName"]]["metadata"][
        "annotations"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["restartPolicy"] == "Never" and spec["backoffLimitPerIndex"] >= 1


@pytest.mark.parametrize("index", [0, 3])
def test_replay_job_arguments_parse_as_the_cli(index: int) -> None:
    """The pod's arguments, expanded for one index, are options `binaudit replay` has,
    and its shard is a valid one of the Job's count."""
    job = _job()
    container = job["spec"]["template"]["spec"]["containers"][0]
    values = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    args = [_expand(a, {**values, "JOB_COMPLETION_INDEX": str(index)}) for a in container["args"]]
    replay = typer.main.get_group(app).commands["replay"]
    with replay.make_context("replay", args[1:]) as ctx:
        params = ctx.params
    assert parse_shard(params["shard"]) == (index, job["spec"]["completions"])
    assert params["run_id"] == values["RUN_ID"]
    assert Path(params["model"]) == Path(values["REPLAY_MODEL"])

