"""Classification per the table in docs/guide.md ("Concurrency groups"), and the model registry."""

from __future__ import annotations

import pytest

from actors.errors import InvalidBaseURL, UnknownModel, UnknownProvider
from actors.groups import ModelEntry, ResourceKind, classify, model_entry

LOCAL, REMOTE_SERVER, REMOTE_API = (
    ResourceKind.LOCAL_SERVER,
    ResourceKind.REMOTE_SERVER,
    ResourceKind.REMOTE_API,
)


@pytest.mark.parametrize(
    ("provider", "base_url", "kind", "group_id", "limit"),
    [
        ("anthropic", None, REMOTE_API, "remote-api-anthropic", None),
        ("anthropic", "http://localhost:9000", REMOTE_API, "remote-api-anthropic", None),
        ("openai", None, REMOTE_API, "remote-api-openai", None),
        ("ollama", None, LOCAL, "local-ollama-http://localhost:11434", 1),
        ("ollama", "http://127.0.0.1:11434/", LOCAL, "local-ollama-http://127.0.0.1:11434", 1),
        ("ollama", "http://[::1]:11434", LOCAL, "local-ollama-http://[::1]:11434", 1),
        (
            "ollama",
            "http://server.com:11434",
            REMOTE_SERVER,
            "remote-ollama-http://server.com:11434",
            None,
        ),
        ("lmstudio", None, LOCAL, "local-lmstudio-http://localhost:1234", 1),
        (
            "lmstudio",
            "http://gpu-box:1234/v1",
            REMOTE_SERVER,
            "remote-lmstudio-http://gpu-box:1234",
            None,
        ),
        (
            "openai-compatible",
            "http://localhost:8000/v1",
            LOCAL,
            "local-openai-compatible-http://localhost:8000",
            1,
        ),
        (
            "openai-compatible",
            "https://vllm.internal/v1",
            REMOTE_SERVER,
            "remote-openai-compatible-https://vllm.internal",
            None,
        ),
    ],
)
def test_classification_follows_the_design_table(
    provider: str, base_url: str | None, kind: ResourceKind, group_id: str, limit: int | None
) -> None:
    spec = classify(provider, base_url)

    assert (spec.kind, spec.id, spec.default_limit) == (kind, group_id, limit)


def test_same_localhost_url_on_two_gpu_hosts_is_two_groups() -> None:
    a = classify("ollama", "http://localhost:11434", host="gpu-a")
    b = classify("ollama", "http://localhost:11434", host="gpu-b")

    assert (a.id, b.id) == (
        "local-ollama-http://localhost:11434@gpu-a",
        "local-ollama-http://localhost:11434@gpu-b",
    )


def test_host_is_ignored_for_servers_not_on_loopback() -> None:
    spec = classify("ollama", "http://server.com:11434", host="gpu-a")

    assert (spec.id, spec.host) == ("remote-ollama-http://server.com:11434", None)


def test_unknown_provider_names_the_known_ones() -> None:
    with pytest.raises(UnknownProvider) as caught:
        classify("cohere")

    assert str(caught.value) == (
        "unknown provider 'cohere'; use one of: anthropic, openai, ollama, lmstudio, "
        "openai-compatible"
    )


@pytest.mark.parametrize(
    ("base_url", "reason"),
    [
        ("localhost:11434", "it must start with http:// or https://"),
        ("ftp://files.example", "it must start with http:// or https://"),
        ("http://", "it has no host name"),
        ("http://localhost:99999", "its port is not a number from 0 to 65535"),
    ],
)
def test_bad_base_url_is_refused_with_the_reason(base_url: str, reason: str) -> None:
    with pytest.raises(InvalidBaseURL) as caught:
        classify("ollama", base_url)

    assert str(caught.value) == f"invalid base URL {base_url!r}: {reason}"


def test_openai_compatible_server_needs_a_base_url() -> None:
    with pytest.raises(InvalidBaseURL, match="provider 'openai-compatible' needs a base URL"):
        classify("openai-compatible")


def test_registry_maps_a_model_id_to_its_group() -> None:
    models = {
        "gpt-oss:20b": ModelEntry(provider="ollama", host="gpu-a"),
        "claude-sonnet": ModelEntry(provider="anthropic"),
    }

    assert (
        model_entry(models, "gpt-oss:20b").specs()[0].id
        == "local-ollama-http://localhost:11434@gpu-a"
    )
    assert model_entry(models, "claude-sonnet").specs()[0].id == "remote-api-anthropic"


def test_unknown_model_names_the_known_ones() -> None:
    models = {"b-model": ModelEntry(provider="openai"), "a-model": ModelEntry(provider="openai")}

    with pytest.raises(UnknownModel) as caught:
        model_entry(models, "gpt-5").specs()

    assert str(caught.value).startswith(
        "unknown model 'gpt-5'; known models: 'a-model', 'b-model'. Name a model as provider/model"
    )


def test_a_provider_slash_model_id_resolves_without_configuration() -> None:
    models = {"meta/llama": ModelEntry(provider="ollama", host="gpu-a")}

    assert model_entry(models, "openai/gpt-4o-mini") == ModelEntry(
        provider="openai", name="gpt-4o-mini"
    )
    assert (
        model_entry(models, "ollama/llama3.2").specs()[0].id
        == "local-ollama-http://localhost:11434"
    )
    assert (
        model_entry(models, "lmstudio/qwen").specs()[0].id == "local-lmstudio-http://localhost:1234"
    )
    # The registry comes first, also for ids with a slash.
    assert (
        model_entry(models, "meta/llama").specs()[0].id
        == "local-ollama-http://localhost:11434@gpu-a"
    )
    # A provider without a usual address, or none at all, needs the registry.
    for model_id in ("openai-compatible/qwen", "vllm/qwen", "gpt-4o-mini/"):
        with pytest.raises(UnknownModel):
            model_entry(models, model_id).specs()
