"""The dashboard in headless Chromium against a real worker process, on SQLite and on Redis.

What a user does on the pages, checked in the browser: a task sent shows up without a reload;
terminating a running task from its page makes it REVOKED; a dead letter replayed from the
Queues page runs and succeeds; a chord's graph shows every node SUCCESS; an action without the
token is refused. The SQLite run also takes a screenshot of every page (``docs/images`` when
``AQUEUE_DASHBOARD_SCREENSHOTS`` names that directory).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from aqueue import Aqueue, chord, group
from tests.apps.dashboard_tasks import build
from tests.dashboard.conftest import Served, chromium_or_skip, serve
from tests.workerproc import WorkerProcess

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

#: Milliseconds the browser waits for what a page should show.
WAIT_MS = 20_000


def screenshot_directory(default: Path) -> Path:
    """``$AQUEUE_DASHBOARD_SCREENSHOTS`` (made if missing), else ``default``."""
    directory = Path(os.environ.get("AQUEUE_DASHBOARD_SCREENSHOTS") or default)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@dataclass
class Stack:
    """A worker process, the dashboard serving its app, and a browser page on it."""

    transport: str
    app: Aqueue
    queue: str
    served: Served
    browser: Any
    page: Any
    worker: WorkerProcess

    def task(self, name: str) -> Any:
        return self.app.tasks[f"dash.{name}"]


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=["sqlite", "redis"])
async def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    chromium = chromium_or_skip()
    from playwright.async_api import async_playwright

    transport = request.param
    if transport == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('dash')}/dash.db"
    else:
        url = f"{request.getfixturevalue('redis_server')}/5"
    queue = f"dash-{uuid.uuid4().hex[:8]}"
    app = build(url, queue)
    env = {"AQUEUE_BROKER_URL": url, "AQUEUE_DASH_QUEUE": queue}
    worker = WorkerProcess(
        "tests.apps.dashboard_tasks:app", ["-E", "-c", "10", "-n", f"w-{transport}"], env=env
    )
    async with worker, serve(app) as served, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1280, "height": 860})
        page.on("dialog", lambda dialog: dialog.accept(dialog.default_value or ""))
        yield Stack(transport, app, queue, served, browser, page, worker)
        await browser.close()
    await app.close()


async def test_a_sent_task_shows_up_live(stack: Stack) -> None:
    page = stack.page
    await page.goto(f"{stack.served.url}/tasks")
    await page.wait_for_function("document.body.dataset.live === '1'", timeout=WAIT_MS)
    await page.evaluate("window.notReloaded = true")
    result = await stack.task("add").delay(2, 3)
    row = f'tr[data-task-id="{result.id}"][data-state="SUCCESS"]'
    await page.wait_for_selector(row, timeout=WAIT_MS)
    assert await page.evaluate("window.notReloaded") is True
    assert await result.get(timeout=10) == 5


async def test_terminate_from_the_page_revokes_a_running_task(stack: Stack) -> None:
    page = stack.page
    result = await stack.task("sleep").delay(60)
    await page.goto(f"{stack.served.url}/tasks/{result.id}")
    await page.wait_for_selector('section.task[data-state="STARTED"]', timeout=WAIT_MS)
    await page.click("form[data-action=revoke].danger button")
    await page.wait_for_selector('section.task[data-state="REVOKED"]', timeout=WAIT_MS)
    assert await result.state() == "REVOKED"
    # The action's answer and the page's refresh race: wait for the answer, do not read it now.
    await page.wait_for_selector("#flash:has-text('terminated')", timeout=WAIT_MS)


async def test_a_dead_letter_replayed_from_the_page_succeeds(stack: Stack) -> None:
    page, app = stack.page, stack.app
    queue = f"dead-{uuid.uuid4().hex[:8]}"  # no worker consumes it yet
    result = await stack.task("add").apply_async((20, 22), queue=queue)
    broker = await app.broker()
    deliveries = await broker.fetch([queue], 1, 5.0)
    assert len(deliveries) == 1
    await broker.dead_letter(deliveries[0], "set aside by the test")
    await page.goto(f"{stack.served.url}/queues")
    section = f'section[data-dead-queue="{queue}"]'
    await page.wait_for_selector(f'{section} tr[data-task-id="{result.id}"]', timeout=WAIT_MS)
    assert "set aside by the test" in await page.inner_text(section)
    await page.click(f'{section} tr[data-task-id="{result.id}"] button')
    await page.wait_for_selector(section, state="detached", timeout=WAIT_MS)
    await page.wait_for_selector("#flash:has-text('replayed 1 dead letter')", timeout=WAIT_MS)
    replies = await app.control.add_consumer(queue, timeout=5)
    assert [r.error for r in replies] == [None], replies
    assert await result.get(timeout=20) == 42, stack.worker.lines[-20:]


async def test_a_chords_graph_shows_every_node_success(stack: Stack) -> None:
    page = stack.page
    add, tsum = stack.task("add"), stack.task("tsum")
    result = await chord([add.s(i, i) for i in range(4)], tsum.s()).delay()
    assert await result.get(timeout=20) == 12
    await page.goto(f"{stack.served.url}/tasks/{result.id}")
    await page.click("text=graph", timeout=WAIT_MS)
    await page.wait_for_function(
        """() => {
            const nodes = [...document.querySelectorAll('#workflow-graph g.node')];
            return nodes.length === 5 && nodes.every((n) => n.dataset.state === 'SUCCESS');
        }""",
        timeout=WAIT_MS,
    )
    assert await page.locator("#workflow-graph path.edge").count() == 4  # header -> body


async def test_a_chords_graph_changes_live_as_it_runs(stack: Stack) -> None:
    page = stack.page
    sleep, tsum = stack.task("sleep"), stack.task("tsum")
    result = await chord([sleep.s(2.0) for _ in range(3)], tsum.s()).delay()
    await page.goto(f"{stack.served.url}/workflows")
    # The chord's row appears as its members are received (the only workflow of dash.sleep).
    await page.click("tr:has(td:text-is('dash.sleep')) a", timeout=WAIT_MS)
    nodes = "[...document.querySelectorAll('#workflow-graph g.node')].map((n) => n.dataset.state)"
    await page.wait_for_function(
        f"{nodes}.filter((s) => s === 'STARTED').length === 3", timeout=WAIT_MS
    )
    await page.evaluate("window.notReloaded = true")
    assert await result.get(timeout=20) == 6.0
    await page.wait_for_function(
        f"{nodes}.join() === 'SUCCESS,SUCCESS,SUCCESS,SUCCESS'", timeout=WAIT_MS
    )
    assert await page.evaluate("window.notReloaded") is True


async def test_a_restarted_dashboard_shows_what_came_before(stack: Stack) -> None:
    page = stack.page
    async with serve(stack.app) as first:
        await page.goto(f"{first.url}/tasks")
        result = await stack.task("add").delay(7, 8)
        row = f'tr[data-task-id="{result.id}"][data-state="SUCCESS"]'
        await page.wait_for_selector(row, timeout=WAIT_MS)
        await page.goto("about:blank")  # closes its event stream
    # The first one stopped (writing what it had not written yet); a new one reads it back.
    async with serve(stack.app) as second:
        await page.goto(f"{second.url}/tasks?q={result.id}")
        assert await page.locator(row).count() == 1  # in the first response: no event needed
        await page.goto("about:blank")


async def test_an_action_without_the_token_is_refused(stack: Stack) -> None:
    async with serve(stack.app, token="s3cret-token") as guarded:
        context = await stack.browser.new_context()
        page = await context.new_page()
        await page.goto(f"{guarded.url}/queues")
        assert page.url.endswith("/login")
        status = await page.evaluate(
            """async (url) => (await fetch(url + '/actions/purge', {method: 'POST',
                body: JSON.stringify({queue: 'x', confirm: 'x'})})).status""",
            guarded.url,
        )
        assert status == 401
        await page.fill("input[name=token]", "wrong")
        await page.click("button[type=submit]")
        assert "Wrong token" in await page.inner_text("main")
        await page.fill("input[name=token]", "s3cret-token")
        await page.click("button[type=submit]")
        await page.wait_for_selector("#live", timeout=WAIT_MS)
        status = await page.evaluate(
            """async (url) => {
                const csrf = document.querySelector('meta[name=csrf-token]').content;
                const r = await fetch(url + '/actions/revoke', {method: 'POST',
                    headers: {'X-CSRF-Token': csrf}, body: JSON.stringify({task_id: 'nothing'})});
                return r.status;
            }""",
            guarded.url,
        )
        assert status == 200  # signed in, with the CSRF token: allowed
        await context.close()


async def test_every_page_renders_in_the_browser(stack: Stack, tmp_path: Path) -> None:
    """Visit every page with something on it; screenshots go to $AQUEUE_DASHBOARD_SCREENSHOTS."""
    if stack.transport != "sqlite":
        pytest.skip("screenshots are taken once, on SQLite")
    app, page, url = stack.app, stack.page, stack.served.url
    directory = screenshot_directory(tmp_path)
    await app.beat.add("every-minute", task="dash.add", schedule=60, args=(1, 2))
    await app.beat.add("nightly-sum", task="dash.tsum", schedule=86_400, args=([1, 2, 3],))
    failed = await stack.task("fail").delay("<b>not bold</b> & escaped")
    await failed.get(timeout=20, propagate=False)
    add = stack.task("add")
    for i in range(12):
        await (await add.delay(i, i)).get(timeout=20)
    steps = await (add.s(1, 1) | add.s(2) | add.s(3)).delay()
    assert await steps.get(timeout=20) == 7
    tsum = stack.task("tsum")
    fan_in = await (add.s(1, 1) | group(add.s(i) for i in range(3)) | tsum.s()).delay()
    assert await fan_in.get(timeout=20) == 9  # a chain into a chord: 2+0 + 2+1 + 2+2
    dead = await stack.task("add").apply_async((1, 1), queue="parked")
    broker = await app.broker()
    await broker.dead_letter((await broker.fetch(["parked"], 1, 5.0))[0], "parked for the picture")
    pages = {
        "overview": "/",
        "workers": "/workers",
        "tasks": "/tasks",
        "task": f"/tasks/{failed.id}",
        "workflows": "/workflows",
        "queues": "/queues",
        "beat": "/beat",
    }
    for name, path in pages.items():
        await page.goto(url + path)
        await page.wait_for_function("document.body.dataset.live === '1'", timeout=WAIT_MS)
        if name == "workflows":
            await page.wait_for_selector("td:text-is('chain')", timeout=WAIT_MS)
        if name == "queues":
            await page.wait_for_selector(f'tr[data-task-id="{dead.id}"]', timeout=WAIT_MS)
        if name == "task":
            await page.wait_for_selector('section.task[data-state="FAILURE"]', timeout=WAIT_MS)
            assert "<b>not bold</b>" in await page.inner_text("#task-args")  # shown as text
            assert await page.locator("#task-args b").count() == 0  # never as HTML
        await page.screenshot(path=str(directory / f"dashboard-{name}.png"), full_page=True)
    await page.goto(url + "/workflows")
    await page.click("tr:has(td:text-is('workflow')) a", timeout=WAIT_MS)
    await page.wait_for_selector("#workflow-graph g.node", timeout=WAIT_MS)
    await page.screenshot(path=str(directory / "dashboard-workflow.png"), full_page=True)
    taken = [directory / f"dashboard-{name}.png" for name in [*pages, "workflow"]]
    assert all(path.stat().st_size > 10_000 for path in taken)
