"""Offline checks of raygate's KubeRay deployment: no cluster, no network.

    python -m deploy.check deploy/kuberay

Reads what ``kubectl apply -k`` would apply, and the examples beside it (see
:mod:`deploy.manifests`), and checks:

- every resource against its kind's schema: Kubernetes' own, strict, and KubeRay's
  CRD, vendored (:func:`deploy.manifests.schema_problems`);
- the RayService's ``serveConfigV2`` against Ray Serve's ``ServeDeploySchema``, with
  the fields Serve would pass over silently named too, and that each application's
  import path and the deployments it configures are there;
- the settings file it names (``args.config``), as the ConfigMap mounted on the head
  holds it, read by raygate's own :func:`actors.settings.load_settings` in the
  environment the head's container gets (its ``env``, and the example Secrets for the
  ones it takes from a Secret);
- that every GPU host those settings name is a worker group's Ray label
  ``raygate.io/gpu-host``, and that an Ollama there listens on the Pod's loopback, at
  the port the settings call;
- that ``rayVersion`` and the Dockerfile's base image are the Ray that raygate pins.

Each problem is printed as ``file: Kind/name: field.path: what is wrong``; the exit
status is 1 when there is one.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import ray
import yaml
from pydantic import BaseModel, ValidationError
from ray.serve import Deployment
from ray.serve.schema import ServeDeploySchema

from actors.errors import ConfigError
from actors.groups import GPU_HOST_LABEL, GroupSpec, Provider, ResourceKind, is_loopback_host
from actors.settings import Settings, load_settings
from deploy.manifests import Loaded, Problem, Resource, dotted, load, schema_problems
from providers.discovery import servers_asked

SERVE_CONFIG = "spec.serveConfigV2"
_OLLAMA_PORT = 11434

# A field's place in a document: keys and list indices.
FieldPath = tuple[str | int, ...]


def check(folder: Path) -> list[Problem]:
    """Every problem of the deployment in ``folder``."""
    loaded = load(folder)
    problems = list(loaded.problems)
    for resource in [*loaded.resources, *loaded.examples]:
        found = schema_problems(resource)
        problems += found
        # What a RayService says is read once its shape is right.
        if resource.kind == "RayService" and not found:
            problems += check_rayservice(resource, loaded, folder)
    return problems


def check_rayservice(service: Resource, loaded: Loaded, folder: Path) -> list[Problem]:
    spec = service.body.get("spec") or {}
    problems = ray_version_problems(service, folder / "Dockerfile")
    try:
        serve_config = yaml.safe_load(spec.get("serveConfigV2") or "{}")
    except yaml.YAMLError as exc:
        return [*problems, Problem(service, SERVE_CONFIG, f"not YAML: {exc}")]
    problems += serve_config_problems(service, serve_config)
    if not isinstance(serve_config, dict):
        return problems
    for n, app in enumerate(serve_config.get("applications") or []):
        config = (app.get("args") or {}).get("config")
        if isinstance(config, str):
            where = f"{SERVE_CONFIG}.applications[{n}].args.config"
            settings, found = settings_of(service, loaded, config, where)
            problems += found
            if settings is not None:
                problems += gpu_host_problems(service, settings)
    return problems


def serve_config_problems(service: Resource, config: Any) -> list[Problem]:
    """``serveConfigV2`` as Serve reads it, and the fields Serve would not read."""
    if not isinstance(config, dict):
        return [Problem(service, SERVE_CONFIG, "not a mapping")]
    problems = [
        Problem(service, f"{SERVE_CONFIG}.{dotted(path)}", "unknown field")
        for path in unknown_fields(ServeDeploySchema, config, ())
    ]
    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as exc:
        for error in exc.errors():
            field = f"{SERVE_CONFIG}.{dotted(error['loc'])}"
            problems.append(Problem(service, field, error["msg"]))
        return problems
    for n, app in enumerate(config.get("applications") or []):
        problems += _application_problems(service, n, app)
    return problems


def unknown_fields(model: type[BaseModel], data: Any, path: FieldPath) -> Iterator[FieldPath]:
    """Paths in ``data`` that ``model`` (and the models of its fields) do not name: Ray's
    Serve schemas pass over them without a word. A field that may also be a plain dict
    takes any key."""
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            yield (*path, key)
            continue
        inner = _models_in(field.annotation)
        if inner is None:
            continue
        items = enumerate(value) if isinstance(value, list) else [(None, value)]
        for n, item in items:
            where = (*path, key) if n is None else (*path, key, n)
            yield from unknown_fields(inner, item, where)


def _models_in(annotation: Any) -> type[BaseModel] | None:
    """The one model a field holds (alone, optional or in a list); None when it holds
    none, or may hold a plain dict instead."""
    if isinstance(annotation, type):
        return annotation if issubclass(annotation, BaseModel) else None
    args = [arg for arg in getattr(annotation, "__args__", ()) if arg is not type(None)]
    if any(arg is dict or getattr(arg, "__origin__", None) is dict for arg in args):
        return None
    models = [model for arg in args if (model := _models_in(arg)) is not None]
    return models[0] if len(models) == 1 else None


def _application_problems(service: Resource, n: int, app: dict[str, Any]) -> list[Problem]:
    where = f"{SERVE_CONFIG}.applications[{n}]"
    module_name, _, attribute = app["import_path"].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        return [Problem(service, f"{where}.import_path", f"cannot import {module_name}: {exc}")]
    if not hasattr(module, attribute):
        return [Problem(service, f"{where}.import_path", f"{module_name} has no {attribute}")]
    known = {value.name for value in vars(module).values() if isinstance(value, Deployment)}
    has = ", ".join(sorted(known))
    return [
        Problem(
            service,
            f"{where}.deployments[{m}].name",
            f"not a deployment of {module_name} (it has {has})",
        )
        for m, deployment in enumerate(app.get("deployments") or [])
        if deployment.get("name") not in known
    ]


def settings_of(
    service: Resource, loaded: Loaded, path: str, where: str
) -> tuple[Settings | None, list[Problem]]:
    """The settings at ``path`` on the head: the ConfigMap mounted there, read by
    raygate in the environment the head's container gets."""
    head = _cluster(service).get("headGroupSpec", {}).get("template", {}).get("spec") or {}
    container = (head.get("containers") or [{}])[0]
    found = _mounted(head, container, PurePosixPath(path), loaded)
    if isinstance(found, str):
        return None, [Problem(service, where, found)]
    config_map, key = found
    with tempfile.TemporaryDirectory() as folder, _environment(_env(container, loaded)):
        file = Path(folder) / key
        file.write_text(config_map.body["data"][key], encoding="utf-8")
        try:
            return load_settings(file), []
        except ConfigError as exc:
            if exc.source == "the environment":  # a RAYGATE_ variable that is not JSON
                field = "spec.rayClusterConfig.headGroupSpec.template.spec.containers[0].envFrom"
                return None, [
                    Problem(service, field, f"the environment: {p}") for p in exc.problems
                ]
            return None, [Problem(config_map, f"data.{key}", problem) for problem in exc.problems]


def _mounted(
    pod: dict[str, Any], container: dict[str, Any], path: PurePosixPath, loaded: Loaded
) -> tuple[Resource, str] | str:
    """The ConfigMap and key the container sees at ``path``, or why there is none."""
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        if PurePosixPath(mount["mountPath"]) != path.parent:
            continue
        source = volumes.get(mount["name"], {}).get("configMap")
        if source is None:
            return f"{path.parent} is not a ConfigMap's volume"
        config_map = loaded.find("ConfigMap", source["name"])
        if config_map is None:
            return f"no ConfigMap {source['name']} is applied"
        items = {item["path"]: item["key"] for item in source.get("items", [])}
        key = items.get(path.name, path.name)
        if key not in (config_map.body.get("data") or {}):
            return f"ConfigMap {source['name']} has no key {key}"
        return config_map, key
    return f"nothing is mounted at {path.parent} in the head's first container"


def _env(container: dict[str, Any], loaded: Loaded) -> dict[str, str]:
    """The container's environment: its values, and its Secrets' (the examples')."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = (source.get("secretRef") or {}).get("name")
        secret = loaded.find("Secret", name) if name else None
        if secret is not None:
            env.update(secret.body.get("stringData") or {})
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = str(variable["value"])
    return env


@contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """``os.environ`` as the container has it, for raygate's settings: this process's
    own RAYGATE_ variables out of the way meanwhile."""
    saved = {key: value for key, value in os.environ.items() if key.startswith("RAYGATE_")}
    saved.update({key: os.environ[key] for key in env if key in os.environ})
    for key in saved:
        del os.environ[key]
    os.environ.update(env)
    try:
        yield
    finally:
        for key in env:
            os.environ.pop(key, None)
        os.environ.update(saved)


def gpu_host_problems(service: Resource, settings: Settings) -> list[Problem]:
    """Each GPU host the settings name is a worker group's label, and an Ollama served
    there listens on its Pod's loopback at the port the settings call."""
    groups = _cluster(service).get("workerGroupSpecs") or []
    where = "spec.rayClusterConfig.workerGroupSpecs"
    labelled = {
        (group.get("labels") or {}).get(GPU_HOST_LABEL): n for n, group in enumerate(groups)
    }
    problems = []
    for host, specs in sorted(hosts_named(settings).items()):
        if host not in labelled:
            served = ", ".join(spec.id for spec in specs) or "the embedded model"
            message = f"no worker group is labelled {GPU_HOST_LABEL}: {host}, for {served}"
            problems.append(Problem(service, where, message))
            continue
        n = labelled[host]
        for spec in specs:
            if spec.provider is Provider.OLLAMA and spec.kind is ResourceKind.LOCAL_SERVER:
                template = groups[n].get("template", {}).get("spec") or {}
                problems += _ollama_problems(service, f"{where}[{n}].template.spec", template, spec)
    return problems


def hosts_named(settings: Settings) -> dict[str, list[GroupSpec]]:
    """Each GPU host the settings name, with the servers they place there (once each)."""
    hosts: dict[str, list[GroupSpec]] = {}
    if settings.pipeline.embedded_host is not None:
        hosts[settings.pipeline.embedded_host] = []
    for spec in (server.spec() for server in servers_asked(settings)):
        if spec.host is not None:
            hosts.setdefault(spec.host, []).append(spec)
    return hosts


def _ollama_problems(
    service: Resource, where: str, pod: dict[str, Any], spec: GroupSpec
) -> list[Problem]:
    port = urlsplit(spec.base_url).port or _OLLAMA_PORT
    for n, container in enumerate(pod.get("containers", [])):
        env = {var["name"]: var.get("value") for var in container.get("env", [])}
        if "ollama" not in container.get("image", "") and "OLLAMA_HOST" not in env:
            continue
        # Ollama's own default: 127.0.0.1:11434.
        listens = str(env.get("OLLAMA_HOST") or f"127.0.0.1:{_OLLAMA_PORT}")
        address = urlsplit(listens if "//" in listens else f"//{listens}")
        field = f"{where}.containers[{n}].env.OLLAMA_HOST"
        if not is_loopback_host(address.hostname or ""):
            wrong = f"listens on {listens}: past the Pod's loopback, past the gate"
        elif (address.port or _OLLAMA_PORT) != port:
            wrong = f"listens on {listens}, but the settings call {spec.id} at port {port}"
        else:
            return []
        return [Problem(service, field, f"Ollama {wrong}")]
    missing = f"no Ollama container, where the settings call {spec.id}"
    return [Problem(service, f"{where}.containers", missing)]


def ray_version_problems(service: Resource, dockerfile: Path) -> list[Problem]:
    """``rayVersion`` and the image's base are the Ray raygate is installed with (its
    major and minor version: pyproject.toml pins ``2.60.*``)."""
    pinned = ".".join(ray.__version__.split(".")[:2])
    version = str(_cluster(service).get("rayVersion", ""))
    problems = []
    if not version.startswith(f"{pinned}."):
        wrong = f"{version!r} is not the Ray {pinned} raygate pins"
        problems.append(Problem(service, "spec.rayClusterConfig.rayVersion", wrong))
    if dockerfile.is_file():
        base = re.search(r"^FROM\s+rayproject/ray:(\S+)", dockerfile.read_text(), re.M)
        if base is None or not base.group(1).startswith(f"{version}-"):
            wrong = f"not rayproject/ray:{version}-<python>, the RayService's rayVersion"
            problems.append(Problem(dockerfile.name, "FROM", wrong))
    return problems


def _cluster(service: Resource) -> dict[str, Any]:
    """The RayService's ``rayClusterConfig``."""
    cluster: dict[str, Any] = (service.body.get("spec") or {}).get("rayClusterConfig") or {}
    return cluster


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m deploy.check <folder with kustomization.yaml>", file=sys.stderr)
        return 2
    problems = check(Path(args[0]))
    for problem in problems:
        print(problem)
    print(f"{args[0]}: {len(problems)} problem(s)" if problems else f"{args[0]}: no problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
