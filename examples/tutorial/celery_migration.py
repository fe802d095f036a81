"""Coming from Celery: a small Celery project (docs/celery.md shows it), moved to aqueue.

Three tasks: fetch pages (retrying on connection errors), count their words, add the counts: a
chord. A periodic entry runs it every morning. ``PAGES`` stands in for the network, so the
example runs anywhere.

Run: ``python -m examples.tutorial.celery_migration`` (memory broker, a worker in this process).
"""

from __future__ import annotations

import asyncio

# --8<-- [start:app]
from aqueue import Aqueue, chord, crontab

app = Aqueue(
    "proj",
    broker="redis://127.0.0.1:6379/0",  # the same URLs as Celery's
    backend="redis://127.0.0.1:6379/1",
)
app.conf.update(  # the same setting names; a name aqueue has not is refused with what to do
    task_serializer="json",
    result_expires=3600,
    worker_prefetch_multiplier=1,
    timezone="Europe/Paris",
    beat_schedule={
        "morning-count": {
            "task": "proj.count_site",
            "schedule": crontab(hour=7, minute=0),
            "args": (["https://example.org/a", "https://example.org/b"],),
        },
    },
)
# --8<-- [end:app]

PAGES = {"https://example.org/a": "one two three", "https://example.org/b": "four five"}
failures = {"https://example.org/b": 1}  # the first fetch of /b fails: a retry is seen


# --8<-- [start:tasks]
@app.task(name="proj.fetch", autoretry_for=(ConnectionError,), retry_backoff=0.05, max_retries=5)
async def fetch(url: str) -> str:
    if failures.get(url, 0) > 0:  # stands for the network: await client.get(url)
        failures[url] -= 1
        raise ConnectionError(f"{url}: connection reset")
    return PAGES[url]


@app.task(name="proj.count_words")
def count_words(text: str) -> int:  # CPU work stays a plain function: it runs in a thread
    return len(text.split())


@app.task(name="proj.total")
async def total(counts: list[int]) -> int:
    return sum(counts)


@app.task(name="proj.count_site")
async def count_site(urls: list[str]) -> str:
    result = await chord((fetch.s(u) | count_words.s() for u in urls), total.s()).delay()
    return result.id


# --8<-- [end:tasks]


async def main() -> None:
    from aqueue import Worker

    async with Worker(app):
        # --8<-- [start:call]
        urls = list(PAGES)
        result = await chord((fetch.s(u) | count_words.s() for u in urls), total.s()).delay()
        print("words:", await result.get(timeout=10))
        # --8<-- [end:call]
        print("the failed fetch was retried:", failures["https://example.org/b"] == 0)
    await app.close()


if __name__ == "__main__":
    app.conf.update(broker_url="memory://", result_backend="memory://")
    asyncio.run(main())
