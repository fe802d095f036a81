"""RabbitMQ's CPU per message published and per delivery consumed and acked: one
``basic.ack`` per delivery, or one ``multiple`` ack for each run of a channel's oldest
deliveries (what the AMQP broker sends, ``aqueue/transports/amqp/ledger.py``); with
``--priorities``, classic queues declared with ``x-max-priority`` or without (the
``priorities`` transport option), both acked the AMQP broker's way.

Each round fills a durable queue with ``--n`` persistent messages, then drains it through
``AMQPBroker.fetch`` and ``AMQPBroker.ack`` in batches of ``--batch`` (a worker's runners
finishing together), acked in delivery order, and reads the RabbitMQ node's CPU time (user +
system of its processes, from ``/proc``) over the drain. The two ways alternate, round after
round, on one throwaway node (``benchmarks/peers``' ``Services``); the figures are medians.
Run from the repository root::

    python benchmarks/amqp_acks.py               # --n 20000 --batch 100 --rounds 5
    python benchmarks/amqp_acks.py --queue-type quorum
    python benchmarks/amqp_acks.py --priorities   # classic queues with and without priorities

Prints the machine, then per way: RabbitMQ's CPU per message published and per delivery
consumed (µs), and the drain rate.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Collection
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
for path in (REPO_ROOT, REPO_ROOT / "benchmarks" / "peers"):
    if str(path) not in sys.path:  # run as a script: import this checkout's aqueue
        sys.path.insert(0, str(path))

import bench  # type: ignore[import-not-found]  # noqa: E402  (benchmarks/peers/bench.py)

from aqueue.transports import Outgoing  # noqa: E402
from aqueue.transports.amqp.broker import AMQPBroker  # noqa: E402
from aqueue.transports.amqp.ledger import Ledger  # noqa: E402
from benchmarks.throughput import tree_cpu  # noqa: E402

_settle = Ledger.settle


def _one_by_one(ledger: Ledger, tags: Collection[int]) -> tuple[int, list[int]]:
    _settle(ledger, tags)  # the ledger's bookkeeping, as in the other way
    return 0, sorted(tags)


async def drain(
    url: str, pid: int, args: argparse.Namespace, queue: str, priorities: bool = True
) -> tuple[float, float, float]:
    """Fill ``queue``, then drain it; RabbitMQ's µs of CPU per message published and per
    delivery consumed, and deliveries/s."""
    options = {
        "queue_type": args.queue_type,
        "prefetch_count": args.batch * 2,
        "priorities": priorities,
    }
    producer, consumer = AMQPBroker(url, options), AMQPBroker(url, options)
    await producer.connect()
    await consumer.connect()
    try:
        body = b'{"task":"bench.noop","args":[],"kwargs":{}}' + b" " * 200
        cpu = tree_cpu(pid)
        for start in range(0, args.n, 1000):
            count = min(1000, args.n - start)
            await producer.publish([Outgoing(queue, body, f"m{start + i}") for i in range(count)])
        published = tree_cpu(pid) - cpu
        cpu, t0 = tree_cpu(pid), time.perf_counter()
        left = args.n
        while left:
            got = await consumer.fetch([queue], min(args.batch, left), 5)
            if not got:
                raise RuntimeError(f"{left} messages did not arrive")
            await consumer.ack(got)
            left -= len(got)
        elapsed = time.perf_counter() - t0
        await asyncio.sleep(0.5)  # the last acks reach the node
        used = tree_cpu(pid) - cpu
        await consumer.purge([queue])
        return published / args.n * 1e6, used / args.n * 1e6, args.n / elapsed
    finally:
        await consumer.close()
        await producer.close()


async def measure(
    url: str, pid: int, args: argparse.Namespace
) -> dict[str, list[tuple[float, float, float]]]:
    if args.priorities:
        named = {"with priorities": True, "without priorities": False}
        found: dict[str, list[tuple[float, float, float]]] = {way: [] for way in named}
        for round_ in range(args.rounds):
            for way, on in named.items():
                queue = f"bench-prio-{round_}-{int(on)}"
                found[way].append(await drain(url, pid, args, queue, on))
        return found
    ways: dict[str, list[tuple[float, float, float]]] = {
        "one ack per delivery": [],
        "multiple acks": [],
    }
    for round_ in range(args.rounds):
        for way in ways:
            Ledger.settle = _one_by_one if way == "one ack per delivery" else _settle  # type: ignore[method-assign]
            try:
                ways[way].append(await drain(url, pid, args, f"bench-acks-{round_}-{len(way)}"))
            finally:
                Ledger.settle = _settle  # type: ignore[method-assign]
    return ways


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=20_000, help="messages per round")
    parser.add_argument(
        "--batch", type=int, default=100, help="deliveries fetched and acked at once"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--queue-type", choices=("classic", "quorum"), default="classic")
    parser.add_argument(
        "--priorities",
        action="store_true",
        help="compare classic queues with and without x-max-priority instead",
    )
    args = parser.parse_args()
    if args.priorities and args.queue_type != "classic":
        parser.error("--priorities compares classic queues")
    work = Path(tempfile.mkdtemp(prefix="aqueue-amqp-acks-"))
    services = bench.Services(work, f"amqp-acks-{time.time_ns()}")
    try:
        url = services.start_rabbitmq()
        pid = next(p.pid for name, p in services.procs if name == "rabbitmq-server")
        setup = f"{args.queue_type} queue, {args.n:,} messages, acks of {args.batch}"
        print(f"{bench.machine(None)}; {setup}")
        for way, figures in asyncio.run(measure(url, pid, args)).items():
            sent, cpu, rate = (statistics.median(f[i] for f in figures) for i in range(3))
            print(
                f"  {way:22s} RabbitMQ CPU {sent:6.1f} µs per message published, {cpu:6.1f} µs "
                f"per delivery consumed  {rate:8,.0f}/s"
            )
    finally:
        services.stop()


if __name__ == "__main__":
    main()
