"""RabbitMQ's CPU per delivery consumed and acked: one ``basic.ack`` per delivery, or one
``multiple`` ack for each run of a channel's oldest deliveries (what the AMQP broker sends,
``aqueue/transports/amqp/ledger.py``).

Each round fills a durable queue with ``--n`` persistent messages, then drains it through
``AMQPBroker.fetch`` and ``AMQPBroker.ack`` in batches of ``--batch`` (a worker's runners
finishing together), acked in delivery order, and reads the RabbitMQ node's CPU time (user +
system of its processes, from ``/proc``) over the drain. The two ways alternate, round after
round, on one throwaway node (``benchmarks/peers``' ``Services``); the figures are medians.
Run from the repository root::

    python benchmarks/amqp_acks.py               # --n 20000 --batch 100 --rounds 5
    python benchmarks/amqp_acks.py --queue-type quorum

Prints the machine, then per way: RabbitMQ's CPU per delivery (µs) and the drain rate.
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


async def drain(url: str, pid: int, args: argparse.Namespace, queue: str) -> tuple[float, float]:
    """Fill ``queue``, then drain it; RabbitMQ's µs of CPU per delivery, and deliveries/s."""
    options = {"queue_type": args.queue_type, "prefetch_count": args.batch * 2}
    producer, consumer = AMQPBroker(url, options), AMQPBroker(url, options)
    await producer.connect()
    await consumer.connect()
    try:
        body = b'{"task":"bench.noop","args":[],"kwargs":{}}' + b" " * 200
        for start in range(0, args.n, 1000):
            count = min(1000, args.n - start)
            await producer.publish([Outgoing(queue, body, f"m{start + i}") for i in range(count)])
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
        return used / args.n * 1e6, args.n / elapsed
    finally:
        await consumer.close()
        await producer.close()


async def measure(
    url: str, pid: int, args: argparse.Namespace
) -> dict[str, list[tuple[float, float]]]:
    ways: dict[str, list[tuple[float, float]]] = {"one ack per delivery": [], "multiple acks": []}
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
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="aqueue-amqp-acks-"))
    services = bench.Services(work, f"amqp-acks-{time.time_ns()}")
    try:
        url = services.start_rabbitmq()
        pid = next(p.pid for name, p in services.procs if name == "rabbitmq-server")
        setup = f"{args.queue_type} queue, {args.n:,} messages, acks of {args.batch}"
        print(f"{bench.machine(None)}; {setup}")
        for way, figures in asyncio.run(measure(url, pid, args)).items():
            cpu = statistics.median(f[0] for f in figures)
            rate = statistics.median(f[1] for f in figures)
            print(f"  {way:22s} RabbitMQ {cpu:6.1f} µs of CPU per delivery  {rate:8,.0f}/s")
    finally:
        services.stop()


if __name__ == "__main__":
    main()
