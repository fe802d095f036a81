"""Named by ``include=``."""

from __future__ import annotations

from tests.apps.discover.app import app


@app.task(name="discover.extra")
async def extra() -> str:
    return "extra"
