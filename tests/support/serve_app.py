"""A raygate Serve app on the session's cluster, in front of a loopback backend that speaks
OpenAI's wire format and answers by the last message (see :func:`respond`)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import replace

import httpx
import ray
from ray import serve

from actors.names import MANAGER_NAME, NAMESPACE
from actors.settings import Settings
from providers.supervisor import free_loopback_port
from providers.testing.fake_llm import Say, SayJson, Script, Slow, Stream
from providers.testing.plateau_backend import plateau_answer
from providers.testing.probe_server import Received
from serve.app import application

# A call that says "hold" is answered once the test sets this.
RELEASE = threading.Event()


def respond(request: Received) -> Script:
    """What the backend answers, by the last message: "slow:S", "hold" (until RELEASE),
    "json", "pieces", "long-stream"; a pipeline job's call as the plateau backend does
    (2 s late for a service named "Slowpoke ..."); else an echo."""
    text = request.body["messages"][-1]["content"]
    if "response_format" in request.body and text != "json":
        answer = plateau_answer(request)
        slow = "Slowpoke" in json.dumps(request.body["messages"])
        return replace(answer, delay=2.0) if slow and isinstance(answer, SayJson) else answer
    if text.startswith("slow:"):
        return Slow(float(text.removeprefix("slow:")))
    if text == "hold":
        RELEASE.wait(timeout=120)
        return Say("released")
    if text == "json":
        return SayJson({"answer": 42})
    if text == "pieces":
        return Stream(("Hel", "lo ", "world"))
    if text == "long-stream":
        return Stream(("word ",) * 40, gap=0.5)  # 20 s
    return Say(f"echo: {text}")


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def kill_the_clusters_manager() -> None:
    """The cluster's manager, each of its shards (see actors.shards)."""
    for actor in ray.util.list_named_actors(all_namespaces=True):
        name = actor["name"]
        if actor["namespace"] == NAMESPACE and (
            name == MANAGER_NAME or name.removeprefix(MANAGER_NAME + "-").isdigit()
        ):
            with contextlib.suppress(ValueError):
                ray.kill(ray.get_actor(name, namespace=NAMESPACE))


def the_replica() -> str:
    [replica] = [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == "serve" and "Gateway" in actor["name"]
    ]
    return replica


@contextlib.contextmanager
def serve_app(settings: Settings, key: str, model: str = "local") -> Iterator[str]:
    """The app on a free loopback port, with a manager of ``settings``; yields its URL once
    a completion of ``model`` went through (its provider actor started)."""
    kill_the_clusters_manager()
    port = free_loopback_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(application(settings), name="raygate", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": model, "messages": ask("warm-up")},
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        ).raise_for_status()
        yield url
    finally:
        serve.shutdown()
        kill_the_clusters_manager()
