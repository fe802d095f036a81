"""Result streaming and batching, end to end on SQLite (no server): ``python -m
examples.streaming.demo`` from the repository root (``--url redis://127.0.0.1:6379/0`` for
Redis).

- ``generate`` is an async generator standing in for a language model: each token it yields is
  stored by the worker as it comes, and ``r.stream()`` prints it at once - no polling. A second
  reader that starts late (``app.AsyncResult(id)``, as another process would) still gets every
  token. The task's result is the list of tokens.
- ``store_rows`` is a batch task: 1,000 calls sent one message each run in 10 invocations of
  100, and every call gets its own result.

See docs/tasks.md ("Result streaming", "Batching").
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from aqueue import Aqueue, Request, Worker

app = Aqueue("streaming-demo")
invocations: list[int] = []


@app.task(name="demo.generate")
async def generate(prompt: str) -> AsyncIterator[str]:
    """Yields a reply word by word, as a model streaming tokens would."""
    for word in f"You asked: {prompt}. Here is a streamed answer, one token at a time.".split():
        await asyncio.sleep(0.05)  # the model thinking
        yield word + " "


@app.task(name="demo.store_rows", batch_size=100, batch_timeout=0.5)
async def store_rows(calls: list[Request]) -> list[int]:
    """One bulk insert per batch; returns each row's new id, in the calls' order."""
    invocations.append(len(calls))
    return [10_000 + call.args[0] for call in calls]


async def main(url: str) -> None:
    app.conf.update(broker_url=url, result_backend=url)
    async with Worker(app, concurrency=8):
        r = await generate.delay("what is a task queue")
        started = time.monotonic()
        late = None
        async for token in r.stream(timeout=10):
            print(f"[{time.monotonic() - started:5.2f}s] {token}", flush=True)
            if late is None:
                late = asyncio.create_task(read_late(r.id))
        print("result:", "".join(await r))
        assert late is not None
        print("late reader got", await late, "tokens")

        handles = await store_rows.delay_many([(i,) for i in range(1000)])
        ids = await asyncio.gather(*handles)
        assert ids == [10_000 + i for i in range(1000)]
        print(f"1000 batched calls: {len(invocations)} invocations {invocations[:3]}..., "
              f"each handle its own result (e.g. {ids[7]})")  # fmt: skip


async def read_late(task_id: str) -> int:
    """A reader with no reply channel, starting after the first token: gets them all."""
    await asyncio.sleep(0.2)
    return len([token async for token in app.AsyncResult(task_id).stream(timeout=10)])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="broker and result backend (default: a SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(args.url or f"sqlite:///{Path(tmp) / 'demo.db'}"))
