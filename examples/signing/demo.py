"""Signed messages and results (``task_signing_key``), in one process on ``memory://``.

Run from the repository root: ``python -m examples.signing.demo``. A worker with the key runs a
signed call; a message written straight to the broker without the key (what anyone with write
access to Redis or RabbitMQ could do) goes to the dead-letter queue unrun; a result changed in
the result backend is refused by the client; then the key is rotated. In production, give every
producer, worker and beat the same setting, e.g. from the environment::

    app.conf.task_signing_key = os.environ["AQUEUE_SIGNING_KEY"]   # secrets.token_hex(32)

See docs/signing.md.
"""

from __future__ import annotations

import asyncio
import logging
import os

import orjson

from aqueue import Aqueue, Worker
from aqueue.exceptions import SecurityError
from aqueue.transports import Outgoing

OLD_KEY = os.environ.get("AQUEUE_SIGNING_KEY", "demo-only-key-change-me-0123456789")
NEW_KEY = "the-next-key-after-rotation-0123456789"

app = Aqueue("signing-demo", broker="memory://", task_signing_key=OLD_KEY)


@app.task(name="demo.transfer")
async def transfer(account: str, amount: int) -> str:
    return f"moved {amount} to {account}"


async def main() -> None:
    logging.basicConfig(level=logging.ERROR, format="  (log) %(message)s")  # to stderr
    broker = await app.broker()
    async with Worker(app, concurrency=4) as worker:
        # 1. A signed call runs.
        r = await transfer.delay("alice", 10)
        print(f"signed call:       {await r.get(timeout=5)}")

        # 2. A message written to the broker without the key is refused, not run.
        forged = orjson.dumps({"id": "forged-1", "task": "demo.transfer", "args": ["mallory", 1]})
        await broker.publish([Outgoing("default", forged, "forged-1")])
        await worker.wait_processed(2)
        [letter] = await broker.dead_letters("default", 10)
        print(f"forged message:    dead-lettered, {letter.reason.split(':')[0]!r}")

        # 3. A result changed in the result backend is refused by the client.
        r2 = await transfer.delay("carol", 30)
        await r2.get(timeout=5)
        backend = await app.result_backend()
        [raw] = await backend.get_many([r2.id])
        assert raw is not None
        await backend.store([(r2.id, raw.replace(b"carol", b"mallo"))], None)
        try:
            await app.AsyncResult(r2.id).get(timeout=5)
        except SecurityError as exc:
            print(f"changed result:    SecurityError, {str(exc).split(':')[0]!r}")

    # 4. Rotation, in every process: first add the new key after the old one ([OLD, NEW]:
    # verified, not yet signing), then put it first ([NEW, OLD]: it signs), and drop the old
    # key once nothing signed with it is left. A worker reads the keys when it starts.
    app.conf.task_signing_key = [NEW_KEY, OLD_KEY]
    async with Worker(app, concurrency=4):
        r3 = await transfer.delay("bob", 20)
        print(f"after rotation:    {await r3.get(timeout=5)}")
        print(f"older result:      {await app.AsyncResult(r.id).get(timeout=5)} (old key)")
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())
