"""What ``kubectl apply -k`` would apply, read offline, and each resource against its schema.

:func:`load` follows a kustomization as kustomize would for the keys it uses here:
``resources`` (YAML files, several documents each), ``configMapGenerator`` and
``secretGenerator`` (``files`` and ``literals``). Keys that change no field it checks
(``namespace``, ``configurations``, ...) are passed over; any other key is a problem,
so nothing is applied that was not checked. Example files beside it
(``*.example.yaml``: Secrets with placeholders, which the kustomization leaves out)
are read too.

:func:`schema_problems` checks one resource:

- a built-in kind against Kubernetes' own schema of :data:`KUBERNETES_VERSION`, as
  the PyPI package ``kubernetes-validate`` ships it, strict: a field the schema does
  not name is an error, as ``kubectl apply`` (``--validate=strict``) makes it;
- a RayService against the CRD of :data:`KUBERAY_VERSION`, vendored in
  ``deploy/kuberay/schemas`` (see there), read as Kubernetes reads a structural
  schema (:func:`structural`).

A problem names its file, its resource and the field's path
(``spec.rayClusterConfig.workerGroupSpecs[1].groupNmae``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.33"
KUBERAY_VERSION = "v1.7.0"
RAYSERVICE_SCHEMA = Path(__file__).parent / "kuberay" / "schemas" / "ray.io_rayservices.v1.json"

# Kustomization keys that change nothing the checks look at.
_PASSED_OVER = {"apiVersion", "kind", "namespace", "configurations", "generatorOptions"}
_GENERATORS = {"configMapGenerator": "ConfigMap", "secretGenerator": "Secret"}


@dataclass(frozen=True)
class Resource:
    """One Kubernetes object and the file it came from."""

    source: str
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body.get("kind"))

    @property
    def name(self) -> str:
        return str((self.body.get("metadata") or {}).get("name"))

    def __str__(self) -> str:
        return f"{self.source}: {self.kind}/{self.name}"


@dataclass(frozen=True)
class Problem:
    """What is wrong, and where: a resource (or a file) and a field's path."""

    where: Resource | str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.field}: {self.message}"


@dataclass(frozen=True)
class Loaded:
    """A kustomization's resources, the examples beside it, and what could not be read."""

    resources: list[Resource]
    examples: list[Resource]
    problems: list[Problem]

    def find(self, kind: str, name: str) -> Resource | None:
        """The resource of that kind and name, among the resources, then the examples."""
        for resource in [*self.resources, *self.examples]:
            if resource.kind == kind and resource.name == name:
                return resource
        return None


def dotted(path: Iterable[str | int]) -> str:
    """``("spec", "ports", 0, "port")`` as ``spec.ports[0].port``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.removeprefix(".") or "(top level)"


def load(folder: Path) -> Loaded:
    """The resources of ``folder/kustomization.yaml`` and the examples beside it."""
    where = "kustomization.yaml"
    kustomization = yaml.safe_load((folder / where).read_text(encoding="utf-8")) or {}
    resources: list[Resource] = []
    problems: list[Problem] = []
    for key, value in kustomization.items():
        if key == "resources":
            for entry in value:
                if (folder / entry).is_file():
                    resources.extend(_read(folder, entry))
                else:
                    problems.append(Problem(where, key, f"{entry}: not a file of {folder}"))
        elif key in _GENERATORS:
            for n, generator in enumerate(value):
                made, unread = _generated(folder, _GENERATORS[key], generator)
                resources.append(made)
                problems += [Problem(where, f"{key}[{n}].{field}", "not read") for field in unread]
        elif key not in _PASSED_OVER:
            problems.append(Problem(where, key, "not followed by deploy.check: check it first"))
    examples = [
        r for file in sorted(folder.glob("*.example.yaml")) for r in _read(folder, file.name)
    ]
    return Loaded(resources, examples, problems)


def _read(folder: Path, path: str) -> list[Resource]:
    text = (folder / path).read_text(encoding="utf-8")
    return [Resource(path, body) for body in yaml.safe_load_all(text) if body]


def _generated(folder: Path, kind: str, generator: dict[str, Any]) -> tuple[Resource, list[str]]:
    """A generator's ConfigMap or Secret (by the name it is given, before kustomize adds a
    hash), and the fields of it that were not read."""
    data: dict[str, str] = {}
    for entry in generator.get("files", []):
        key, _, path = entry.rpartition("=")
        data[key or Path(path).name] = (folder / path).read_text(encoding="utf-8")
    for literal in generator.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    field = "data" if kind == "ConfigMap" else "stringData"
    body = {"apiVersion": "v1", "kind": kind, "metadata": {"name": generator["name"]}, field: data}
    source = ", ".join(generator.get("files", [])) or "kustomization.yaml"
    unread = sorted(set(generator) - {"name", "files", "literals", "options", "behavior"})
    return Resource(source, body), unread


def schema_problems(resource: Resource) -> list[Problem]:
    """The resource against its kind's schema: KubeRay's for a RayService, else
    Kubernetes' own."""
    if resource.body.get("apiVersion") == "ray.io/v1" and resource.kind == "RayService":
        errors = list(_rayservice_validator().iter_errors(resource.body))
        return sorted(_described(resource, errors), key=lambda problem: problem.field)
    try:
        kubernetes_validate.validate(resource.body, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return list(_described(resource, [exc]))
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [Problem(resource, "apiVersion", exc.message)]
    return []


def _described(resource: Resource, errors: list[Any]) -> Iterator[Problem]:
    for error in errors:
        path = list(error.absolute_path)
        if error.validator == "additionalProperties":
            known = error.schema.get("properties", {})
            for key in sorted(set(error.instance) - set(known)):
                yield Problem(resource, dotted([*path, key]), "unknown field")
        elif resource.kind == "Secret":
            # Never echo a Secret's values.
            yield Problem(resource, dotted(path), f"fails {error.validator}")
        else:
            yield Problem(resource, dotted(path), error.message)


@cache
def _rayservice_validator() -> jsonschema.Draft7Validator:
    schema = structural(json.loads(RAYSERVICE_SCHEMA.read_text(encoding="utf-8")))
    return jsonschema.Draft7Validator(schema)


def structural(node: Any) -> Any:
    """A CRD's OpenAPI v3 schema as plain JSON Schema, Kubernetes' own rules spelled out.

    - An object with ``properties`` holds those alone (``additionalProperties: false``)
      unless it says ``x-kubernetes-preserve-unknown-fields``: the API server drops any
      other field, and ``kubectl apply`` refuses it, so here it is an error.
    - ``x-kubernetes-int-or-string`` takes an integer or a string; ``nullable`` adds null.
    - The other ``x-kubernetes-*`` rules (list types and map keys, CEL
      ``x-kubernetes-validations``) are the API server's to apply: they are left out,
      not checked. So is the root ``metadata``, which the schema leaves open.
    """
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: structural(schema) for name, schema in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = structural(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [structural(schema) for schema in value]
        elif not key.startswith("x-kubernetes-") and key != "nullable":
            out[key] = value
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    closed = not node.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in node and "additionalProperties" not in node and closed:
        out["additionalProperties"] = False
    if node.get("nullable"):
        out = {"anyOf": [out, {"type": "null"}]}
    return out
