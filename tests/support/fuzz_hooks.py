"""Schemathesis hooks for the fuzz pass over the endpoint (``SCHEMATHESIS_HOOKS``): each
pipeline job a generated request starts is cancelled at once, so that generated jobs do
not queue up on the one cap-1 backend ahead of every later generated request."""

from __future__ import annotations

from typing import Any

import httpx
import schemathesis


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    if case.method == "POST" and case.path == "/v1/pipelines" and response.status_code == 202:
        job = response.json()["id"]
        url = response.request.url.rsplit("/v1/pipelines", 1)[0] + f"/v1/pipelines/{job}"
        headers = {"Authorization": response.request.headers["Authorization"]}
        httpx.delete(url, headers=headers, timeout=60).raise_for_status()
