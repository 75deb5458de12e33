"""A small, strict kustomize renderer for the features Parley's manifests use, so the checks run
on resources as plain data. ``tests/deploy/test_kubernetes.py`` holds its output to that of
``kubectl kustomize`` (kubectl is on the test machines).

Supported: ``resources`` (files and directories), ``namespace``, ``configMapGenerator`` (``envs``
and ``literals``; ``behavior`` create, merge or replace; a content-hash suffix on the name, and
references to the ConfigMap rewritten in resources of its own namespace, as kustomize does),
``images``, ``replicas`` and JSON 6902 ``patches`` aimed at a kind and name. Any other field is
an error, so a manifest never relies on something this renderer silently ignores. Hashes differ
from kustomize's own; names and structure match.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]
SUPPORTED = {
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "configMapGenerator",
    "images",
    "replicas",
    "patches",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
GENERATED = "parley.test/generated-name"  # internal marker, removed before output


class KustomizeError(ValueError):
    pass


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines; blank lines and ``#`` comments skipped (kustomize's ``envs`` format)."""
    data: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise KustomizeError(f"{path}:{number}: not KEY=VALUE: {raw!r}")
        if key in data:
            raise KustomizeError(f"{path}:{number}: {key} set twice")
        data[key] = value
    return data


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"bad JSON pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _walk(document: Any, parts: list[str]) -> Any:
    for part in parts:
        document = document[int(part)] if isinstance(document, list) else document[part]
    return document


def apply_json6902(document: Resource, operations: list[dict[str, Any]]) -> None:
    for operation in operations:
        op, parts = operation["op"], _pointer(operation["path"])
        parent = _walk(document, parts[:-1])
        last = parts[-1]
        if op in {"add", "replace"}:
            value = copy.deepcopy(operation["value"])
            if isinstance(parent, list):
                if last == "-":
                    parent.append(value)
                elif op == "add":
                    parent.insert(int(last), value)
                else:
                    parent[int(last)] = value
            else:
                if op == "replace" and last not in parent:
                    raise KustomizeError(f"replace of missing {operation['path']}")
                parent[last] = value
        elif op == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        elif op == "test":
            if _walk(document, parts) != operation["value"]:
                raise KustomizeError(f"test failed at {operation['path']}")
        else:
            raise KustomizeError(f"unsupported JSON patch op {op!r}")


def _generate(directory: Path, spec: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    unknown = set(spec) - {"name", "envs", "literals", "behavior"}
    if unknown:
        raise KustomizeError(f"configMapGenerator fields not supported: {sorted(unknown)}")
    data: dict[str, str] = {}
    for env in spec.get("envs", []):
        for key, value in read_env_file(directory / env).items():
            if key in data:
                raise KustomizeError(f"{spec['name']}: {key} set twice")
            data[key] = value
    for literal in spec.get("literals", []):
        key, sep, value = literal.partition("=")
        if not sep:
            raise KustomizeError(f"{spec['name']}: literal not KEY=VALUE: {literal!r}")
        data[key] = value
    return spec["name"], spec.get("behavior", "create"), data


def _containers(resource: Resource) -> list[dict[str, Any]]:
    if resource["kind"] not in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        return []
    spec = resource["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def _build(directory: Path) -> list[Resource]:
    """Resources of one kustomization, generated ConfigMaps still under their plain names."""
    path = directory / "kustomization.yaml"
    kustomization = yaml.safe_load(path.read_text())
    unknown = set(kustomization) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{path}: fields this renderer does not support: {sorted(unknown)}")
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            resources.extend(_build(target))
        else:
            resources.extend(doc for doc in yaml.safe_load_all(target.read_text()) if doc)
    for spec in kustomization.get("configMapGenerator", []):
        name, behavior, data = _generate(directory, spec)
        existing = [
            r for r in resources if r["metadata"].get("annotations", {}).get(GENERATED) == name
        ]
        if behavior == "create":
            if existing:
                raise KustomizeError(f"{path}: ConfigMap {name} generated twice")
            resources.append(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": name, "annotations": {GENERATED: name}},
                    "data": data,
                }
            )
        elif behavior in {"merge", "replace"}:
            if not existing:
                raise KustomizeError(
                    f"{path}: {behavior} of ConfigMap {name} that is not generated"
                )
            target_data = existing[0]["data"]
            if behavior == "replace":
                target_data.clear()
            target_data.update(data)
        else:
            raise KustomizeError(f"{path}: unknown behavior {behavior!r}")
    for image in kustomization.get("images", []):
        for resource in resources:
            for container in _containers(resource):
                if container["image"].split("@")[0].rsplit(":", 1)[0] == image["name"]:
                    name = image.get("newName", image["name"])
                    if "digest" in image:
                        container["image"] = f"{name}@{image['digest']}"
                    else:
                        container["image"] = f"{name}:{image.get('newTag', 'latest')}"
    for replica in kustomization.get("replicas", []):
        matches = [
            r
            for r in resources
            if r["metadata"]["name"] == replica["name"] and "replicas" in r.get("spec", {})
        ]
        if not matches:
            raise KustomizeError(f"{path}: replicas for unknown {replica['name']}")
        for resource in matches:
            resource["spec"]["replicas"] = replica["count"]
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        if set(target) - {"kind", "name"}:
            raise KustomizeError(f"{path}: patch target fields not supported: {target}")
        text = patch["patch"] if "patch" in patch else (directory / patch["path"]).read_text()
        operations = yaml.safe_load(text)
        if not isinstance(operations, list):
            raise KustomizeError(f"{path}: only JSON 6902 patches (a list of operations)")
        matches = [
            r
            for r in resources
            if r["kind"] == target["kind"] and r["metadata"]["name"] == target["name"]
        ]
        if not matches:
            raise KustomizeError(f"{path}: patch target {target} matches nothing")
        for resource in matches:
            apply_json6902(resource, operations)
    namespace = kustomization.get("namespace")
    if namespace:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = namespace
    return resources


def _rename_references(resource: Resource, names: dict[tuple[str | None, str], str]) -> None:
    # As kustomize does: only a ConfigMap of the resource's own namespace is renamed in it (one
    # generated where no `namespace:` applies has none, and stays unmatched).
    namespace = resource["metadata"].get("namespace")

    def rename(holder: dict[str, Any]) -> None:
        key = (namespace, holder.get("name", ""))
        if key in names:
            holder["name"] = names[key]

    for container in _containers(resource):
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                rename(source["configMapRef"])
        for variable in container.get("env", []):
            ref = variable.get("valueFrom", {}).get("configMapKeyRef")
            if ref:
                rename(ref)
    if _containers(resource):
        for volume in resource["spec"]["template"]["spec"].get("volumes", []):
            if "configMap" in volume:
                rename(volume["configMap"])


def render(directory: Path) -> list[Resource]:
    """``kustomize build directory``, as far as this module goes."""
    resources = copy.deepcopy(_build(directory))
    names: dict[tuple[str | None, str], str] = {}
    for resource in resources:
        plain = resource["metadata"].get("annotations", {}).pop(GENERATED, None)
        if plain is None:
            continue
        if not resource["metadata"]["annotations"]:
            del resource["metadata"]["annotations"]
        digest = hashlib.sha256(json.dumps(resource["data"], sort_keys=True).encode()).hexdigest()
        hashed = f"{plain}-{digest[:10]}"
        resource["metadata"]["name"] = names[resource["metadata"].get("namespace"), plain] = hashed
    for resource in resources:
        _rename_references(resource, names)
    return resources
