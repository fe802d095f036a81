"""Getting started, page 5: periodic tasks with beat.

Run: ``python -m examples.tutorial.periodic`` (memory broker; a worker and beat in this process).
In production: ``aqueue beat -A proj`` beside the workers, or ``aqueue worker -A proj -B``.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from aqueue import Aqueue, Worker, crontab
from aqueue.beat import Beat

app = Aqueue("tutorial-beat", broker="memory://", backend="memory://")
ticks: asyncio.Queue[str] = asyncio.Queue()  # what the periodic task saw, for this script


@app.task(name="tutorial.report")
async def report(kind: str) -> str:
    await ticks.put(kind)
    return kind


# --8<-- [start:schedule]
app.conf.timezone = "Europe/Paris"  # crontab fields are read in this zone
app.conf.beat_schedule = {
    "every-200-ms": {
        "task": "tutorial.report",
        "schedule": timedelta(milliseconds=200),  # or a number of seconds
        "args": ("fast",),
    },
    "monday-7-30": {
        "task": "tutorial.report",
        "schedule": crontab(hour=7, minute=30, day_of_week=1),
        "args": ("weekly",),
    },
    "every-5-minutes": {
        "task": "tutorial.report",
        "schedule": crontab.from_string("*/5 * * * *"),
        "args": ("cron line",),
    },
}
app.add_periodic_task(3600, report.s("hourly"), name="hourly")  # Celery's method, too
# --8<-- [end:schedule]


async def main() -> None:
    # --8<-- [start:run]
    async with Worker(app), Beat(app, max_interval=0.1) as beat:
        first = [await asyncio.wait_for(ticks.get(), 5) for _ in range(3)]
        print("ran:", first)  # a new entry starts now: "hourly" is first due in an hour
        await app.beat.add("runtime", task=report, schedule=0.1, args=("added",))
        while await asyncio.wait_for(ticks.get(), 5) != "added":
            pass
        print("added at run time, then ran")
        print("entries:", sorted(entry.name for entry in await app.beat.list()))
        await app.beat.remove("runtime")
    print("sent by this beat:", beat.sent["every-200-ms"] >= 3)
    # --8<-- [end:run]
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())
