"""A deterministic plateau-job backend: answers derived from the request, valid for its schema."""

from __future__ import annotations

import hashlib
import json

from providers.testing.fake_llm import Fail, SayJson, Script
from providers.testing.probe_server import Received


def plateau_answer(request: Received) -> Script:
    """Same prompt, same answer: so parity runs can be compared byte for byte.

    Each answer names a digest of the prompt, so a plateau's features carry
    the previous plateau's (the chain's dependency shows in the output).
    A prompt about a service named "Broken" fails with a 500, every time.
    """
    body = request.body
    prompt = json.dumps(body["messages"])
    if "Service: Broken" in prompt:
        return Fail(500, "backend exploded")
    digest = hashlib.sha1(prompt.encode()).hexdigest()[:8]
    schema = body["response_format"]["json_schema"]["name"]
    if schema == "ambitions":
        return SayJson({"ambitions": [f"ambition-{digest}"]})
    if schema == "featureset":
        return SayJson({"features": [{"name": f"feature-{digest}", "description": "one"}]})
    return SayJson({"items": [f"item-{digest}"]})
