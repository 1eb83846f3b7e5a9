"""The Serve endpoint with two replicas: a tenant's quota holds across both."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from pydantic import SecretStr

from actors.groups import ModelEntry
from actors.settings import ServeSettings, Settings, TenantSettings
from providers.testing.fake_llm import FakeLLMServer, OpenAIDialect
from tests.support.serve_app import ask, respond, serve_app

KEY = "sk-test-operator"
TENANT_KEY = "sk-test-replicated"
RPM = 4
REPLICAS = 2


@pytest.mark.slow
async def test_a_tenants_requests_per_minute_hold_across_the_endpoints_replicas(
    ray_session: None,
) -> None:
    """Twenty requests at once from a tenant of 4 rpm reach both replicas; each admits its
    share, 2, so the endpoint admits at most 4, and every other request is refused with
    429 and a Retry-After that names the share."""
    with FakeLLMServer(OpenAIDialect(), responder=respond) as local:
        settings = Settings(
            models={"local": ModelEntry(provider="openai-compatible", base_url=local.url + "/v1")},
            serve=ServeSettings(
                api_keys=(SecretStr(KEY),),
                tenants={"replicated": TenantSettings(keys=(SecretStr(TENANT_KEY),), rpm=RPM)},
                replicas=REPLICAS,
            ),
        )
        with serve_app(settings, KEY) as url:
            headers = {"Authorization": f"Bearer {TENANT_KEY}"}
            async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
                body = {"model": "local", "messages": ask("replicated")}
                answers = await asyncio.gather(
                    *(http.post("/v1/chat/completions", json=body) for _ in range(20))
                )

    admitted = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    # At least one replica saw two or more of the twenty; none admitted over its share.
    assert RPM // REPLICAS <= len(admitted) <= RPM
    assert {a.status_code for a in refused} == {429}
    for answer in refused:
        assert (
            f"rpm of {RPM} (its share at each of {REPLICAS} replicas)"
            in (answer.json()["error"]["message"])
        )
        assert 1 <= int(answer.headers["Retry-After"]) <= 60
