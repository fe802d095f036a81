"""The dashboard without a browser: history, its store, workflow graphs, access rules, escaping,
actions' input checks and the command line (memory and SQLite transports, in-process)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from aqueue import Aqueue, Worker
from aqueue.cli import cli
from aqueue.dashboard import Dashboard
from aqueue.dashboard.history import TaskFilter, TaskHistory
from aqueue.dashboard.store import TABLE, HistoryStore
from aqueue.dashboard.workflows import kind, layout
from tests.apps.tasks import Tasks
from tests.net import free_port

pytestmark = pytest.mark.timeout(30)


def event(kind: str, task_id: str, when: float, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "uuid": task_id, "timestamp": when, "hostname": "w1", **fields}


def received(task_id: str, when: float, **fields: Any) -> dict[str, Any]:
    fields.setdefault("name", "proj.add")
    fields.setdefault("queue", "default")
    return event("task-received", task_id, when, **fields)


@pytest.fixture
async def app() -> AsyncIterator[Aqueue]:
    url = f"memory://{uuid.uuid4().hex}"
    the_app = Aqueue("unit", broker=url, backend=url)

    @the_app.task(name="unit.add")
    async def add(x: int, y: int) -> int:
        return x + y

    yield the_app
    await the_app.close()


def client(web: Dashboard, host: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=web, client=(host, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://dash")


@contextlib.asynccontextmanager
async def acting(app: Aqueue) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    """A loopback client of a dashboard of ``app`` that has loaded a page, and the CSRF header
    its actions need."""
    web = Dashboard(app, persist=False)
    async with client(web) as c:
        await c.get("/")
        yield c, {"X-CSRF-Token": c.cookies["aqueue_csrf"]}
    await web.aclose()


# -- history -------------------------------------------------------------------------------------


def test_the_history_keeps_the_newest_max_tasks_and_filters() -> None:
    h = TaskHistory(max_tasks=3)
    now = time.time()
    for i in range(5):
        h.apply(received(f"t{i}", now + i, queue="io" if i % 2 else "default"))
    h.apply(event("task-succeeded", "t4", now + 9, runtime=0.5, result="8"))
    assert list(h.tasks) == ["t2", "t3", "t4"]
    found, total = h.query(TaskFilter(state="SUCCESS"))
    assert [r.id for r in found] == ["t4"] and total == 1
    found, total = h.query(TaskFilter(queue="io"))
    assert [r.id for r in found] == ["t3"]
    assert h.query(TaskFilter(search="t2"))[0][0].id == "t2"
    assert h.queues == {"default": 2, "io": 1}  # the forgotten tasks left the indexes
    assert h.get("t4").runtime == 0.5  # type: ignore[union-attr]


def test_a_late_event_joins_the_timeline_without_moving_the_state_back() -> None:
    h = TaskHistory()
    now = time.time()
    h.apply(received("a", now))
    h.apply(event("task-succeeded", "a", now + 2, runtime=1.0))
    h.apply(event("task-started", "a", now + 1))  # another clock, or a slow publisher
    record = h.get("a")
    assert record is not None and record.state == "SUCCESS"
    assert [kind for kind, _, _ in record.timeline] == [
        "task-received",
        "task-succeeded",
        "task-started",
    ]


def test_the_charts_span_from_the_first_data_to_now() -> None:
    h = TaskHistory()
    now = time.time()
    for i in range(30):  # 30 tasks over the last 5 minutes
        h.apply(received(f"t{i}", now - 300 + 10 * i))
        h.apply(event("task-succeeded", f"t{i}", now - 300 + 10 * i + 1, runtime=0.25))
    step, points = h.series.points(now)
    assert step == 6 and len(points) == 60  # 301 seconds in 60 points
    assert sum(b.succeeded for _, b in points) == 30
    assert {b.runtime_sum / b.runtime_n for _, b in points if b.runtime_n} == {0.25}
    assert TaskHistory().series.points(now)[0] == 1  # nothing yet: the last minute


def test_records_older_than_max_age_expire() -> None:
    h = TaskHistory(max_age=60)
    now = time.time()
    h.apply(received("old", now - 120))
    h.apply(received("new", now))
    assert h.expire(now) == 1
    assert list(h.tasks) == ["new"]


async def test_the_history_survives_a_restart_through_the_control_transport(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/h.db"
    first = Aqueue("h", broker=url, backend=url)
    store = HistoryStore(await first.control_transport(), max_tasks=10, max_age=3600)
    h = TaskHistory(max_tasks=10)
    now = time.time()
    h.apply(received("x", now, args="(1, 2)"))
    await store.save(h.dirty.values())
    h.apply(event("task-succeeded", "x", now + 1, result="3"))
    await store.save([h.get("x")])  # type: ignore[list-item]
    await first.close()

    second = Aqueue("h", broker=url, backend=url)
    again = TaskHistory(max_tasks=10)
    again.load(await HistoryStore(await second.control_transport(), 10, 3600).load())
    record = again.get("x")
    assert record is not None and record.state == "SUCCESS" and record.args == "(1, 2)"
    assert len(record.timeline) == 2
    await second.close()


async def test_the_journal_is_trimmed_from_its_oldest_end(app: Aqueue) -> None:
    transport = await app.control_transport()
    store = HistoryStore(transport, max_tasks=2, max_age=3600)  # 4 record versions at most
    h = TaskHistory()
    for i in range(6):
        h.apply(received(f"t{i}", time.time()))
        await store.save([h.get(f"t{i}")])  # type: ignore[list-item]
    _, entries = await transport.read(TABLE)
    assert len(entries) == 4
    restored = TaskHistory()
    restored.load(await HistoryStore(transport, 2, 3600).load())
    assert list(restored.tasks) == ["t2", "t3", "t4", "t5"]


async def test_unreadable_journal_entries_are_skipped(
    app: Aqueue, caplog: pytest.LogCaptureFixture
) -> None:
    transport = await app.control_transport()
    await transport.put(TABLE, "00000000000000000001", b"not json", None)
    await transport.put(TABLE, "00000000000000000002", b'[{"id": "x", "timeline": [[1]]}]', None)
    await transport.put(TABLE, "00000000000000000003", b'[{"id": "ok", "state": "SUCCESS"}]', None)
    h = TaskHistory()
    h.load(await HistoryStore(transport, 10, 3600).load())
    assert list(h.tasks) == ["ok"]
    assert caplog.text.count("skipped an unreadable history entry") == 2


async def test_malformed_journal_rows_and_events_break_no_page(app: Aqueue) -> None:
    transport = await app.control_transport()
    rows = [
        b'[{"id": "b1", "timeline": [["task-received", "x", "w"]]}]',  # time not a number
        b'[{"id": "b2", "name": ["x"]}]',  # unhashable: the filters' counters
        b'[{"id": "b3", "state": {"x": 1}}]',
        b'[{"id": "b4", "updated": "x"}]',  # compared with the time-range filter
        b'[{"id": "b5", "received": "x"}]',  # printed as a clock time
        b'[{"id": "b6", "retries": "x", "runtime": [1]}]',
        b'[{"id": "b7", "received": 1e30, "updated": 1e30}]',  # past any date
        b'[{"id": "b8", "timeline": [["task-received", 1e30, "w"]]}]',
    ]
    for i, row in enumerate(rows):
        await transport.put(TABLE, f"{i + 1:020d}", row, None)
    await transport.put(TABLE, f"{len(rows) + 1:020d}", b'[{"id": "ok", "state": "SUCCESS"}]', None)
    web = Dashboard(app)
    async with client(web) as c:
        assert (await c.get("/")).status_code == 200
        # The rows of the wrong types are skipped; far-off times are shown as they can be.
        assert list(web.monitor.history.tasks) == ["b7", "b8", "ok"]
        # A live event from a worker with an absurd clock: kept, and every page still answers.
        web.monitor.apply(received("far", 1e30))
        web.monitor.apply(event("task-succeeded", "far", 1e30, runtime=1e30))
        paths = ["/", "/workers", "/tasks", "/tasks?range=5m", "/tasks/far", "/tasks/b8"]
        for path in [*paths, "/workflows", "/queues", "/beat"]:
            assert (await c.get(path)).status_code == 200, path
    await web.aclose()


async def test_a_worker_restarted_under_its_name_is_asked_for_its_tasks_again(
    app: Aqueue,
) -> None:
    web = Dashboard(app, persist=False)
    registered = web.monitor.registered

    async def until_registered(name: str) -> None:
        async with asyncio.timeout(10):
            while name not in registered.get("w@unit", []):
                await notes.get()  # a note follows every answer

    async with client(web) as c:
        assert (await c.get("/workers")).status_code == 200
        async with web.monitor.subscribe() as notes:
            async with Worker(app, hostname="w@unit", shutdown_timeout=5):
                await web.monitor.sample()
                await until_registered("unit.add")

            @app.task(name="unit.mul")  # the new release of the code
            async def mul(x: int, y: int) -> int:
                return x * y

            async with Worker(app, hostname="w@unit", shutdown_timeout=5):
                await web.monitor.sample()
                await until_registered("unit.mul")
    await web.aclose()


# -- workflows -----------------------------------------------------------------------------------


def test_a_chord_is_one_workflow_drawn_header_then_body() -> None:
    h = TaskHistory()
    now = time.time()
    for i in range(3):
        h.apply(received(f"m{i}", now, group_id="g"))
    h.apply(received("body", now + 1, parent_id="m2", root_id="m2", name="proj.tsum"))
    h.apply(received("lone", now + 2))
    assert h.workflows.of == {"m0": "g", "m1": "g", "m2": "g", "body": "g"}
    graph = layout(h.workflows.members["g"], h.get)
    columns = {n.id: n.x for n in graph.nodes}
    assert columns["m0"] == columns["m1"] == columns["m2"] < columns["body"]
    assert len(graph.edges) == 3  # every header member -> the body
    assert {n.y for n in graph.nodes if n.id == "body"} == {graph.nodes[1].y}  # centred
    assert kind([h.get(t) for t in h.workflows.members["g"]]) == "chord"  # type: ignore[misc]


def test_a_chain_into_a_chord_is_drawn_in_three_columns() -> None:
    h = TaskHistory()
    now = time.time()
    h.apply(received("first", now))
    for i in range(3):
        h.apply(received(f"m{i}", now + 1, parent_id="first", root_id="first", group_id="g"))
    h.apply(received("body", now + 2, parent_id="m1", root_id="first"))
    ids = h.workflows.members["first"]
    assert ids == ["first", "m0", "m1", "m2", "body"]
    records = [h.get(t) for t in ids]
    assert kind(records) == "workflow"  # type: ignore[arg-type]
    assert kind(records[1:]) == "chord"  # type: ignore[arg-type]
    assert kind(records[1:4]) == "workflow"  # type: ignore[arg-type]  # members with a parent
    graph = layout(ids, h.get)
    assert len({n.x for n in graph.nodes}) == 3
    assert len(graph.edges) == 3 + 3  # first -> each member, each member -> body


def test_a_chain_joins_its_first_step_when_the_second_arrives() -> None:
    h = TaskHistory()
    now = time.time()
    h.apply(received("s1", now))
    h.apply(received("s2", now + 1, parent_id="s1", root_id="s1"))
    h.apply(received("s3", now + 2, parent_id="s2", root_id="s1"))
    assert h.workflows.members == {"s1": ["s1", "s2", "s3"]}
    xs = [n.x for n in layout(h.workflows.members["s1"], h.get).nodes]
    assert xs == sorted(set(xs))  # one column per step
    assert kind([h.get(t) for t in h.workflows.members["s1"]]) == "chain"  # type: ignore[misc]


# -- access --------------------------------------------------------------------------------------


async def test_without_credentials_only_loopback_clients_are_served(app: Aqueue) -> None:
    web = Dashboard(app, persist=False)
    async with client(web, "10.1.2.3") as remote, client(web) as local:
        assert (await remote.get("/")).status_code == 403
        assert (await local.get("/")).status_code == 200
    await web.aclose()


async def test_actions_need_the_token_and_the_csrf_token(app: Aqueue) -> None:
    web = Dashboard(app, token="t0ken", persist=False)
    body = {"task_id": "some-id"}
    async with client(web, "10.1.2.3") as c:
        page = await c.get("/tasks")
        assert page.status_code == 303 and page.headers["location"] == "/login"
        assert (await c.post("/actions/revoke", json=body)).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (await c.post("/actions/revoke", json=body, headers=wrong)).status_code == 401
        bearer = {"Authorization": "Bearer t0ken"}  # a script: no CSRF token needed
        assert (await c.post("/actions/revoke", json=body, headers=bearer)).status_code == 200
        signed = await c.post("/login", data={"token": "t0ken"})
        assert signed.status_code == 303
        assert (await c.post("/actions/revoke", json=body)).status_code == 403  # no CSRF token
        csrf = {"X-CSRF-Token": c.cookies["aqueue_csrf"]}
        assert (await c.post("/actions/revoke", json=body, headers=csrf)).status_code == 200
        other = {**csrf, "Origin": "http://evil.example"}
        assert (await c.post("/actions/revoke", json=body, headers=other)).status_code == 403
        assert (await c.get("/actions/revoke")).status_code == 405
    await web.aclose()


async def test_basic_auth_and_read_only(app: Aqueue) -> None:
    web = Dashboard(app, basic_auth=("ops", "pw"), read_only=True, persist=False)
    async with client(web, "10.1.2.3") as c:
        refused = await c.get("/")
        assert refused.status_code == 401 and "Basic" in refused.headers["www-authenticate"]
        c.auth = httpx.BasicAuth("ops", "pw")
        assert (await c.get("/")).status_code == 200
        csrf = {"X-CSRF-Token": c.cookies["aqueue_csrf"]}
        answer = await c.post("/actions/revoke", json={"task_id": "x"}, headers=csrf)
        assert answer.status_code == 403 and "read-only" in answer.text
    await web.aclose()


# -- pages and actions ---------------------------------------------------------------------------


async def test_task_data_is_escaped_on_every_page(app: Aqueue) -> None:
    web = Dashboard(app, persist=False)
    evil = "<script>alert(1)</script>"
    web.monitor.apply(received("e1", time.time(), args=f"('{evil}',)", name=evil))
    web.monitor.apply(event("task-failed", "e1", time.time(), exception=evil, traceback=evil))
    async with client(web) as c:
        for path in ("/tasks", "/tasks/e1", "/"):
            text = (await c.get(path)).text
            assert evil not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in (await c.get("/tasks/e1")).text
    await web.aclose()


async def test_every_page_answers_and_fragments_are_the_live_part(app: Aqueue) -> None:
    web = Dashboard(app, persist=False)
    web.monitor.apply(received("p1", time.time(), group_id="g1"))
    async with client(web) as c:
        for path in ("/", "/workers", "/tasks", "/tasks/p1", "/workflows", "/workflows/g1"):
            page = await c.get(path)
            assert page.status_code == 200, path
            assert 'id="live"' in page.text
            fragment = await c.get(path, headers={"X-Fragment": "1"})
            assert fragment.status_code == 200 and "<html" not in fragment.text
        for path in ("/queues", "/beat"):
            assert (await c.get(path)).status_code == 200
    await web.aclose()


async def test_the_queues_page_lists_held_and_empty_queues_and_each_ones_dead_letters(
    app: Aqueue,
) -> None:
    """Queues the broker holds messages for and the app's own (empty) default queue are both
    sampled; the dead letters of every queue that has some are on the Queues page."""
    broker = await app.broker()
    sent = {}
    for queue in ("dl-b", "dl-a", "busy"):
        sent[queue] = await app.send_task("unit.add", [1, 2], {}, queue=queue)
        if queue != "busy":
            (delivery,) = await broker.fetch([queue], 1, 5.0)
            await broker.dead_letter(delivery, f"set aside from {queue}")
    web = Dashboard(app, persist=False)
    async with client(web) as c:
        await c.get("/")
        await web.monitor.sample()
        names = [d.queue for d in web.monitor.queues]
        assert names == sorted(names)
        depths = {d.queue: (d.ready, d.dead) for d in web.monitor.queues}
        assert depths[app.conf.task_default_queue] == (0, 0)
        assert depths["busy"] == (1, 0)
        assert depths["dl-a"] == depths["dl-b"] == (0, 1)
        text = (await c.get("/queues")).text
        for queue in ("dl-a", "dl-b"):
            assert f"set aside from {queue}" in text
            assert sent[queue].id in text
        assert sent["busy"].id not in text
    await web.aclose()


async def test_bad_action_input_is_refused_and_changes_nothing(app: Aqueue) -> None:
    async with acting(app) as (c, h):
        assert (await c.post("/actions/nope", json={}, headers=h)).status_code == 404
        bad = await c.post("/actions/revoke", content=b"{not json", headers=h)
        assert bad.status_code == 400
        missing = await c.post("/actions/revoke", json={"task_id": 3}, headers=h)
        assert missing.status_code == 400 and "string" in missing.json()["message"]
        unconfirmed = await c.post("/actions/purge", json={"queue": "default"}, headers=h)
        assert unconfirmed.status_code == 400 and "confirm" in unconfirmed.json()["message"]
        await app.tasks["unit.add"].delay(1, 2)
        queued = await c.post(
            "/actions/purge", json={"queue": "default", "confirm": "default"}, headers=h
        )
        assert queued.json() == {"ok": True, "message": "purged 1 message(s) from default"}


async def test_resend_worker_and_dead_letter_actions_do_what_they_say(app: Aqueue) -> None:
    web = Dashboard(app, persist=False)
    web.monitor.apply(received("r1", time.time(), name="unit.add", queue="again", args="(20, 22)"))
    broker = await app.broker()
    await app.send_task("unit.add", [1, 2], {}, queue="dl")
    (delivery,) = await broker.fetch(["dl"], 1, 5.0)
    await broker.dead_letter(delivery, "set aside")
    async with client(web) as c:
        await c.get("/")
        h = {"X-CSRF-Token": c.cookies["aqueue_csrf"]}

        async def act(action: str, **body: str) -> str:
            answer = await c.post(f"/actions/{action}", json=body, headers=h)
            assert answer.status_code == 200, answer.text
            message: str = answer.json()["message"]
            return message

        resent = await act("resend", task_id="r1")
        assert resent.startswith("sent again as ")
        async with Worker(app, queues=["again"], hostname="w-dash", shutdown_timeout=5):
            result = app.AsyncResult(resent.split()[-1])
            assert await result.get(timeout=10) == 42  # same task, arguments and queue
            replied = "w-dash replied"
            added = await act("add_consumer", hostname="w-dash", queue="extra")
            assert added == f"add consumer extra: {replied}"
            cancelled = await act("cancel_consumer", hostname="w-dash", queue="extra")
            assert cancelled == f"cancel consumer extra: {replied}"
            limited = await act("rate_limit", hostname="w-dash", task="unit.add", rate="10/s")
            assert limited == f"rate limit unit.add = 10/s: {replied}"
        assert await act("dlq_purge", queue="dl", confirm="dl") == "deleted 1 dead letter(s) of dl"
        assert await broker.dead_letters("dl", 10) == []
    await web.aclose()


async def test_beat_entries_can_be_added_disabled_enabled_and_removed(app: Aqueue) -> None:
    async with acting(app) as (c, h):

        async def act(action: str, **body: str) -> dict[str, Any]:
            answer = await c.post(f"/actions/{action}", json=body, headers=h)
            assert answer.status_code == 200, answer.text
            result: dict[str, Any] = answer.json()
            return result

        await act("beat_add", name="tick", task="unit.add", every="30", args="[1, 2]")
        assert [e.name for e in await app.beat.list()] == ["tick"]
        await act("beat_disable", name="tick")
        assert await app.beat.list() == []
        assert "disabled" in (await c.get("/beat")).text
        await act("beat_enable", name="tick")
        assert [e.args for e in await app.beat.list()] == [(1, 2)]
        await act("beat_remove", name="tick")
        assert await app.beat.list() == []
        bad = await c.post("/actions/beat_add", json={"name": "x", "task": "unit.add"}, headers=h)
        assert bad.status_code == 400


# -- command line, and the worker's side -----------------------------------------------------------


def test_the_command_refuses_a_public_address_without_credentials() -> None:
    result = CliRunner().invoke(cli, ["dashboard", "-A", "x", "--address", "0.0.0.0"])
    assert result.exit_code == 2
    assert "not loopback" in result.output


def test_a_worker_never_imports_the_dashboard() -> None:
    code = (
        "import sys, aqueue.cli, aqueue.worker.worker\n"
        "assert not [m for m in sys.modules if m.startswith(('aqueue.dashboard', 'starlette'))]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_the_fastapi_example_mounts_the_dashboard(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("fastapi")
    monkeypatch.setenv("AQUEUE_BROKER_URL", f"memory://{uuid.uuid4().hex}")
    monkeypatch.setenv("DASHBOARD_TOKEN", "example-token")
    example = importlib.import_module("examples.dashboard_mount.main")
    example = importlib.reload(example)  # the environment above, whatever was imported before
    transport = httpx.ASGITransport(app=example.api, client=("10.0.0.9", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as c:
        assert (await c.post("/add", params={"x": 1, "y": 2})).status_code == 202
        login = await c.get("/dashboard/queues")
        assert login.status_code == 303 and login.headers["location"] == "/dashboard/login"
        bearer = {"Authorization": "Bearer example-token"}
        page = await c.get("/dashboard/queues", headers=bearer)
        assert page.status_code == 200
        assert 'href="/dashboard/tasks"' in page.text  # links under the mount path
        assert '<td>default</td><td class="n">1</td>' in page.text  # the task sent above
    await example.dashboard.aclose()
    await example.tasks_app.close()


@pytest.mark.slow
async def test_the_command_serves_the_dashboard_until_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "AQUEUE_BROKER_URL": f"sqlite:///{tmp_path}/cli.db"}
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "aqueue", "dashboard", "-A", "tests.apps.dashboard_tasks:app"],
        *["--port", str(port), "-l", "info"],
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        lines: list[str] = []
        while not lines or "Uvicorn running on" not in lines[-1]:  # logged once it listens
            line = await asyncio.wait_for(proc.stderr.readline(), 20)
            assert line, "the dashboard exited before it listened:\n" + "".join(lines)
            lines.append(line.decode())
        assert f"aqueue dashboard of dash on http://127.0.0.1:{port}/\n" in lines
        async with httpx.AsyncClient() as c:
            page = await c.get(f"http://127.0.0.1:{port}/workers")
            assert page.status_code == 200 and "Workers" in page.text
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then ends by the signal it caught (its convention).
        assert await asyncio.wait_for(proc.wait(), 15) in (0, -signal.SIGTERM)
        rest = (await proc.stderr.read()).decode()
        assert "Application shutdown complete" in rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_every_page_on_every_transport(t: Tasks) -> None:
    """A worker with events on, the transport under test (AMQP: its Redis result backend holds
    the control tables): a task shows in the history, every page answers."""
    web = Dashboard(t.app, persist=False)
    async with client(web) as c, Worker(t.app, concurrency=2, send_events=True):
        assert (await c.get("/")).status_code == 200  # the monitor listens from here on
        async with web.monitor.subscribe() as notes:
            result = await t.add.delay(20, 22)
            assert await result.get(timeout=10) == 42
            async with asyncio.timeout(10):  # until the monitor has seen it finish
                while (seen := web.monitor.history.get(result.id)) is None or not seen.finished:
                    await notes.get()
        await web.monitor.sample()
        for path in ("/", "/workers", "/tasks", f"/tasks/{result.id}", "/queues", "/beat"):
            page = await c.get(path)
            assert page.status_code == 200, path
            assert "Cannot reach" not in page.text, path
        assert "task-succeeded" in (await c.get(f"/tasks/{result.id}")).text
        assert f"<td>{t.app.conf.task_default_queue}</td>" in (await c.get("/queues")).text
    await web.aclose()
