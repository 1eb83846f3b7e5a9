"""The live queue page, in a real headless Chromium against the running Serve app: rows in
grant order with who asked and their ETAs, updates pushed without a reload, a run cancelled
from the page, a reconnect after the replica dies, 10,000 waiters, and a pool's servers'
health and the calls its fallback took."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from playwright.async_api import Page, async_playwright, expect
from pydantic import SecretStr

from actors.client import ManagerClient
from actors.groups import ModelEntry, ServerEntry, classify
from actors.names import MANAGER_NAME, NAMESPACE
from actors.ops import Acquire, Cancel, FellBack, Release, TakeOut
from actors.options import CallLabels, CallOptions
from actors.settings import PipelineSettings, QueueSettings, ServeSettings, Settings
from providers.testing.fake_llm import FakeLLMServer, OpenAIDialect
from serve.page import COOKIE
from tests.support.polling import eventually
from tests.support.serve_app import RELEASE, ask, respond, serve_app, the_replica

pytestmark = pytest.mark.slow

KEY = "sk-page-0123"
# A server of the page's pool that no call reaches (port 9, discard).
IDLE = "http://127.0.0.1:9/v1"
# Where the run leaves its screenshot of the page under load (docs/ has one of them).
SCREENSHOTS = Path(__file__).resolve().parents[2] / ".artifacts"
# As the machine's own check starts Debian's Chromium: no sandbox as root, and no
# background connections, which this machine's closed network refuses.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass(frozen=True)
class App:
    url: str
    local: FakeLLMServer  # cap 1
    group: str

    def http(self, key: str | None = KEY) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=60)

    @property
    def manager(self) -> ManagerClient:
        return ManagerClient(ray.get_actor(MANAGER_NAME, namespace=NAMESPACE))

    async def levels(self) -> tuple[int, int]:
        """Calls of the group held, and waiting."""
        stats = await self.manager.stats()
        return stats.active_by_group.get(self.group, 0), stats.pending_by_group.get(self.group, 0)

    def levels_are(self, held: int, waiting: int) -> Any:
        async def check() -> bool:
            return await self.levels() == (held, waiting)

        return check


@pytest.fixture(scope="module")
def app(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    data = tmp_path_factory.mktemp("page")
    with FakeLLMServer(OpenAIDialect(), responder=respond, stop_on_disconnect=True) as local:
        base_url = local.url + "/v1"
        # A pool of the local server and one nobody calls, handing on to the local server.
        servers = tuple(
            ServerEntry(provider="openai-compatible", base_url=url) for url in (base_url, IDLE)
        )
        settings = Settings(
            models={
                "local": ModelEntry(provider="openai-compatible", base_url=base_url),
                "pool": ModelEntry(servers=servers, fallbacks=("local",)),
            },
            queue=QueueSettings(max_pending_per_group=20_000),
            pipeline=PipelineSettings(
                model="local", plateaus=1, mapping_types=("data",), cache=False
            ),
            serve=ServeSettings(api_keys=(SecretStr(KEY),), results_dir=data / "results"),
        )
        with serve_app(settings, KEY) as url:
            yield App(url, local, classify("openai-compatible", base_url).id)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Page]:
    path = shutil.which("chromium")
    if path is None:
        message = "Debian's chromium is not installed: apt-get install chromium"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 900})
            yield await context.new_page()
        finally:
            await browser.close()


async def test_the_page_and_its_stream_are_behind_the_keys(app: App) -> None:
    """Without a key: a login form, and 401s. A valid key buys a session cookie (not the
    key) that opens the page and its stream; a change made with the cookie alone must come
    from the page."""
    async with app.http(key=None) as http:
        login = await http.get("/")
        refused_stream = await http.get("/v1/queue/events")
        wrong = await http.post("/login", data={"key": "sk-wrong"})
        right = await http.post("/login", data={"key": KEY})
        page = await http.get("/")
        forged = await http.delete("/v1/pipelines/nope")
        from_page = await http.delete("/v1/pipelines/nope", headers={"X-Raygate-Page": "1"})
        async with http.stream("GET", "/v1/queue/events") as stream:
            kind = stream.headers["content-type"]
            lines = aiter(stream.aiter_lines())
            first = [line async for line in _until_data(lines)]

    assert login.status_code == 401
    assert '<form method="post" action="/login">' in login.text
    assert refused_stream.status_code == 401
    assert wrong.status_code == 401
    assert "No such key" in wrong.text
    assert right.status_code == 303
    assert right.headers["location"] == "/"
    cookie = right.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert KEY not in cookie
    assert right.cookies[COOKIE]
    assert page.status_code == 200
    assert "/static/page.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert forged.status_code == 403
    assert from_page.status_code == 404  # authorized: there is no run "nope"
    assert kind.startswith("text/event-stream")
    assert first[0] == "retry: 1000"
    assert "event: state" in first
    assert first[-1].startswith("data: {")
    assert '"queue"' in first[-1]


async def _until_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    async for line in lines:
        if line:
            yield line
        if line.startswith("data: "):
            return


async def test_the_page_shows_the_queue_live_and_cancels_a_run(app: App) -> None:
    expect.set_options(timeout=30_000)
    manager = app.manager
    rows_of_group = f'article[data-group="{app.group}"] .waiters tbody tr'
    flows_of_group = f'article[data-group="{app.group}"] .flows tbody tr'
    async with app.http() as http, chromium() as page:
        await page.goto(app.url)
        await page.fill("#key", KEY)
        await page.click("button[type=submit]")
        status = page.locator("#status")
        await expect(status).to_have_attribute("data-state", "live")
        await page.evaluate("window.notReloaded = true")
        rows = page.locator(rows_of_group)
        flows = page.locator(flows_of_group)

        # A cap-1 group held busy; six calls of mixed priority queued one by one, then a
        # pipeline run of priority 2 whose three services' first two calls each (ambitions,
        # and features of plateau 1) queue after them.
        priorities = [3, 9, 5, 9, 4, 7]
        RELEASE.clear()
        try:
            holder = asyncio.create_task(_chat(http, "hold", 5, "page-hold"))
            await eventually(app.levels_are(1, 0), "the held call to take the slot")
            calls = []
            for i, priority in enumerate(priorities):
                calls.append(asyncio.create_task(_chat(http, f"call {i}", priority, f"page-{i}")))
                await eventually(app.levels_are(1, i + 1), f"call {i} queued")
            services = [{"id": f"svc-{i}", "name": f"Slowpoke {i}"} for i in range(3)]
            submitted = await http.post("/v1/pipelines", json={"services": services, "priority": 2})
            run = submitted.json()["id"]
            await eventually(app.levels_are(1, 12), "the run's six calls queued")

            await expect(rows).to_have_count(12)
            # Every call so far is the default tenant's (its key is serve.api_keys).
            await expect(flows).to_have_count(1)
            await expect(flows.first.locator("td")).to_have_text(
                [
                    "tenant default",
                    "12",
                    "1",
                    re.compile(r"[\d.]+ s"),
                    re.compile(r"[\d,]+"),
                    re.compile(r"\d+%"),
                ]
            )
            shown = await rows.evaluate_all(
                "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
            )
            etas = await rows.evaluate_all("rows => rows.map(r => Number(r.cells[5].dataset.at))")
            await expect(page.locator(f'#runs tr[data-run-id="{run}"]')).to_be_visible()
            SCREENSHOTS.mkdir(exist_ok=True)
            await page.screenshot(path=SCREENSHOTS / "queue-page.png", full_page=True)
            await page.set_viewport_size({"width": 390, "height": 844})  # a phone
            await page.screenshot(path=SCREENSHOTS / "queue-page-phone.png")
            await page.set_viewport_size({"width": 1280, "height": 900})
        finally:
            RELEASE.set()  # also when the test fails: the holder's thread ends
        await asyncio.gather(holder, *calls)

        by_priority = sorted(range(6), key=lambda i: (-priorities[i], i))
        assert [row[4] for row in shown[:6]] == [f"page-{i}" for i in by_priority]
        assert [row[0] for row in shown] == [str(n) for n in range(1, 13)]
        assert [int(row[1]) for row in shown] == [9, 9, 7, 5, 4, 3, *[2] * 6]
        assert all(re.fullmatch(r"in [\d.]+ s|due now", row[5]) for row in shown), shown
        assert etas == sorted(etas)
        assert etas[-1] > etas[0] > 0
        asked_by_the_run = sorted(row[3] for row in shown[6:])
        assert asked_by_the_run == [
            f"run {run} · svc-{i} · {stage}"
            for i in range(3)
            for stage in ("ambitions", "features of plateau 1")
        ]

        # Released: the six calls ran; the page shows it without a reload.
        run_ids = re.compile(f"^{run}:")
        await expect(rows.first).to_have_attribute("data-request-id", run_ids)

        # By keyboard: the cancel button opens its confirmation, Escape keeps the run.
        run_row = page.locator(f'#runs tr[data-run-id="{run}"]')
        await run_row.locator("button.cancel").focus()
        await page.keyboard.press("Enter")
        await expect(page.locator("#confirm")).to_be_visible()
        await page.keyboard.press("Escape")
        await expect(page.locator("#confirm")).to_be_hidden()
        await expect(run_row.locator("button.cancel")).to_be_focused()
        await expect(run_row).to_have_attribute("data-state", "running")

        # Cancelled from the page, with its confirmation: the run's calls leave the queue.
        await run_row.locator("button.cancel").click()
        await expect(page.locator("#confirm")).to_be_visible()
        started_before = _slowpoke_calls(app)
        await page.locator("#confirm-cancel").click()
        await expect(run_row).to_have_attribute("data-state", "cancelled")
        await eventually(app.levels_are(0, 0), "the run's calls to leave the queue")
        started_by_the_run = _slowpoke_calls(app)
        assert started_by_the_run <= started_before + 1  # at most one in the instant
        await expect(rows).to_have_count(0)

        # The replica dies: the page says so, reconnects, and shows what changed meanwhile.
        handle = manager.handle
        ray.kill(ray.get_actor(the_replica(), namespace="serve"))
        await expect(status).to_have_attribute("data-state", "reconnecting")
        # Asked by hand, as a process that collects no grants would.
        caller = "page-test"
        [held] = await handle.apply.remote(
            [Acquire(app.group, _lease(), CallOptions(request_id="hold"), caller)]
        )
        late_labels = CallLabels("features", "svc-late", plateau=1, run="driver")
        late_id = _lease()
        late_options = CallOptions(request_id="late", priority=8, labels=late_labels)
        await handle.apply.remote([Acquire(app.group, late_id, late_options.identified(), caller)])
        await eventually(app.levels_are(1, 1), "a call queued while the page reconnects")
        await expect(status).to_have_attribute("data-state", "live", timeout=90_000)
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_have_attribute("data-request-id", "late")
        # The late call is this driver's Ray job's; the held one said no flow.
        job = ray.get_runtime_context().get_job_id()
        await expect(flows).to_have_count(2)
        await expect(page.locator(f'{flows_of_group}[data-flow="job:{job}"] td')).to_have_text(
            [
                f"job {job}",
                "1",
                "0",
                re.compile(r"[\d.]+ s"),
                re.compile(r"[\d,]+"),
                re.compile(r"\d+%"),
            ]
        )
        await expect(page.locator(f'{flows_of_group}[data-flow=""] td').first).to_have_text("—")
        await expect(rows.first.locator("td").nth(3)).to_have_text(
            "run driver · svc-late · features of plateau 1"
        )

        # 10,000 more waiters: the first 50 rows and the count of the others.
        bulk = [_lease() for _ in range(10_000)]
        await handle.apply.remote(
            [Acquire(app.group, i, CallOptions(request_id=i), caller) for i in bulk]
        )
        await eventually(app.levels_are(1, 10_001), "10,000 more waiters")
        await expect(rows).to_have_count(50)
        more = page.locator(f'article[data-group="{app.group}"] .more')
        await expect(more).to_have_text("and 9,951 more waiting (10,001 in all)")
        await page.screenshot(path=SCREENSHOTS / "queue-page-10000.png")

        await handle.apply.remote([Cancel(i) for i in [late_id, *bulk]])
        await handle.apply.remote([Release(held.id, held.epoch)])
        await eventually(app.levels_are(0, 0), "the waiters cancelled and the slot released")
        await expect(rows).to_have_count(0)
        assert await page.evaluate("window.notReloaded") is True

    assert _slowpoke_calls(app) == started_by_the_run  # the cancelled run started no more


async def test_the_page_shows_a_pools_servers_health_and_fallbacks_taken(app: App) -> None:
    expect.set_options(timeout=30_000)
    idle = classify("openai-compatible", IDLE).id
    async with chromium() as page:
        await page.goto(app.url)
        await page.fill("#key", KEY)
        await page.click("button[type=submit]")
        await expect(page.locator("#status")).to_have_attribute("data-state", "live")
        pool = page.locator('#models tr[data-model="pool"] td')
        in_rotation = rf"^{re.escape(app.group)}: \d+ granted, 0 held · in rotation\n"
        await expect(pool).to_have_text(
            [
                "pool",
                re.compile(in_rotation + rf"{re.escape(idle)}: 0 granted, 0 held · in rotation$"),
                "local",
                "none",
            ]
        )

        await app.manager.handle.apply.remote([TakeOut(idle, "connection refused", 600.0)])
        await app.manager.handle.apply.remote([FellBack("pool", "local", "OutOfRotation")])

        out = rf"{re.escape(idle)}: 0 granted, 0 held · out \d+ min \d+ s: connection refused$"
        await expect(pool.nth(1)).to_have_text(re.compile(in_rotation + out))
        await expect(pool.nth(3)).to_have_text("local: 1 OutOfRotation")


async def _chat(http: httpx.AsyncClient, text: str, priority: int, request_id: str) -> None:
    headers = {"X-Priority": str(priority), "X-Request-Id": request_id}
    body = {"model": "local", "messages": ask(text)}
    (await http.post("/v1/chat/completions", json=body, headers=headers)).raise_for_status()


def _slowpoke_calls(app: App) -> int:
    return sum("Slowpoke" in str(body["messages"]) for body in app.local.bodies)


def _lease() -> str:
    return f"page-{uuid.uuid4().hex}"
