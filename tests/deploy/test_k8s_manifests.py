"""deploy/k8s: every overlay renders (tests/deploy/kustomize.py; compared with the real
kustomize where one is installed), every object passes the strict schema of its kind for one
Kubernetes release (kubernetes-validate's vendored schemas; the KEDA ScaledObject against its
CRD's schema, tests/deploy/schemas/), and the numbers and names agree with the code: the drain
deadline, the partitions, the settings' environment variables, the health endpoints and
ports, the secrets and identities. Offline: no cluster, no network."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any, get_args

import jsonschema
import kubernetes_validate.utils as kv
import pytest
import referencing
import yaml
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from core.settings import (
    MOVED_TO_INFERENCE,
    ConsoleSettings,
    KafkaSettings,
    ServeSettings,
    Settings,
    WorkerSettings,
)
from core.tables import CONSOLE_LOGIN_ROLE
from tests.deploy.kustomize import build
from worker.metrics import HealthServer

Obj = dict[str, Any]

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "deploy" / "k8s"
TARGETS = {"base": K8S / "base", "gpu": K8S / "overlays" / "gpu", "cpu": K8S / "overlays" / "cpu"}
OVERLAYS = ("gpu", "cpu")

# The Kubernetes release validated against (kubernetes-validate ships its strict schemas).
KUBERNETES_VERSION = "1.33.0"
KEDA_SCHEMA = Path(__file__).parent / "schemas" / "keda.sh_scaledobject_v1alpha1.json"
GOLDEN = Path(__file__).parent / "k8s-rendered"  # `kubectl kustomize TARGET` output
K8S_DEFINITIONS = "https://kubernetes.io/api/_definitions.json"
OBJECT_META = f"{K8S_DEFINITIONS}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"

# The manifests still set the model, device and inference cache under their worker-section
# names, which Settings accepts this release with a SettingsDeprecationWarning (README of
# deploy/k8s): the rendered output is pinned by k8s-rendered/, so they move next release.
pytestmark = pytest.mark.filterwarnings("ignore::core.settings.SettingsDeprecationWarning")

EXPECTED_OBJECTS = {
    ("Namespace", "binaudit"), ("ConfigMap", "binaudit-config"),
    ("ServiceAccount", "binaudit-worker"), ("ServiceAccount", "binaudit-serve"),
    ("ServiceAccount", "binaudit-console"), ("ServiceAccount", "binaudit-migrate"),
    ("Job", "binaudit-migrate"), ("CronJob", "binaudit-partitions"),
    ("Deployment", "binaudit-worker"),
    ("PodDisruptionBudget", "binaudit-worker"), ("ScaledObject", "binaudit-worker"),
    ("Deployment", "binaudit-serve"), ("Service", "binaudit-serve"),
    ("Deployment", "binaudit-console"), ("Service", "binaudit-console"),
}
# After SIGTERM the worker leaves its drain, finishes the loop's turn, leaves the consumer
# group and closes Kafka, S3 and Postgres: the grace period covers the deadline plus this.
WORKER_CLOSE_MARGIN_S = 15.0
# After serve's grace for requests in flight the pipeline drains and the process exits.
SERVE_CLOSE_MARGIN_S = 5.0
# Environment variables that are not binaudit settings and may appear in a container.
OTHER_ENV = {"HOME"}
# What a secretKeyRef stands for when the settings are built from a container's environment.
SECRET_PLACEHOLDERS = {"BINAUDIT_DB__URL": "postgresql+psycopg2://someone@db.invalid:5432/binaudit"}
SECRET_PLACEHOLDER = "placeholder-secret-value-of-forty-chars!"
# The kafka scaler's trigger metadata (KEDA v2.20.1, pkg/scalers/kafka_scaler.go): KEDA
# ignores other keys, so a misspelt `lagTreshold` would silently scale on the default 10.
KAFKA_TRIGGER_KEYS = {
    "bootstrapServers", "consumerGroup", "topic", "partitionLimitation", "lagThreshold",
    "activationLagThreshold", "offsetResetPolicy", "allowIdleConsumers", "excludePersistentLag",
    "scaleToZeroOnInvalidOffset", "limitToPartitionsWithLag",
    "ensureEvenDistributionOfPartitions", "version", "tls", "unsafeSsl", "sasl",
    "saslTokenProvider", "awsRegion",
    # read from the scale target container's environment
    "bootstrapServersFromEnv", "consumerGroupFromEnv", "topicFromEnv",
}
AWS_CREDENTIAL_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
POD_VOLUME_TYPES = {"emptyDir", "configMap", "secret", "projected", "downwardAPI"}


# ---- rendering and validation ----------------------------------------------------------------

@cache
def _rendered(target: str) -> tuple[Obj, ...]:
    return tuple(build(TARGETS[target]))


def rendered(target: str) -> list[Obj]:
    """The objects of a target (fresh copies: tests may change them)."""
    return copy.deepcopy(list(_rendered(target)))


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} objects"
    return matches[0]


def strict_crd_schema(schema: Any) -> Any:
    """A CRD's OpenAPI v3 schema as the API server applies it with strict field validation
    (kubectl's default): unknown fields of a structural object are errors, ``nullable``
    admits null."""
    if isinstance(schema, list):
        return [strict_crd_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict_crd_schema(value) for key, value in schema.items()}
    if (out.get("type") == "object" and isinstance(out.get("properties"), dict)
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if out.pop("nullable", False) is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


@cache
def _k8s_definitions() -> Any:
    return kv.schema_contents(
        f"kubernetes-json-schema/v{KUBERNETES_VERSION}-local-strict/_definitions.json",
        KUBERNETES_VERSION)


@cache
def scaledobject_validator() -> jsonschema.protocols.Validator:
    """The ScaledObject CRD's schema, strict; its metadata checked as Kubernetes' ObjectMeta."""
    raw = json.loads(KEDA_SCHEMA.read_text())
    raw.pop("$comment", None)
    schema = strict_crd_schema(raw)
    schema["properties"]["metadata"] = {"$ref": OBJECT_META}
    schema["properties"]["apiVersion"] = {"const": "keda.sh/v1alpha1"}
    schema["properties"]["kind"] = {"const": "ScaledObject"}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind",
                                 "metadata"})
    registry: referencing.Registry[Any] = referencing.Registry().with_resource(
        K8S_DEFINITIONS, referencing.Resource.from_contents(_k8s_definitions()))
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(obj: Obj) -> None:
    """Raise jsonschema.ValidationError unless ``obj`` passes its kind's strict schema."""
    if obj.get("apiVersion") == "keda.sh/v1alpha1" and obj.get("kind") == "ScaledObject":
        scaledobject_validator().validate(obj)
    else:
        kv.validate(obj, KUBERNETES_VERSION, strict=True)


def pod_templates(objects: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(workload, pod spec) of every Deployment, Job and CronJob."""
    for obj in objects:
        if obj["kind"] in {"Deployment", "Job"}:
            yield obj, obj["spec"]["template"]["spec"]
        elif obj["kind"] == "CronJob":
            yield obj, obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def containers(pod: Obj) -> list[Obj]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def all_containers(objects: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    for workload, pod in pod_templates(objects):
        for container in containers(pod):
            yield workload, container


def container_of(objects: list[Obj], deployment: str, name: str) -> Obj:
    pod = find(objects, "Deployment", deployment)["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == name)


def env_value(container: Obj, name: str) -> str | None:
    return next((e.get("value") for e in container.get("env", []) if e["name"] == name), None)


def container_environment(objects: list[Obj], container: Obj) -> dict[str, str]:
    """The container's environment as the kubelet builds it (``env`` over ``envFrom``);
    a secret stands as a placeholder."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"}, f"{container['name']}: {source}"
        env.update(find(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = item["value"]
        elif "secretKeyRef" in item.get("valueFrom", {}):
            env[name] = SECRET_PLACEHOLDERS.get(name, SECRET_PLACEHOLDER)
        else:
            ref = item["valueFrom"]["configMapKeyRef"]
            env[name] = find(objects, "ConfigMap", ref["name"])["data"][ref["key"]]
    return env


def setting_field(env_name: str) -> FieldInfo | None:
    """The Settings field an environment variable sets (prefix BINAUDIT_, ``__`` nesting),
    or None: Settings ignores unknown variables, so a misspelt name would do nothing."""
    if not env_name.startswith("BINAUDIT_"):
        return None
    model: type[BaseModel] | None = Settings
    field: FieldInfo | None = None
    parts = env_name.removeprefix("BINAUDIT_").lower().split("__")
    if len(parts) == 2 and parts[0] == "worker" and parts[1] in MOVED_TO_INFERENCE:
        parts = ["inference", MOVED_TO_INFERENCE[parts[1]]]  # a former name, still accepted
    for part in parts:
        if model is None or part not in model.model_fields:
            return None
        field = model.model_fields[part]
        annotation = field.annotation
        model = (annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel)
                 else None)
    return None if model is not None else field  # a section is not a value


def is_secret(field: FieldInfo) -> bool:
    return field.annotation is SecretStr or SecretStr in get_args(field.annotation)


@pytest.fixture
def settings_of(monkeypatch: pytest.MonkeyPatch,
                tmp_path: Path) -> Callable[[dict[str, str]], Settings]:
    """Settings as a process with exactly this environment builds them."""
    def make(env: dict[str, str]) -> Settings:
        for name in list(os.environ):
            if name.upper().startswith("BINAUDIT_"):
                monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(tmp_path)  # no .env file
        return Settings(_env_file=None)
    return make


def resolved_port(container: Obj, port: int | str) -> int:
    """A probe's or Service's port, by number or name, as a port the container declares."""
    for declared in container.get("ports", []):
        if port in (declared["containerPort"], declared.get("name")):
            return int(declared["containerPort"])
    raise AssertionError(f"{container['name']}: port {port!r} is not declared")


def probes(container: Obj) -> dict[str, Obj]:
    return {kind: container[kind] for kind in ("startupProbe", "livenessProbe", "readinessProbe")
            if kind in container}


# ---- the renderer and the schemas ------------------------------------------------------------

@pytest.mark.parametrize("target", sorted(TARGETS))
def test_renders_the_expected_objects(target: str) -> None:
    objects = rendered(target)
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} == EXPECTED_OBJECTS
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "binaudit", obj["metadata"]


def _by_kind_and_name(objects: list[Obj]) -> list[Obj]:
    return sorted(objects, key=lambda o: (o["kind"], o["metadata"]["name"]))


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_renders_like_kustomize(target: str) -> None:
    """The Python renderer agrees with `kubectl kustomize` (v1.32, kustomize v5.5): with its
    recorded output in tests/deploy/k8s-rendered/, and with a live kubectl or kustomize where
    one is installed (re-record with the latter when the manifests change)."""
    recorded = GOLDEN / f"{target}.yaml"
    real = [d for d in yaml.safe_load_all(recorded.read_text()) if d]
    assert _by_kind_and_name(rendered(target)) == _by_kind_and_name(real)
    if shutil.which("kustomize"):
        command = ["kustomize", "build", str(TARGETS[target])]
    elif shutil.which("kubectl"):
        command = ["kubectl", "kustomize", str(TARGETS[target])]
    else:
        return  # CI machines without either: the recording above stands in for it
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120).stdout
    live = [d for d in yaml.safe_load_all(out) if d]
    assert _by_kind_and_name(live) == _by_kind_and_name(real), f"re-record {recorded}"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_object_passes_its_strict_schema(target: str) -> None:
    for obj in rendered(target):
        validate(obj)


def _rename(path: list[str | int], old: str, new: str) -> Callable[[Obj], None]:
    def mutate(obj: Obj) -> None:
        node: Any = obj
        for step in path:
            node = node[step]
        node[new] = node.pop(old)
    return mutate


TYPOS = {
    "replicass": ("Deployment", "binaudit-serve", _rename(["spec"], "replicas", "replicass")),
    "containerPort": ("Deployment", "binaudit-worker", _rename(
        ["spec", "template", "spec", "containers", 0, "ports", 0], "containerPort",
        "containerPot")),
    "probe path": ("Deployment", "binaudit-worker", _rename(
        ["spec", "template", "spec", "containers", 0, "livenessProbe", "httpGet"], "path",
        "pth")),
    "secretKeyRef": ("Deployment", "binaudit-console", _rename(
        ["spec", "template", "spec", "containers", 0, "env", 2, "valueFrom"], "secretKeyRef",
        "secretRef")),
    "terminationGracePeriodSeconds": ("Deployment", "binaudit-worker", _rename(
        ["spec", "template", "spec"], "terminationGracePeriodSeconds",
        "terminationGracePeriod")),
    "job args": ("Job", "binaudit-migrate", _rename(
        ["spec", "template", "spec", "initContainers", 0], "args", "arg")),
    "pdb": ("PodDisruptionBudget", "binaudit-worker", _rename(
        ["spec"], "maxUnavailable", "maxUnavaliable")),
    "service targetPort": ("Service", "binaudit-serve", _rename(
        ["spec", "ports", 0], "targetPort", "targetport")),
    "maxReplicaCount": ("ScaledObject", "binaudit-worker", _rename(
        ["spec"], "maxReplicaCount", "maxReplicas")),
    "scaleTargetRef": ("ScaledObject", "binaudit-worker", _rename(
        ["spec", "scaleTargetRef"], "envSourceContainerName", "envSourceContainer")),
    "hpa behavior": ("ScaledObject", "binaudit-worker", _rename(
        ["spec", "advanced", "horizontalPodAutoscalerConfig", "behavior"], "scaleDown",
        "scaledown")),
    "scaledobject metadata": ("ScaledObject", "binaudit-worker", _rename(
        ["metadata"], "annotations", "anotations")),
}


@pytest.mark.parametrize("typo", sorted(TYPOS))
def test_a_misspelt_field_fails_validation(typo: str) -> None:
    kind, name, mutate = TYPOS[typo]
    obj = find(rendered("gpu"), kind, name)
    validate(copy.deepcopy(obj))  # as shipped: valid
    mutate(obj)
    with pytest.raises(jsonschema.ValidationError):
        validate(obj)


def test_a_wrong_type_fails_validation() -> None:
    obj = find(rendered("gpu"), "ScaledObject", "binaudit-worker")
    obj["spec"]["maxReplicaCount"] = "12"
    with pytest.raises(jsonschema.ValidationError):
        validate(obj)
    worker = find(rendered("gpu"), "Deployment", "binaudit-worker")
    worker["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "9108"
    with pytest.raises(jsonschema.ValidationError):
        validate(worker)


# ---- the worker: drain, probes, scaling --------------------------------------------------------

@pytest.mark.parametrize("target", OVERLAYS)
def test_worker_grace_period_outlasts_the_drain_deadline(
        target: str, settings_of: Callable[[dict[str, str]], Settings]) -> None:
    objects = rendered(target)
    pod = find(objects, "Deployment", "binaudit-worker")["spec"]["template"]["spec"]
    worker = container_of(objects, "binaudit-worker", "worker")
    deadline = settings_of(container_environment(objects, worker)).worker.shutdown_deadline_s
    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= deadline + WORKER_CLOSE_MARGIN_S, (grace, deadline)
    # The comment next to the grace period quotes the code's default: it must stay true.
    assert grace >= WorkerSettings().shutdown_deadline_s + WORKER_CLOSE_MARGIN_S
    assert f"default {WorkerSettings().shutdown_deadline_s:g} s" in (
        K8S / "base" / "worker-deployment.yaml").read_text()


@pytest.mark.parametrize("target", OVERLAYS)
def test_serve_grace_period_outlasts_its_shutdown(
        target: str, settings_of: Callable[[dict[str, str]], Settings]) -> None:
    objects = rendered(target)
    pod = find(objects, "Deployment", "binaudit-serve")["spec"]["template"]["spec"]
    serve = container_of(objects, "binaudit-serve", "serve")
    grace_s = settings_of(container_environment(objects, serve)).serve.shutdown_grace_s
    pre_stop = serve["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] >= (
        float(pre_stop[1]) + grace_s + SERVE_CLOSE_MARGIN_S)


@pytest.mark.parametrize("target", OVERLAYS)
def test_scaledobject_scales_the_workers_group_within_the_partitions(
        target: str, settings_of: Callable[[dict[str, str]], Settings]) -> None:
    objects = rendered(target)
    scaled = find(objects, "ScaledObject", "binaudit-worker")
    spec = scaled["spec"]
    partitions = int(scaled["metadata"]["annotations"]["binaudit.io/topic-partitions"])
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
    for path in (K8S / "README.md", K8S / "base" / "worker-scaledobject.yaml",
                 K8S / "base" / "configmap.yaml"):
        assert f"{partitions} partitions" in path.read_text(), path

    ref = spec["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"]) == ("apps/v1", "Deployment")
    worker = container_of(objects, ref["name"], ref["envSourceContainerName"])
    env = container_environment(objects, worker)
    settings = settings_of(env)
    [trigger] = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert set(meta) <= KAFKA_TRIGGER_KEYS, set(meta) - KAFKA_TRIGGER_KEYS
    # KEDA reads these from the worker container's own environment: the same values the
    # worker's Settings hold.
    assert env[meta["bootstrapServersFromEnv"]] == settings.kafka.bootstrap_servers
    assert env[meta["topicFromEnv"]] == settings.kafka.topic
    assert env[meta["consumerGroupFromEnv"]] == settings.kafka.group_id
    assert not {"bootstrapServers", "topic", "consumerGroup"} & set(meta)  # would win
    assert (settings.kafka.topic, settings.kafka.group_id) == (KafkaSettings().topic,
                                                               KafkaSettings().group_id)
    assert meta["offsetResetPolicy"] == settings.kafka.consumer_kwargs()["auto_offset_reset"]
    assert meta["allowIdleConsumers"] == "false"
    assert int(meta["lagThreshold"]) > 0
    if settings.kafka.security_protocol != "PLAINTEXT":
        assert "authenticationRef" in trigger, "KEDA needs the same Kafka credentials"


def test_cpu_workers_get_a_lower_lag_threshold() -> None:
    def threshold(target: str) -> int:
        scaled = find(rendered(target), "ScaledObject", "binaudit-worker")
        return int(scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"])
    assert threshold("cpu") < threshold("gpu")


def test_pdb_covers_the_worker_pods() -> None:
    objects = rendered("gpu")
    pdb = find(objects, "PodDisruptionBudget", "binaudit-worker")["spec"]
    labels = find(objects, "Deployment", "binaudit-worker")["spec"]["template"]["metadata"][
        "labels"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["maxUnavailable"] == 1


def test_gpu_overlay_puts_one_gpu_under_each_worker(
        settings_of: Callable[[dict[str, str]], Settings]) -> None:
    objects = rendered("gpu")
    pod = find(objects, "Deployment", "binaudit-worker")["spec"]["template"]["spec"]
    worker = container_of(objects, "binaudit-worker", "worker")
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"]
    assert settings_of(container_environment(objects, worker)).inference.device == "cuda"
    for name in ("binaudit-serve", "binaudit-console"):  # only the worker takes a GPU
        assert "nvidia.com/gpu" not in json.dumps(find(objects, "Deployment", name))


def test_cpu_overlay_asks_for_no_gpu(settings_of: Callable[[dict[str, str]], Settings]) -> None:
    objects = rendered("cpu")
    assert "nvidia.com" not in json.dumps(objects)
    worker = container_of(objects, "binaudit-worker", "worker")
    assert settings_of(container_environment(objects, worker)).inference.device == "cpu"


# ---- settings, ports, health endpoints ------------------------------------------------------

@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_environment_variable_is_a_setting(
        target: str, settings_of: Callable[[dict[str, str]], Settings]) -> None:
    """A misspelt BINAUDIT_ name would be ignored by Settings (extra="ignore"): refuse it.
    And each container's environment must build valid Settings."""
    objects = rendered(target)
    for workload, container in all_containers(objects):
        env = container_environment(objects, container)
        for name in env:
            assert name in OTHER_ENV or setting_field(name) is not None, (
                f"{workload['metadata']['name']}/{container['name']}: {name} is no setting")
        settings_of(env)


@pytest.mark.parametrize("target", OVERLAYS)
def test_probes_and_services_use_declared_ports(target: str) -> None:
    objects = rendered(target)
    for _, container in all_containers(objects):
        for kind, probe in probes(container).items():
            assert set(probe) & {"httpGet", "tcpSocket", "grpc", "exec"}, kind
            if "httpGet" in probe:
                resolved_port(container, probe["httpGet"]["port"])
    for name in ("binaudit-serve", "binaudit-console"):
        service = find(objects, "Service", name)["spec"]
        deployment = find(objects, "Deployment", name)
        assert service["selector"].items() <= deployment["spec"]["template"]["metadata"][
            "labels"].items()
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        for port in service["ports"]:
            assert resolved_port(container, port["targetPort"]) == port["port"]


def test_worker_probes_hit_its_health_server(
        settings_of: Callable[[dict[str, str]], Settings]) -> None:
    objects = rendered("gpu")
    worker = container_of(objects, "binaudit-worker", "worker")
    settings = settings_of(container_environment(objects, worker))
    assert settings.worker.metrics_port == resolved_port(worker, "metrics")
    assert worker["args"] == ["worker"]
    found = find(objects, "Deployment", "binaudit-worker")["spec"]["template"]["metadata"]
    assert found["annotations"]["prometheus.io/port"] == str(settings.worker.metrics_port)
    with HealthServer(0, CollectorRegistry(), healthy=lambda: True,
                      not_ready=lambda: []) as server:
        for kind, probe in probes(worker).items():
            url = f"http://127.0.0.1:{server.port}{probe['httpGet']['path']}"
            with urllib.request.urlopen(url, timeout=5) as response:
                assert response.status == 200, kind
        with pytest.raises(urllib.error.HTTPError):  # the server does tell paths apart
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/nowhere", timeout=5)


def test_serve_follows_the_sagemaker_contract(
        settings_of: Callable[[dict[str, str]], Settings]) -> None:
    from serve.server import ModelServer

    objects = rendered("gpu")
    serve = container_of(objects, "binaudit-serve", "serve")
    settings = settings_of(container_environment(objects, serve))
    assert serve["args"] == ["serve", "--port", "8080"]
    assert resolved_port(serve, "http") == 8080 == ServeSettings().port
    assert settings.serve.host == "0.0.0.0"
    routes = {(r.method, r.resource.canonical) for r in ModelServer(settings).app.router.routes()
              if r.resource is not None}
    assert ("POST", "/invocations") in routes
    for kind, probe in probes(serve).items():
        assert ("GET", probe["httpGet"]["path"]) in routes, kind
    assert find(objects, "Service", "binaudit-serve")["spec"]["ports"][0]["port"] == 8080


def test_console_probes_hit_its_app(settings_of: Callable[[dict[str, str]], Settings]) -> None:
    from fastapi.testclient import TestClient
    from sqlalchemy import create_engine

    from audit.console.app import create_app

    objects = rendered("gpu")
    console = container_of(objects, "binaudit-console", "console")
    settings = settings_of(container_environment(objects, console))
    assert console["args"] == ["console"]
    assert settings.console.host == "0.0.0.0"
    assert settings.console.port == resolved_port(console, "http")
    assert settings.console.secret_problem(settings.environment) is None
    engine = create_engine("sqlite://")
    try:
        client = TestClient(create_app(settings, engine=engine))
        for kind, probe in probes(console).items():
            assert client.get(probe["httpGet"]["path"]).status_code == 200, kind
    finally:
        engine.dispose()


def test_migration_job_runs_db_upgrade_then_the_console_login() -> None:
    job = find(rendered("gpu"), "Job", "binaudit-migrate")["spec"]
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert [c["args"] for c in pod["initContainers"]] == [["db", "upgrade"]]
    assert [c["args"] for c in pod["containers"]] == [["console", "db-login"]]
    assert job["ttlSecondsAfterFinished"] > 0 and job["backoffLimit"] >= 1


# ---- secrets, identities, security context ------------------------------------------------------

SECRET_PATTERNS = {
    "AWS key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS credential variable": re.compile(
        r"AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY|SESSION_TOKEN)|S3__(ACCESS_KEY_ID|SECRET_ACCESS_KEY)"
        r"|aws_(access_key_id|secret_access_key)", re.IGNORECASE),
    # <placeholders> such as the README's `postgresql+psycopg2://<owner>:<password>@` pass.
    "password in a URL": re.compile(r"://[^/\s:@<]+:[^/\s@<]+@"),
    "literal password": re.compile(
        r"(password|passwd|secret|token)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9+/_-]{8,}",
        re.IGNORECASE),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
}


def secret_findings(text: str) -> list[str]:
    return [f"{what}: {line.strip()}" for line in text.splitlines()
            for what, pattern in SECRET_PATTERNS.items() if pattern.search(line)]


def test_no_literal_secrets_in_deploy_k8s() -> None:
    files = [p for p in K8S.rglob("*") if p.is_file()]
    assert len(files) >= 14
    for path in files:
        assert not secret_findings(path.read_text()), path.relative_to(REPO_ROOT)


@pytest.mark.parametrize("line", [
    "  AWS_ACCESS_KEY_ID: AKIAIOSFODNN7EXAMPLE",
    "  - name: BINAUDIT_S3__SECRET_ACCESS_KEY",
    "  BINAUDIT_DB__URL: postgresql+psycopg2://binaudit:hunter2hunter2@db:5432/binaudit",
    "  db-password: hunter2hunter2",
    '  "session_secret": "0123456789abcdef0123"',
])
def test_the_secret_scan_finds_planted_secrets(line: str) -> None:
    assert secret_findings(line)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_secret_settings_come_from_kubernetes_secrets(target: str) -> None:
    objects = rendered(target)
    assert not [o for o in objects if o["kind"] == "Secret"], "create Secrets out of band"
    for config in (o for o in objects if o["kind"] == "ConfigMap"):
        for name in config["data"]:
            field = setting_field(name)
            assert field is None or not is_secret(field), f"ConfigMap holds {name}"
    for workload, container in all_containers(objects):
        where = f"{workload['metadata']['name']}/{container['name']}"
        for item in container.get("env", []):
            name = item["name"]
            assert name not in AWS_CREDENTIAL_ENV, f"{where}: {name}: use IRSA"
            assert not name.startswith(("BINAUDIT_S3__ACCESS_KEY", "BINAUDIT_S3__SECRET",
                                        "BINAUDIT_ABID__ACCESS_KEY", "BINAUDIT_ABID__SECRET")), (
                f"{where}: {name}: use IRSA")
            field = setting_field(name)
            if field is not None and is_secret(field):
                assert set(item) == {"name", "valueFrom"}, f"{where}: {name} is literal"
                assert set(item["valueFrom"]) == {"secretKeyRef"}, f"{where}: {name}"


def test_each_role_has_its_own_database_login() -> None:
    objects = rendered("gpu")
    def db_secret(workload: Obj, container: Obj) -> str | None:
        for item in container.get("env", []):
            if item["name"] == "BINAUDIT_DB__URL":
                return str(item["valueFrom"]["secretKeyRef"]["name"])
        return None
    by_role = {}
    for workload, container in all_containers(objects):
        by_role[(workload["metadata"]["name"], container["name"])] = db_secret(workload,
                                                                               container)
    assert by_role[("binaudit-migrate", "upgrade")] == "binaudit-db-migrate"
    assert by_role[("binaudit-migrate", "console-db-login")] == "binaudit-db-migrate"
    # Creating a partition needs the parent table's owner: the schema owner's login.
    assert by_role[("binaudit-partitions", "ensure")] == "binaudit-db-migrate"
    assert by_role[("binaudit-worker", "worker")] == "binaudit-db-worker"
    assert by_role[("binaudit-console", "console")] == "binaudit-console"
    assert by_role[("binaudit-serve", "serve")] is None  # serve never touches Postgres
    console = container_of(objects, "binaudit-console", "console")
    # The console logs in as the role migration 0004 creates (ConsoleSettings.db_user).
    assert env_value(console, "BINAUDIT_CONSOLE__DB_USER") is None
    assert ConsoleSettings().db_user == CONSOLE_LOGIN_ROLE


@pytest.mark.parametrize("target", OVERLAYS)
def test_aws_access_comes_from_the_pods_identity(target: str) -> None:
    objects = rendered(target)
    accounts = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ServiceAccount"}
    role_arn = re.compile(r"^arn:aws:iam::\d{12}:role/[\w+=,.@/-]+$")
    for workload, pod in pod_templates(objects):
        account = accounts[pod["serviceAccountName"]]
        annotations = account["metadata"].get("annotations", {})
        arn = annotations.get("eks.amazonaws.com/role-arn")
        if workload["kind"] in {"Job", "CronJob"}:
            assert arn is None, "the migration and partition upkeep need no AWS access"
        else:
            assert arn is not None and role_arn.match(arn), workload["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is False
        assert account["automountServiceAccountToken"] is False


@pytest.mark.parametrize("target", OVERLAYS)
def test_pods_pass_the_restricted_pod_security_profile(target: str) -> None:
    objects = rendered(target)
    labels = find(objects, "Namespace", "binaudit")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for workload, pod in pod_templates(objects):
        where = workload["metadata"]["name"]
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, where
        assert isinstance(context["runAsUser"], int) and context["runAsUser"] > 0, where
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        for volume in pod.get("volumes", []):
            assert set(volume) - {"name"} <= POD_VOLUME_TYPES, f"{where}: {volume}"
        for container in containers(pod):
            c = container["securityContext"]
            where_c = f"{where}/{container['name']}"
            assert c["allowPrivilegeEscalation"] is False, where_c
            assert c["readOnlyRootFilesystem"] is True, where_c
            assert c["capabilities"] == {"drop": ["ALL"]}, where_c
            assert not c.get("privileged"), where_c
            assert c.get("runAsNonRoot", True) is True and c.get("runAsUser", 1) != 0, where_c
            assert container["image"] == "binaudit:latest", where_c
            assert container["resources"]["limits"]["memory"], where_c


# ---- the README -----------------------------------------------------------------------------

def test_readme_says_how_to_render_and_why_the_numbers() -> None:
    readme = (K8S / "README.md").read_text()
    objects = rendered("gpu")
    grace = find(objects, "Deployment", "binaudit-worker")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"]
    partitions = find(objects, "ScaledObject", "binaudit-worker")["metadata"]["annotations"][
        "binaudit.io/topic-partitions"]
    for text in ("kubectl kustomize deploy/k8s/overlays/gpu", "kubectl kustomize "
                 "deploy/k8s/overlays/cpu", f"terminationGracePeriodSeconds: {grace}",
                 f"{WorkerSettings().shutdown_deadline_s:g} s", f"{partitions} partitions",
                 "eks.amazonaws.com/role-arn", "binaudit-db-worker", "binaudit-db-migrate",
                 "binaudit-console"):
        assert text in readme, text
    for name in (kind for kind, _ in EXPECTED_OBJECTS):
        assert name in readme, name

