"""Producer and worker reach Redis through a faulty network (:class:`FaultProxy`): added
latency, connections cut mid-batch (a request reaches the server, its reply is lost), every
connection reset, every connection half-open (it stops forwarding without closing). No
``delay()`` takes longer than ``broker_connection_timeout``, no ``get()`` longer than its
timeout, and every acknowledged send runs."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from aqueue.exceptions import AqueueError, BrokerError
from aqueue.exceptions import TimeoutError as ResultTimeout
from tests.chaos import chaos_app
from tests.chaos.harness import (
    SIZES,
    FaultProxy,
    Ledger,
    Result,
    Stopwatch,
    peak_rss_mb,
    report,
    worker,
    worker_env,
)

CONCURRENCY = 20
CLIENTS = 16  # producer coroutines, each: delay(), then get() on its result
VISIBILITY = 5.0
CONNECTION_TIMEOUT = 3.0  # broker_connection_timeout: the bound of every delay()
SOCKET_TIMEOUT = 3.0  # redis_socket_timeout: the bound of every other Redis reply
GET_TIMEOUT = 6.0  # every get(timeout=...) call
# What the event loop of a busy 2-core machine may add to a bound before a call returns.
SLACK = 1.0

# The faults, each applied when this share of the keys has been sent.
FAULTS: tuple[tuple[float, str, Callable[[FaultProxy], None]], ...] = (
    (0.10, "latency 50 ms each way", lambda p: p.set_latency(0.05)),
    (0.25, "cut after 1-40 requests", lambda p: (p.set_latency(0.0), p.cut_after(40))),
    (0.40, "reset all", lambda p: (p.cut_after(None), p.drop_all())),
    (0.55, "half-open all", lambda p: p.half_open_all()),
    (0.70, "latency 20 ms, reset all", lambda p: (p.set_latency(0.02), p.drop_all())),
    (0.85, "half-open all again", lambda p: (p.set_latency(0.0), p.half_open_all())),
)


@dataclass
class Calls:
    """The producer's calls and their outcomes."""

    sends: Stopwatch = field(default_factory=Stopwatch)
    gets: Stopwatch = field(default_factory=Stopwatch)
    acknowledged: set[int] = field(default_factory=set)
    send_failed: int = 0
    got: int = 0
    get_timed_out: int = 0
    get_failed: int = 0
    # (when delay() was called, when get() returned the value) of each call that got one
    round_trips: list[tuple[float, float]] = field(default_factory=list)


@pytest.mark.timeout(1800)
async def test_calls_through_a_faulty_network(redis_server: str, ledger: Ledger) -> None:
    total = SIZES.proxy_tasks
    queue = f"chaos-{uuid.uuid4().hex[:8]}"
    proxy = FaultProxy(int(redis_server.rsplit(":", 1)[1]))
    proxy.start()
    url = proxy.url(0)
    producer = chaos_app.build(url, url, queue, VISIBILITY, CONNECTION_TIMEOUT, SOCKET_TIMEOUT)
    echo = producer.tasks["chaos.echo"]
    env = worker_env(
        url,
        url,
        queue,
        ledger,
        CHAOS_VISIBILITY=str(VISIBILITY),
        CHAOS_CONNECTION_TIMEOUT=str(CONNECTION_TIMEOUT),
        CHAOS_SOCKET_TIMEOUT=str(SOCKET_TIMEOUT),
    )
    calls = Calls()
    keys = iter(range(total))
    schedule = {round(total * share): (name, fault) for share, name, fault in FAULTS}
    applied: list[tuple[str, float]] = []  # (fault, when)

    async def client() -> None:
        for key in keys:
            if key in schedule:
                name, fault = schedule[key]
                fault(proxy)
                applied.append((name, time.monotonic()))
            sent_at = time.monotonic()
            try:
                result = await calls.sends.timed(echo.delay(ledger.run, key, total))
            except BrokerError:
                calls.send_failed += 1
                continue
            calls.acknowledged.add(key)
            try:
                value = await calls.gets.timed(result.get(timeout=GET_TIMEOUT))
            except ResultTimeout:
                calls.get_timed_out += 1
            except AqueueError:
                calls.get_failed += 1
            else:
                assert value == key
                calls.got += 1
                calls.round_trips.append((sent_at, time.monotonic()))

    t0 = time.monotonic()
    try:
        async with worker(env, CONCURRENCY) as running:
            assert running.proc is not None
            await asyncio.gather(*(client() for _ in range(CLIENTS)))
            lost = await ledger.wait_ran(calls.acknowledged, timeout=VISIBILITY * 4 + 60)
            peak = peak_rss_mb(running.proc.pid)
    finally:
        await producer.close()
        proxy.close()
    wall = time.monotonic() - t0
    runs = await ledger.runs()
    # After each fault: how long until a call made after it got its task's value back.
    recoveries = {
        name: min((got for sent, got in calls.round_trips if sent >= at), default=math.inf) - at
        for name, at in applied
    }
    report(
        Result(
            "faulty proxy: latency, cuts, resets, half-open (Redis)",
            len(calls.acknowledged),
            len(lost),
            sum(n - 1 for n in runs.values()),
            recovery_s=max(recoveries.values()),
            peak_rss_mb=peak,
            wall_s=wall,
            notes={
                "attempted": total,
                "send_failed": calls.send_failed,
                "longest_send_s": round(calls.sends.longest, 2),
                "got": calls.got,
                "get_timed_out": calls.get_timed_out,
                "get_failed": calls.get_failed,
                "longest_get_s": round(calls.gets.longest, 2),
                "connections": proxy.stats.connections,
                "cut": proxy.stats.cut,
                "reset": proxy.stats.reset,
                "half_open": proxy.stats.frozen,
                **{f"recovery_s {name}": round(s, 2) for name, s in recoveries.items()},
            },
        )
    )
    assert [name for name, _ in applied] == [name for _, name, _ in FAULTS]
    assert proxy.stats.cut and proxy.stats.reset and proxy.stats.frozen, proxy.stats
    # The bounds as the app has them: every send within broker_connection_timeout.
    assert producer.conf.broker_connection_timeout == CONNECTION_TIMEOUT
    assert producer.conf.redis_socket_timeout == SOCKET_TIMEOUT
    assert calls.sends.longest <= CONNECTION_TIMEOUT + SLACK, calls.sends.longest
    assert calls.gets.longest <= GET_TIMEOUT + SLACK, calls.gets.longest
    assert lost == [], f"{len(lost)} acknowledged sends never ran: {lost[:20]}"
    # Clients recover: after every fault, a call made later got its result back.
    assert all(math.isfinite(s) for s in recoveries.values()), recoveries
