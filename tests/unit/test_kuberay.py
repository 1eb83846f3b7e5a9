"""deploy/kuberay, checked offline by deploy.check: the deployment as shipped has no
problem, and a broken copy fails naming the field that is wrong."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.check import check, main
from deploy.manifests import load

DEPLOYMENT = Path(__file__).parents[2] / "deploy" / "kuberay"


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A copy of deploy/kuberay to break."""
    return Path(shutil.copytree(DEPLOYMENT, tmp_path / "kuberay"))


def edit(folder: Path, file: str, change: Callable[[list[Any]], None]) -> None:
    """Rewrite ``file``'s YAML documents after ``change`` has had them."""
    path = folder / file
    documents = list(yaml.safe_load_all(path.read_text()))
    change(documents)
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))


def messages(folder: Path) -> list[str]:
    return [str(problem) for problem in check(folder)]


def test_the_deployment_as_shipped_has_no_problem() -> None:
    assert messages(DEPLOYMENT) == []


def test_every_resource_of_the_kustomization_and_the_example_secrets_are_read() -> None:
    loaded = load(DEPLOYMENT)

    # Without them all, "no problem" above would say little.
    assert sorted(str(resource) for resource in loaded.resources) == [
        "head-volume.yaml: PersistentVolumeClaim/raygate-head",
        "namespace.yaml: Namespace/raygate",
        "raygate.yaml: ConfigMap/raygate-config",
        "rayservice.yaml: RayService/raygate",
        "redis.yaml: Deployment/raygate-redis",
        "redis.yaml: PersistentVolumeClaim/raygate-redis",
        "redis.yaml: Service/raygate-redis",
    ]
    assert [str(resource) for resource in loaded.examples] == [
        "secret.example.yaml: Secret/raygate-keys",
        "secret.example.yaml: Secret/raygate-redis",
    ]


def test_a_misspelt_field_of_a_worker_group_is_named(copy: Path) -> None:
    def misspell(documents: list[Any]) -> None:
        group = documents[0]["spec"]["rayClusterConfig"]["workerGroupSpecs"][1]
        group["maxReplica"] = group.pop("maxReplicas")

    edit(copy, "rayservice.yaml", misspell)

    assert messages(copy) == [
        "rayservice.yaml: RayService/raygate: "
        "spec.rayClusterConfig.workerGroupSpecs[1]: 'maxReplicas' is a required property",
        "rayservice.yaml: RayService/raygate: "
        "spec.rayClusterConfig.workerGroupSpecs[1].maxReplica: unknown field",
    ]


def test_a_wrong_type_in_a_deployment_is_named(copy: Path) -> None:
    def wrong_type(documents: list[Any]) -> None:
        documents[1]["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = (
            "six-three-seven-nine"
        )

    edit(copy, "redis.yaml", wrong_type)

    assert messages(copy) == [
        "redis.yaml: Deployment/raygate-redis: spec.template.spec.containers[0].ports[0]"
        ".containerPort: 'six-three-seven-nine' is not of type 'integer'"
    ]


def test_an_unknown_setting_in_raygate_yaml_is_named(copy: Path) -> None:
    def unknown_setting(documents: list[Any]) -> None:
        documents[0]["serve"]["resuls_dir"] = documents[0]["serve"].pop("results_dir")

    edit(copy, "raygate.yaml", unknown_setting)

    assert messages(copy) == [
        "raygate.yaml: ConfigMap/raygate-config: data.raygate.yaml: serve.resuls_dir: "
        "Extra inputs are not permitted"
    ]


def test_a_bad_value_in_the_example_secret_is_named_as_the_head_reads_it(copy: Path) -> None:
    def bad_value(documents: list[Any]) -> None:
        documents[0]["stringData"]["RAYGATE_SERVE__TENANTS"] = '{"team-a": {"keys": []}}'

    edit(copy, "secret.example.yaml", bad_value)

    assert messages(copy) == [
        "raygate.yaml: ConfigMap/raygate-config: data.raygate.yaml: serve.tenants.team-a.keys: "
        "Tuple should have at least 1 item after validation, not 0"
    ]


def test_a_misspelt_serve_config_field_that_serve_would_pass_over_is_named(copy: Path) -> None:
    def misspell(documents: list[Any]) -> None:
        spec = documents[0]["spec"]
        config = yaml.safe_load(spec["serveConfigV2"])
        options = config["applications"][0]["deployments"][0]["ray_actor_options"]
        options["num_cpu"] = options.pop("num_cpus")
        spec["serveConfigV2"] = yaml.safe_dump(config)

    edit(copy, "rayservice.yaml", misspell)

    assert messages(copy) == [
        "rayservice.yaml: RayService/raygate: spec.serveConfigV2.applications[0]"
        ".deployments[0].ray_actor_options.num_cpu: unknown field"
    ]


def test_a_serve_config_value_of_the_wrong_type_is_named_as_serve_words_it(copy: Path) -> None:
    def wrong_type(documents: list[Any]) -> None:
        spec = documents[0]["spec"]
        config = yaml.safe_load(spec["serveConfigV2"])
        config["http_options"]["port"] = "eighty"
        spec["serveConfigV2"] = yaml.safe_dump(config)

    edit(copy, "rayservice.yaml", wrong_type)

    assert messages(copy) == [
        "rayservice.yaml: RayService/raygate: spec.serveConfigV2.http_options.port: "
        "Input should be a valid integer, unable to parse string as an integer"
    ]


def test_a_gpu_host_that_no_worker_group_is_labelled_is_named(copy: Path) -> None:
    def second_host(documents: list[Any]) -> None:
        documents[0]["models"]["qwen3:8b"] = {"provider": "ollama", "host": "b"}

    edit(copy, "raygate.yaml", second_host)

    assert messages(copy) == [
        "rayservice.yaml: RayService/raygate: spec.rayClusterConfig.workerGroupSpecs: "
        "no worker group is labelled raygate.io/gpu-host: b, "
        "for local-ollama-http://localhost:11434@b"
    ]


def test_an_ollama_listening_past_the_pods_loopback_is_named(copy: Path) -> None:
    def listen_everywhere(documents: list[Any]) -> None:
        gpu = documents[0]["spec"]["rayClusterConfig"]["workerGroupSpecs"][1]
        ollama = gpu["template"]["spec"]["containers"][1]
        ollama["env"][0] = {"name": "OLLAMA_HOST", "value": "0.0.0.0:11434"}

    edit(copy, "rayservice.yaml", listen_everywhere)

    assert messages(copy) == [
        "rayservice.yaml: RayService/raygate: spec.rayClusterConfig.workerGroupSpecs[1]"
        ".template.spec.containers[1].env.OLLAMA_HOST: Ollama listens on 0.0.0.0:11434: "
        "past the Pod's loopback, past the gate"
    ]


def test_a_kustomization_key_the_check_does_not_follow_is_refused(copy: Path) -> None:
    def patched(documents: list[Any]) -> None:
        documents[0]["patches"] = [{"path": "gpu.yaml"}]

    edit(copy, "kustomization.yaml", patched)

    assert messages(copy) == [
        "kustomization.yaml: patches: not followed by deploy.check: check it first"
    ]


def test_the_command_exits_non_zero_naming_the_field(
    copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def misspell(documents: list[Any]) -> None:
        documents[0]["spec"]["accesModes"] = documents[0]["spec"].pop("accessModes")

    edit(copy, "head-volume.yaml", misspell)

    assert main([str(copy)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "head-volume.yaml: PersistentVolumeClaim/raygate-head: spec.accesModes: unknown field",
        f"{copy}: 1 problem(s)",
    ]
