"""The part of Kustomize that deploy/k8s uses, in Python, so the manifests can be rendered and
checked without kubectl (no kustomize renderer is on PyPI).

A kustomization may name only the fields below; any other field is refused, so an overlay
cannot start relying on a feature this renderer would silently skip:

- ``resources``: YAML files (one or more documents) and directories holding a kustomization;
- ``namespace``: set on every namespaced object (a Namespace object is renamed to it);
- ``patches``: ``path`` or ``patch`` (inline), with an optional ``target`` (group, version,
  kind, name). A patch that is a YAML list is an RFC 6902 JSON patch (applied with
  ``jsonpatch``); otherwise it is a strategic-merge patch, which, like Kustomize, merges
  lists of built-in kinds by their merge key (containers and env by ``name``, ...), puts
  new entries first, and replaces other lists; objects of other kinds (CRDs) get an RFC 7386
  merge patch (maps merge, lists are replaced, ``null`` deletes).

``tests/deploy/test_k8s_manifests.py`` compares this renderer's output with ``kubectl
kustomize``/``kustomize build`` wherever one of those is installed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

Obj = dict[str, Any]

KUSTOMIZATION_FIELDS = frozenset({"apiVersion", "kind", "resources", "namespace", "patches"})
PATCH_FIELDS = frozenset({"path", "patch", "target"})
TARGET_FIELDS = frozenset({"group", "version", "kind", "name"})

# Kinds without a namespace (the ones a kustomization here could plausibly name).
CLUSTER_SCOPED = frozenset({
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "PersistentVolume", "StorageClass", "PriorityClass", "RuntimeClass",
    "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration",
})

# Built-in API groups: their objects get strategic-merge semantics.
BUILTIN_GROUPS = frozenset({"", "apps", "batch", "policy", "networking.k8s.io",
                            "rbac.authorization.k8s.io", "autoscaling"})

# patchMergeKey of the Kubernetes API's associative lists (by field name) that appear in
# pod templates; lists not named here are replaced by a patch, as in Kubernetes.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
}


class KustomizeError(ValueError):
    """A kustomization this renderer cannot render faithfully."""


def build(directory: Path) -> list[Obj]:
    """Render the kustomization in ``directory``, like ``kubectl kustomize directory``."""
    kustomization = _load_kustomization(directory)
    objects: list[Obj] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            objects.extend(build(path))
        else:
            objects.extend(load_documents(path))
    for spec in kustomization.get("patches", []):
        objects = [_apply_patch(obj, spec, directory) for obj in objects]
    namespace = kustomization.get("namespace")
    if namespace:
        for obj in objects:
            if obj["kind"] == "Namespace":
                obj["metadata"]["name"] = namespace
            elif obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = namespace
    _check_unique(objects, directory)
    return objects


def load_documents(path: Path) -> list[Obj]:
    """The non-empty YAML documents of a file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def group_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def _load_kustomization(directory: Path) -> Obj:
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    data = yaml.safe_load(path.read_text()) or {}
    unknown = set(data) - KUSTOMIZATION_FIELDS
    if unknown:
        raise KustomizeError(f"{path}: fields this renderer does not implement: "
                             f"{sorted(unknown)}")
    if data.get("kind", "Kustomization") != "Kustomization":
        raise KustomizeError(f"{path}: kind must be Kustomization")
    return data


def _check_unique(objects: list[Obj], directory: Path) -> None:
    seen: set[tuple[str, str, str]] = set()
    for obj in objects:
        key = (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        if key in seen:
            raise KustomizeError(f"{directory}: {key} appears twice")
        seen.add(key)


def _apply_patch(obj: Obj, spec: Obj, directory: Path) -> Obj:
    unknown = set(spec) - PATCH_FIELDS
    if unknown or ("path" in spec) == ("patch" in spec):
        raise KustomizeError(f"{directory}: a patch needs exactly one of path/patch, and "
                             f"only target besides ({sorted(unknown)} unknown)")
    text = (directory / spec["path"]).read_text() if "path" in spec else spec["patch"]
    patch = yaml.safe_load(text)
    target = spec.get("target")
    if isinstance(patch, list):  # RFC 6902
        if target is None:
            raise KustomizeError(f"{directory}: a JSON 6902 patch needs a target")
        if not _matches(obj, target):
            return obj
        return jsonpatch.JsonPatch(patch).apply(obj)
    if not isinstance(patch, dict):
        raise KustomizeError(f"{directory}: a patch must be a mapping or a list")
    if target is None:  # the patch names its object
        target = {"kind": patch["kind"], "name": patch["metadata"]["name"]}
        target["group"], target["version"] = group_version(patch["apiVersion"])
    if not _matches(obj, target):
        return obj
    group, _ = group_version(obj["apiVersion"])
    merged = (strategic_merge(obj, patch) if group in BUILTIN_GROUPS
              else merge_patch(obj, patch))
    return merged


def _matches(obj: Obj, target: Obj) -> bool:
    unknown = set(target) - TARGET_FIELDS
    if unknown:
        raise KustomizeError(f"patch target fields not implemented: {sorted(unknown)}")
    group, version = group_version(obj["apiVersion"])
    actual = {"group": group, "version": version, "kind": obj["kind"],
              "name": obj["metadata"]["name"]}
    return all(actual[field] == wanted for field, wanted in target.items())


def merge_patch(original: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(original) if isinstance(original, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge(original: Any, patch: Any, field: str | None = None) -> Any:
    """Kubernetes' strategic merge patch, without directives (``$patch``, ``$retainKeys``
    and the like are refused)."""
    if isinstance(patch, dict):
        directives = [key for key in patch if key.startswith("$")]
        if directives:
            raise KustomizeError(f"strategic-merge directives not implemented: {directives}")
        result = copy.deepcopy(original) if isinstance(original, dict) else {}
        for key, value in patch.items():
            if value is None:
                result.pop(key, None)
            else:
                result[key] = strategic_merge(result.get(key), value, key)
        return result
    if isinstance(patch, list) and field in MERGE_KEYS and isinstance(original, list):
        key = MERGE_KEYS[field]
        merged = copy.deepcopy(original)
        index = {item[key]: i for i, item in enumerate(merged)}
        new = []
        for item in patch:
            if item[key] in index:
                merged[index[item[key]]] = strategic_merge(merged[index[item[key]]], item)
            else:
                new.append(copy.deepcopy(item))
        return new + merged  # Kustomize (kyaml) puts entries only the patch has first
    return copy.deepcopy(patch)
