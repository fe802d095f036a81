"""Tasks for the canvas tests: ``build(url, queue)`` makes a fresh app with them registered.

Tasks that record what happened key their records by a ``token`` (a uuid per test), so tests
that share a process (and a Redis server) never read each other's records.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aqueue import Aqueue, Task
from tests.apps.tasks import backend_for

PAGES = {"https://example.com/": "<title>Example</title> hello canvas world"}
STORED: dict[str, Any] = {}
BODY_RUNS: Counter[str] = Counter()  # token -> how many times a chord body ran
MEMBER_RUNS: Counter[str] = Counter()  # "token:index" -> how many times a header task ran
ERRBACKS: dict[str, list[tuple[str | None, str]]] = {}  # token -> [(request.id, repr(exc))]
BARRIERS: dict[str, asyncio.Barrier] = {}  # token -> what header tasks meet at


@dataclass
class CanvasTasks:
    app: Aqueue
    add: Task[Any, int]
    mul: Task[Any, int]
    tsum: Task[Any, int]
    flatten_sum: Task[Any, int]
    fetch_page: Task[Any, str]
    parse_page: Task[Any, dict[str, Any]]
    store_page_info: Task[Any, str]
    noop: Task[Any, None]
    count_member: Task[Any, int]
    meet: Task[Any, int]
    record_body: Task[Any, int]
    fail: Task[Any, None]
    errback: Task[Any, None]
    lineage: Task[Any, dict[str, Any]]


def build(url: str, queue: str = "default", **settings: Any) -> CanvasTasks:
    """A fresh app on broker ``url`` with the canvas test tasks.

    The result backend is the same URL, except with AMQP (see ``tests.apps.tasks.backend_for``).
    """
    app = Aqueue(
        "canvas", broker=url, backend=backend_for(url), task_default_queue=queue, **settings
    )

    @app.task(name="canvas.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="canvas.mul")
    def mul(x: int, y: int) -> int:  # a plain function: runs in a thread (and in map's thread)
        return x * y

    @app.task(name="canvas.tsum")
    async def tsum(numbers: list[int]) -> int:
        return sum(numbers)

    @app.task(name="canvas.flatten_sum")
    async def flatten_sum(lists: list[list[int]]) -> int:
        return sum(sum(inner) for inner in lists)

    @app.task(name="canvas.fetch_page")
    async def fetch_page(url: str) -> str:
        return PAGES[url]

    @app.task(name="canvas.parse_page")
    async def parse_page(page: str) -> dict[str, Any]:
        title = page.split("<title>")[1].split("</title>")[0]
        return {"title": title, "words": len(page.split())}

    @app.task(name="canvas.store_page_info")
    async def store_page_info(info: dict[str, Any], url: str) -> str:
        STORED[url] = info
        return url

    @app.task(name="canvas.noop")
    async def noop(i: int) -> None:
        return None

    @app.task(name="canvas.count_member")
    async def count_member(token: str, i: int) -> int:
        MEMBER_RUNS[f"{token}:{i}"] += 1
        return i

    @app.task(name="canvas.meet")
    async def meet(token: str, i: int) -> int:
        # Every header task of the chord waits here, so they all finish at the same moment.
        await BARRIERS[token].wait()
        return i

    @app.task(name="canvas.record_body")
    async def record_body(values: list[Any], token: str) -> int:
        BODY_RUNS[token] += 1
        return len(values)

    @app.task(name="canvas.fail")
    async def fail(message: str) -> None:
        raise ValueError(message)

    @app.task(name="canvas.errback")
    def errback(request: Any, exc: BaseException, traceback: str, token: str) -> None:
        ERRBACKS.setdefault(token, []).append((request.id, repr(exc)))

    @app.task(name="canvas.lineage", bind=True)
    async def lineage(self: Task[Any, Any], *args: Any) -> dict[str, Any]:
        r = self.request
        return {"id": r.id, "parent_id": r.parent_id, "root_id": r.root_id, "group_id": r.group_id}

    return CanvasTasks(
        app,
        add,
        mul,
        tsum,
        flatten_sum,
        fetch_page,
        parse_page,
        store_page_info,
        noop,
        count_member,
        meet,
        record_body,
        fail,
        errback,
        lineage,
    )
