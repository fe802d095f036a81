"""Reply paths for ``rpc://`` measured on a throwaway RabbitMQ: direct reply-to, an exclusive
auto-delete queue, and a named queue with ``x-expires`` (the one aqueue uses).

For each, in rounds: the time to set the reply path up, one reply's round trip (p50/p99), replies
per second (20,000 published by another connection, confirmed, 200 at a time), what happens to
1,000 replies sent after the caller left, and what arrives of 100 replies sent while the caller's
connection is down (its user is refused until they are sent) and 100 sent after it came back.
The figures are in docs/amqp.md ("Results over rpc://").

Run from the repository root (starts its own node as the test suite does; about a minute)::

    python benchmarks/rpc_reply_paths.py [--rounds 3] [--n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import aio_pika.abc

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make `tests` importable
    sys.path.insert(0, str(REPO_ROOT))
# The test suite's throwaway node (its own port, files and TLS), imported once the path is set.
_conftest = importlib.import_module("tests.conftest")
RabbitNode = _conftest.RabbitNode

KINDS = ("direct reply-to", "exclusive auto-delete", "named x-expires")
BODY = b"x" * 200


class Replies:
    """Replies received by one caller; :meth:`wait` for a count."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.want = 0
        self.enough = asyncio.Event()

    def take(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.bodies.append(message.body)
        if len(self.bodies) >= self.want:
            self.enough.set()

    async def wait(self, count: int) -> None:
        self.want = count
        if len(self.bodies) < count:
            self.enough.clear()
            await self.enough.wait()


async def reply_path(kind: str, channel: aio_pika.abc.AbstractChannel, replies: Replies) -> str:
    """Set the reply path of ``kind`` up on ``channel``; return the name replies are sent to."""

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        replies.take(message)

    if kind == "direct reply-to":
        pseudo = await channel.get_queue("amq.rabbitmq.reply-to", ensure=False)
        await pseudo.consume(on_message, no_ack=True)
        # The name is learnt by publishing through this channel: RabbitMQ rewrites reply_to.
        probe = await channel.declare_queue(exclusive=True, auto_delete=True)
        await channel.default_exchange.publish(
            aio_pika.Message(b"", reply_to="amq.rabbitmq.reply-to"), probe.name
        )
        got = None
        while got is None:
            got = await probe.get(no_ack=True, fail=False)
        await probe.delete()
        assert got.reply_to is not None
        return got.reply_to
    if kind == "exclusive auto-delete":
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    else:
        queue = await channel.declare_queue(
            f"aqueue.reply.{uuid.uuid4().hex[:16]}", arguments={"x-expires": 60_000}
        )
    await queue.consume(on_message, no_ack=True)
    return queue.name


async def publish(channel: aio_pika.abc.AbstractChannel, name: str, n: int, body: bytes) -> None:
    """``n`` replies to ``name``, 200 in flight at a time, each confirmed."""
    for start in range(0, n, 200):
        await asyncio.gather(
            *(
                channel.default_exchange.publish(aio_pika.Message(body), name, mandatory=False)
                for _ in range(min(200, n - start))
            )
        )


async def speed(kind: str, url: str, n: int) -> dict[str, Any]:
    caller = await aio_pika.connect(url)
    worker = await aio_pika.connect(url)
    try:
        out = await worker.channel(publisher_confirms=True)
        replies = Replies()
        started = time.perf_counter()
        name = await reply_path(kind, await caller.channel(), replies)
        setup_ms = (time.perf_counter() - started) * 1000
        trips = []
        for i in range(500):
            started = time.perf_counter()
            await publish(out, name, 1, BODY)
            await replies.wait(i + 1)
            trips.append((time.perf_counter() - started) * 1000)
        trips.sort()
        started = time.perf_counter()
        await asyncio.gather(publish(out, name, n, BODY), replies.wait(500 + n))
        rate = n / (time.perf_counter() - started)
        await caller.close()
        await publish(out, name, 1000, BODY)  # to a caller that has gone: must not fail
        return {
            "setup ms": round(setup_ms, 1),
            "p50 ms": round(trips[len(trips) // 2], 2),
            "p99 ms": round(trips[int(len(trips) * 0.99)], 2),
            "replies/s": round(rate),
        }
    finally:
        await caller.close()
        await worker.close()


async def outage(kind: str, node: Any, worker_url: str) -> dict[str, Any]:
    """100 replies sent while the caller (user guest) is cut off, then 100 after it is back."""
    tag = f"caller-{uuid.uuid4().hex[:8]}"
    caller = await aio_pika.connect_robust(
        node.url, reconnect_interval=0.5, client_properties={"connection_name": tag}
    )
    worker = await aio_pika.connect(worker_url)
    try:
        replies = Replies()
        channel = await caller.channel()  # held: the robust connection restores live channels
        name = await reply_path(kind, channel, replies)
        out = await worker.channel(publisher_confirms=True)
        await asyncio.to_thread(_cut_off, node, tag)
        await asyncio.sleep(1)
        await publish(out, name, 100, b"during")
        await asyncio.to_thread(node.ctl, "set_permissions", "-p", "/", "guest", ".*", ".*", ".*")
        await asyncio.sleep(5)  # reconnected
        await publish(out, name, 100, b"after")
        await asyncio.sleep(1)
        assert not channel.is_closed
        return {
            "sent while away, arrived": replies.bodies.count(b"during"),
            "sent after, arrived": replies.bodies.count(b"after"),
        }
    finally:
        node.ctl("set_permissions", "-p", "/", "guest", ".*", ".*", ".*")
        await caller.close()
        await worker.close()


def _cut_off(node: Any, tag: str) -> None:
    node.ctl("clear_permissions", "-p", "/", "guest")
    for line in node.ctl("list_connections", "-q", "pid", "client_properties").splitlines():
        if tag in line:
            node.ctl("close_connection", line.split()[0], "cut off")


async def measure(node: Any, rounds: int, n: int, say: Callable[[str], None]) -> None:
    node.ctl("add_user", "bench-worker", "pw")
    node.ctl("set_permissions", "-p", "/", "bench-worker", ".*", ".*", ".*")
    worker_url = node.url.replace("guest:guest", "bench-worker:pw")
    for rnd in range(1, rounds + 1):
        for kind in KINDS:
            say(f"round {rnd} {kind}: {await speed(kind, node.url, n)}")
    for kind in KINDS:
        say(f"outage {kind}: {await outage(kind, node, worker_url)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=20_000, help="replies for the rate (20000)")
    args = parser.parse_args()
    node = RabbitNode(_conftest._RABBIT_SCRIPT)
    try:
        node.start()
        asyncio.run(measure(node, args.rounds, args.n, lambda line: print(line, flush=True)))
    finally:
        node.remove()


if __name__ == "__main__":
    main()
