"""Building the backend for a group: the provider's module, its base URL, its key."""

from __future__ import annotations

import os
from collections.abc import Mapping

import httpx
from pydantic import SecretStr

from actors.groups import GroupSpec, Provider
from actors.settings import Settings
from providers.anthropic import AnthropicBackend
from providers.errors import MissingAPIKey
from providers.http import Backend
from providers.ollama import OllamaBackend
from providers.openai import LMStudioBackend, OpenAIBackend, OpenAICompatibleBackend, Quirks

BACKENDS: Mapping[Provider, type[Backend]] = {
    Provider.OPENAI: OpenAIBackend,
    Provider.ANTHROPIC: AnthropicBackend,
    Provider.OLLAMA: OllamaBackend,
    Provider.LMSTUDIO: LMStudioBackend,
    Provider.OPENAI_COMPATIBLE: OpenAICompatibleBackend,
}

# Where a key is looked for when the settings have none, in order.
KEY_ENV_VARS: Mapping[Provider, tuple[str, ...]] = {
    Provider.OPENAI: ("RAYGATE_API_KEYS__OPENAI", "OPENAI_API_KEY"),
    Provider.ANTHROPIC: ("RAYGATE_API_KEYS__ANTHROPIC", "ANTHROPIC_API_KEY"),
}


def api_key_for(provider: Provider, settings: Settings) -> SecretStr | None:
    """The key from the settings, else from the provider's usual variables.

    A remote API without one is a MissingAPIKey error; local servers need none.
    """
    if provider in settings.api_keys:
        return settings.api_keys[provider]
    for name in KEY_ENV_VARS.get(provider, ()):
        if os.environ.get(name):
            return SecretStr(os.environ[name])
    if provider in KEY_ENV_VARS:
        raise MissingAPIKey(provider.value, KEY_ENV_VARS[provider])
    return None


def build_backend(
    spec: GroupSpec,
    *,
    api_key: SecretStr | None,
    timeout: float,
    quirks: Quirks | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Backend:
    kind = BACKENDS[spec.provider]
    if kind is OpenAICompatibleBackend or kind is LMStudioBackend:
        return kind(
            spec.base_url,
            group=spec.id,
            api_key=api_key,
            timeout=timeout,
            transport=transport,
            quirks=quirks or Quirks(),
        )
    return kind(spec.base_url, group=spec.id, api_key=api_key, timeout=timeout, transport=transport)
