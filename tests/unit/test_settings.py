"""Settings: YAML + environment, validated once, errors that name the field."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest

from actors import configdoc
from actors.errors import ConfigError
from actors.settings import load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAYGATE_CONFIG", raising=False)
    monkeypatch.delenv("RAYGATE_QUEUE__CONCURRENCY", raising=False)
    monkeypatch.delenv("RAYGATE_QUEUE__ENABLED", raising=False)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "raygate.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_gate_through_the_manager_with_no_global_cap() -> None:
    settings = load_settings()

    assert settings.queue.enabled is True
    assert settings.queue.concurrency is None
    assert settings.queue.lease_ttl_seconds == 60.0
    assert settings.queue.max_pending_per_group == 10_000
    assert settings.models == {}


def test_yaml_file_sets_limits_and_models(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
queue:
  concurrency: 8
  group_limits:
    "local-ollama-http://localhost:11434@gpu-a": 2
    remote-api-openai: 50
models:
  gpt-oss:20b: {provider: ollama, host: gpu-a}
""",
    )

    settings = load_settings(path)

    assert settings.queue.concurrency == 8
    assert settings.queue.group_limits == {
        "local-ollama-http://localhost:11434@gpu-a": 2,
        "remote-api-openai": 50,
    }
    assert (
        settings.models["gpt-oss:20b"].specs()[0].id == "local-ollama-http://localhost:11434@gpu-a"
    )


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "queue:\n  concurrency: 8\n  enabled: true\n")
    monkeypatch.setenv("RAYGATE_QUEUE__CONCURRENCY", "3")
    monkeypatch.setenv("RAYGATE_QUEUE__ENABLED", "false")

    settings = load_settings(path)

    assert (settings.queue.concurrency, settings.queue.enabled) == (3, False)


def test_config_path_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAYGATE_CONFIG", str(write(tmp_path, "queue: {concurrency: 5}\n")))

    assert load_settings().queue.concurrency == 5


@pytest.mark.parametrize(
    ("yaml_text", "problem"),
    [
        (
            "queue: {group_limits: {remote-api-openai: -1}}",
            "queue.group_limits.remote-api-openai: Input should be greater than 0 (got -1)",
        ),
        ("queue: {concurrency: 0}", "queue.concurrency: Input should be greater than 0 (got 0)"),
        (
            "queue: {lease_ttl_seconds: -5}",
            "queue.lease_ttl_seconds: Input should be greater than 0 (got -5)",
        ),
        ("queue: {concurency: 4}", "queue.concurency: Extra inputs are not permitted (got 4)"),
        (
            "models: {m: {provider: ollama, base_url: 'localhost:11434'}}",
            "models.m: Value error, invalid base URL 'localhost:11434': "
            "it must start with http:// or https://",
        ),
        (
            "models: {m: {provider: cohere}}",
            "models.m.provider: Input should be 'anthropic', 'openai', 'ollama', 'lmstudio' "
            "or 'openai-compatible'",
        ),
        (
            "models: {m: {servers: [{base_url: 'http://gpu-a:8000'}]}}",
            "models.m.servers.0.provider: Field required",
        ),
        (
            "models: {m: {provider: ollama, servers: [{provider: ollama}]}}",
            "models.m: Value error, name either servers or provider, base_url and host, not both",
        ),
        ("models: {m: {}}", "models.m: Value error, name its provider (or its servers)"),
        (
            "models: {m: {deployments: [{provider: ollama}]}}",
            "models.m: Value error, `deployments` is now `servers`: name a pool's servers there",
        ),
        (
            "models: {m: {servers: [{provider: ollama}, "
            "{provider: ollama, base_url: 'http://localhost:11434'}]}}",
            "models.m: Value error, servers 0 and 1 are one server "
            "(local-ollama-http://localhost:11434)",
        ),
        (
            "models: {m: {servers: [{provider: vllm-like}]}}",
            "models.m.servers.0.provider: Input should be 'anthropic', 'openai', 'ollama', "
            "'lmstudio' or 'openai-compatible'",
        ),
        (
            "models:\n"
            "  m: {servers: [{provider: ollama, base_url: 'http://gpu-a:11434', limit: 2}]}\n"
            "  n: {servers: [{provider: ollama, base_url: 'http://gpu-a:11434', limit: 3}]}",
            "(top level): Value error, models.n.servers.0.limit is 3, but "
            "models.m.servers.0.limit gives remote-ollama-http://gpu-a:11434 the limit 2: "
            "one server, one limit",
        ),
        (
            "models:\n"
            "  m: {servers: [{provider: ollama, base_url: 'http://gpu-a:11434', weight: 2}]}\n"
            "  n: {servers: [{provider: ollama, base_url: 'http://gpu-a:11434', weight: 1}]}",
            "(top level): Value error, models.n.servers.0.weight is 1.0, but "
            "models.m.servers.0.weight gives remote-ollama-http://gpu-a:11434 the weight "
            "2.0: one server, one weight",
        ),
        (
            "models: {m: {servers: [{provider: ollama, weight: 0}]}}",
            "models.m.servers.0.weight: Input should be greater than 0 (got 0)",
        ),
        (
            "models: {m: {provider: ollama, fallbacks: [m]}}",
            "(top level): Value error, models.m.fallbacks.0 names the model itself",
        ),
        (
            "models: {m: {provider: ollama, fallbacks: [gpt-9]}}",
            "(top level): Value error, models.m.fallbacks.0: unknown model 'gpt-9'; known "
            "models: 'm'. Name a model as provider/model (openai/gpt-4o-mini, "
            "anthropic/claude-sonnet-4-5, ollama/llama3.2, lmstudio/qwen2.5-7b-instruct), or "
            "add it under `models:` in the settings",
        ),
        (
            "models:\n  a: {provider: ollama, fallbacks: [b]}\n"
            "  b: {provider: openai, fallbacks: [c]}\n  c: {provider: anthropic, fallbacks: [a]}",
            "(top level): Value error, models' fallbacks go round: a -> b -> c -> a",
        ),
        (
            "models: {m: {provider: ollama, fallback_after_seconds: 0}}",
            "models.m.fallback_after_seconds: Input should be greater than 0 (got 0)",
        ),
    ],
)
def test_invalid_value_fails_at_load_naming_the_field(
    tmp_path: Path, yaml_text: str, problem: str
) -> None:
    path = write(tmp_path, yaml_text)

    with pytest.raises(ConfigError) as caught:
        load_settings(path)

    assert caught.value.problems == (problem,)
    assert str(caught.value) == f"invalid raygate settings from {path}: {problem}"


def test_malformed_yaml_reports_where(tmp_path: Path) -> None:
    path = write(tmp_path, "queue:\n  concurrency: [1, 2\n")

    with pytest.raises(ConfigError) as caught:
        load_settings(path)

    (problem,) = caught.value.problems
    assert problem.startswith("malformed YAML at line 3, column 1:")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the top level must be a mapping, got list"):
        load_settings(write(tmp_path, "- queue\n"))


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file: No such file or directory"):
        load_settings(tmp_path / "absent.yaml")


def test_bad_environment_value_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYGATE_QUEUE__CONCURRENCY", "lots")

    with pytest.raises(ConfigError) as caught:
        load_settings()

    assert caught.value.problems == (
        "queue.concurrency: Input should be a valid integer, unable to parse string as an integer",
    )


def test_settings_are_frozen_and_picklable(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "models: {m: {provider: openai}}\n"))

    assert pickle.loads(pickle.dumps(settings)) == settings
    with pytest.raises(ValueError, match="frozen"):
        settings.queue = settings.queue  # type: ignore[misc]


@pytest.mark.parametrize(
    "document",
    ["README.md", "docs/guide.md", "docs/operations.md", "docs/configuration.md"],
    ids=["readme", "guide", "operations", "configuration"],
)
def test_the_settings_examples_in_the_docs_load(document: str, tmp_path: Path) -> None:
    text = (Path(__file__).parents[2] / document).read_text(encoding="utf-8")
    examples = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    assert examples

    for example in examples:
        load_settings(write(tmp_path, example))


def test_the_configuration_page_is_the_one_the_settings_describe() -> None:
    page = Path(__file__).parents[2] / "docs" / "configuration.md"

    assert configdoc.main(["--check", str(page)]) == 0
    assert all(
        f"`{name}`" in configdoc.markdown()
        for name in ("queue.hand_over", "models", "serve.tenants.<name>.sees_all")
    )


def test_a_pools_servers_are_its_groups_and_their_limits_the_groups_limits(tmp_path: Path) -> None:
    """A server shared by two pooled models (one Ollama) is one group, counted once."""
    settings = load_settings(
        write(
            tmp_path,
            "models:\n"
            "  llama:\n"
            "    servers:\n"
            "      - {provider: ollama, base_url: 'http://gpu-a:11434', limit: 2}\n"
            "      - {provider: ollama, base_url: 'http://gpu-b:11434', weight: 3}\n"
            "  qwen:\n"
            "    servers: [{provider: ollama, base_url: 'http://gpu-a:11434', limit: 2}]\n",
        )
    )

    assert [spec.id for spec in settings.models["llama"].specs()] == [
        "remote-ollama-http://gpu-a:11434",
        "remote-ollama-http://gpu-b:11434",
    ]
    assert settings.group_limits() == {"remote-ollama-http://gpu-a:11434": 2}
    assert settings.group_weights() == {"remote-ollama-http://gpu-b:11434": 3}


def test_an_environment_variable_that_is_not_json_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAYGATE_SERVE__API_KEYS", "[not-json")

    with pytest.raises(ConfigError, match=r'field "serve" .*: its value is not JSON'):
        load_settings()
