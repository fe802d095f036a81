"""A chain fetch -> parse -> store, instead of waiting for subtasks inside a task.

Mirrors: "Celery 是什么" §2.5 链式任务: the wrong way (``update_page_info`` calls
``fetch_page.delay(url).get()`` inside a task) and 正确示范1
(``chain = fetch_page.s(url) | parse_page.s() | store_page_info.s(url); chain()``).

The wrong way is still wrong with asyncio: awaiting another task's result inside a task does not
block the worker's event loop, but it holds one of the worker's concurrency slots while it waits;
with every slot waiting on tasks queued behind them, the worker deadlocks. A chain sends each
step when the previous one has finished, and nothing waits.

Run: ``python -m examples.seeds.page_info_chain``
"""

from __future__ import annotations

import asyncio
from typing import Any

from aqueue import Aqueue, Worker

app = Aqueue("tasks", broker="memory://", backend="memory://")
PAGES = {"https://example.com/": "<title>Example</title> hello world"}
STORE: dict[str, Any] = {}


@app.task
async def fetch_page(url: str) -> str:
    return PAGES[url]


@app.task
async def parse_page(page: str) -> dict[str, Any]:
    title = page.split("<title>")[1].split("</title>")[0]
    return {"title": title, "words": len(page.split())}


@app.task
async def store_page_info(info: dict[str, Any], url: str) -> str:
    STORE[url] = info
    return url


@app.task
async def update_page_info_wrong(url: str) -> None:
    # Don't: each await holds this task's worker slot until the subtask has run.
    page = await (await fetch_page.delay(url))
    info = await (await parse_page.delay(page))
    await store_page_info.delay(info, url)


async def update_page_info(url: str) -> Any:
    # fetch_page -> parse_page -> store_page_info
    chain = fetch_page.s(url) | parse_page.s() | store_page_info.s(url)
    return await chain.delay()


async def main() -> None:
    url = "https://example.com/"
    async with Worker(app):
        r = await update_page_info(url)
        print("chain ->", await r.get(timeout=2), STORE[url])
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())
