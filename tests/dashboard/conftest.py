"""Fixtures of the dashboard tests: a dashboard served by uvicorn in the test's event loop, and
headless Chromium (Debian's ``chromium`` package) driven by Playwright.

The browser tests skip, saying why, only when the browser or Playwright is absent; they never
download a browser. ``AQUEUE_CHROMIUM`` names another Chromium binary.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from aqueue import Aqueue
from tests.net import free_port

CHROMIUM = os.environ.get("AQUEUE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def chromium_or_skip() -> str:
    """The Chromium binary, or skip the test with the reason (fail instead under CI, where
    ``.ci/run`` installs it)."""
    absent = pytest.fail if os.environ.get("CI") else pytest.skip
    if not os.path.exists(CHROMIUM):
        absent(f"no Chromium at {CHROMIUM} (apt-get install chromium; or set AQUEUE_CHROMIUM)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        absent("playwright is not installed (pip install playwright; no browser download)")
    return CHROMIUM


@dataclass
class Served:
    """A dashboard being served: its URL and the ASGI app."""

    url: str
    web: Any


@contextlib.asynccontextmanager
async def serve(app: Aqueue, **options: Any) -> AsyncIterator[Served]:
    """Serve ``Dashboard(app, **options)`` on a free loopback port until the block ends."""
    import uvicorn

    from aqueue.dashboard import Dashboard

    web = Dashboard(app, **options)
    port = free_port()
    config = uvicorn.Config(
        web,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                await task  # raises why it did not start
                raise AssertionError("uvicorn exited before it started")
            await asyncio.sleep(0.02)
        yield Served(f"http://127.0.0.1:{port}", web)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
