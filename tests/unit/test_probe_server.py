"""The loopback server the tests measure concurrency with: what it counts at once."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from providers.testing.probe_server import ProbeServer
from tests.support.polling import eventually


async def test_two_requests_at_once_are_one_crowded_moment_past_a_limit_of_one() -> None:
    with ProbeServer(hold=0.3) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            await asyncio.gather(http.post("/a", json={}), http.post("/b", json={}))
            await http.post("/c", json={})

    assert (server.max_in_flight, server.max_connected) == (2, 2)
    [moment] = server.crowded(1)
    assert [span.request for span in moment] == [0, 1]
    assert server.crowded(2) == []
    assert all(span.ended is not None and not span.hung_up for span in server.spans)


async def test_a_request_whose_client_hangs_up_ends_there_marked_hung_up() -> None:
    with ProbeServer(hold=10.0, stop_on_disconnect=True) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.post("/", json={}, timeout=0.2)
        await eventually(lambda: _ended(server), "the server to see the hang-up")

    [span] = server.spans
    assert span.hung_up
    assert span.ended is not None
    assert span.ended - span.arrived < 5.0
    assert server.abandoned == 1


async def _ended(server: ProbeServer) -> bool:
    return all(span.ended is not None for span in server.spans)


async def test_work_left_by_a_client_that_hung_up_is_not_counted_as_its_connected() -> None:
    """A server that finishes the work of a client gone (no stop on disconnect) works on
    two requests at once when the next comes; only one of their clients is connected."""
    with ProbeServer(hold=1.0) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.post("/gone", json={}, timeout=0.2)
            await http.post("/next", json={})

    assert (server.max_in_flight, server.max_connected) == (2, 1)
    gone, following = server.spans
    assert following.beside == ()
    assert following.arrived < (gone.ended or 0.0)


async def test_a_killed_server_resets_its_calls_and_refuses_new_ones() -> None:
    with ProbeServer(hold=5.0) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            in_flight = asyncio.ensure_future(http.post("/", json={}))
            await eventually(lambda: server.in_flight == 1, "the call to arrive")
            server.kill()
            with pytest.raises(httpx.TransportError):
                await in_flight
            with pytest.raises(httpx.ConnectError):
                await http.post("/", json={})


def test_a_killed_server_revived_serves_again_at_its_address() -> None:
    with ProbeServer() as server:
        url = server.url
        httpx.post(url, json={"n": 1}).raise_for_status()
        server.kill()
        with pytest.raises(httpx.ConnectError):
            httpx.post(url, json={"n": 2})

        server.revive()

        httpx.post(url, json={"n": 3}).raise_for_status()
        assert server.url == url
        assert server.bodies == [{"n": 1}, {"n": 3}]
