"""Callbacks with ``link``: tasks that run after a task succeeds, with its result.

Mirrors: "Celery 是什么" §2.5 链式任务, 正确示范2:
``fetch_page.apply_async((url), link=[parse_page.s(), store_page_info.s(url)])``.

As in Celery, every signature in a ``link`` list is a callback of the *same* parent: each one
receives ``fetch_page``'s result prepended to its own arguments. So here ``parse_page(page)`` and
``store_page_info(page, url)`` both run on the page, side by side; the tutorial's pipeline
fetch -> parse -> store, where ``store_page_info`` receives the parsed info, is a chain
(正确示范1, ``page_info_chain.py``). The page is made up: no network is used.

Run: ``python -m examples.seeds.page_info_link``
"""

from __future__ import annotations

import asyncio
from typing import Any

from aqueue import Aqueue, Worker

app = Aqueue("tasks", broker="memory://", backend="memory://")
PAGES = {"https://example.com/": "<title>Example</title> hello world"}
stored: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()


@app.task
async def fetch_page(url: str) -> str:
    return PAGES[url]


@app.task
async def parse_page(page: str) -> dict[str, Any]:
    title = page.split("<title>")[1].split("</title>")[0]
    info = {"title": title, "words": len(page.split())}
    print("parse_page ->", info)
    return info


@app.task(ignore_result=True)
async def store_page_info(info: Any, url: str) -> None:
    await stored.put((url, info))


async def main() -> None:
    url = "https://example.com/"
    async with Worker(app):
        r = await fetch_page.apply_async((url,), link=[parse_page.s(), store_page_info.s(url)])
        print("fetch_page ->", await r.get(timeout=1))
        print("store_page_info got:", await asyncio.wait_for(stored.get(), 2))
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())
