"""Periodic tasks in one process: a ``beat_schedule`` entry, plus one added and removed at runtime.

Run from the repository root: ``python -m examples.beat.dynamic``. Beat and a worker share this
process's event loop on the ``memory://`` broker, so no server is needed. In production run
``aqueue worker -A proj -B`` (or ``aqueue beat -A proj``) in as many processes as you like, and
add entries with ``await app.beat.add(...)`` or ``aqueue beat add -A proj ...``.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from aqueue import Aqueue, Worker, crontab
from aqueue.beat import Beat

app = Aqueue("beat-demo", broker="memory://")
app.conf.timezone = "Asia/Shanghai"
app.conf.beat_schedule = {
    "heartbeat": {"task": "demo.say", "schedule": timedelta(seconds=1), "args": ("tick",)},
    "monday-morning": {"task": "demo.say", "schedule": crontab(hour=7, minute=30, day_of_week=1)},
}


@app.task(name="demo.say")
async def say(word: str = "monday") -> str:
    print(f"  task ran: {word}")
    return word


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("aqueue.worker").setLevel(logging.WARNING)
    async with Worker(app, concurrency=4, shutdown_timeout=2), Beat(app, max_interval=0.2) as beat:
        await asyncio.sleep(2.2)
        await app.beat.add("fast", task=say, schedule=0.5, args=("fast",))
        print("added 'fast' (every 0.5 s) at runtime")
        await asyncio.sleep(2.0)
        for entry in await app.beat.list():
            kind = "stored" if entry.dynamic else "beat_schedule"
            print(f"  {entry.name:<15} {kind:<14} last run: {entry.last_run}")
        await app.beat.remove("fast")
        print("removed 'fast'")
        await asyncio.sleep(1.5)
    print(f"sent per entry: {dict(beat.sent)}")
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())
