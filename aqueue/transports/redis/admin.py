"""Queue administration on the Redis broker's layout: depths, purge, dead-letter clean-up.

:class:`~aqueue.transports.redis.broker.RedisBroker` delegates its
:class:`~aqueue.transports.base.QueueAdmin` methods here; the key layout is the broker's (see
:mod:`aqueue.transports.redis.keys`):

- a queue's ready and leased messages are the entries of its ten priority streams; an entry
  in the consumer group's pending entries list is *unacked* (leased), any other is *ready*;
- delayed messages are members of the delayed sorted set (one for all queues on a single
  server, one per queue on a cluster), each naming its target stream;
  they are counted and removed by Lua scripts that read member prefixes on the server, in
  batches of :data:`BATCH`, so bodies never cross the network and no call blocks Redis long;
- dead letters are the entries of ``aqueue:dlq:<queue>`` (on a cluster ``aqueue:{<queue>}:dlq``).

Each function takes the broker's key layout (:class:`~aqueue.transports.redis.keys.Layout`).

Purging skips pending entries, so a worker holding a message still acks it normally.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from aqueue.transports.base import QueueDepth
from aqueue.transports.redis import keys, lua
from aqueue.transports.redis.client import as_bytes, redis_errors

__all__ = ["purge", "purge_dead_letters", "queue_depths"]

#: Entries or members handled per script call.
BATCH = 1000

_STREAM_PREFIX = keys.stream("", 0).rsplit(":", 2)[0] + ":"  # "aqueue:stream:"
_DLQ_PREFIX = keys.dlq("")  # "aqueue:dlq:"
_TAGGED = keys.PREFIX + "{"  # a cluster queue key: "aqueue:{<queue>}:<kind>"


def _queue_of_stream(stream: str) -> str:
    return stream.removeprefix(_STREAM_PREFIX).rsplit(":", 1)[0]


async def _delayed_counts(client: aioredis.Redis, delayed_sets: Sequence[str]) -> Counter[str]:
    """Delayed messages per target stream, in ``delayed_sets``."""
    script = lua.register(client, "count_delayed")
    counts: Counter[str] = Counter()
    for delayed in delayed_sets:
        start = 0
        while True:
            read, flat = await script(keys=[delayed], args=[start, start + BATCH - 1])
            for i in range(0, len(flat), 2):
                counts[as_bytes(flat[i]).decode()] += int(flat[i + 1])
            if int(read) < BATCH:
                break
            start += BATCH
    return counts


async def _known_queues(client: aioredis.Redis, delayed: Counter[str]) -> list[str]:
    found = {_queue_of_stream(s) for s in delayed}
    async for key in client.scan_iter(match=f"{_STREAM_PREFIX}*", count=BATCH):
        found.add(_queue_of_stream(as_bytes(key).decode()))
    async for key in client.scan_iter(match=f"{_DLQ_PREFIX}*", count=BATCH):
        found.add(as_bytes(key).decode().removeprefix(_DLQ_PREFIX))
    return sorted(found)


async def _known_cluster_queues(client: aioredis.Redis) -> list[str]:
    """The queues with a stream, a delayed set or dead letters on a cluster (every primary
    scanned)."""
    found = set()
    for kind in (":stream:", ":delayed", ":dlq"):
        async for key in client.scan_iter(match=f"{_TAGGED}*}}{kind}*", count=BATCH):
            name = as_bytes(key).decode().removeprefix(_TAGGED)
            queue, sep, rest = name.rpartition("}" + kind)
            if sep and (kind == ":stream:" or not rest):
                found.add(queue)
    return sorted(found)


async def queue_depths(
    client: aioredis.Redis,
    url: str,
    queues: Sequence[str] | None,
    layout: keys.Layout = keys.SINGLE,
) -> list[QueueDepth]:
    """See :meth:`aqueue.transports.base.QueueAdmin.queue_depths`.

    Ready is a stream's length minus its pending entries; a lease that ran out but was not
    reclaimed yet still counts as unacked.

    Raises:
        BrokerConnectionError: the server cannot be reached.
    """
    with redis_errors(url, "queue_depths"):
        names = list(dict.fromkeys(queues)) if queues is not None else None
        if layout.cluster:
            if names is None:
                names = await _known_cluster_queues(client)
            delayed = await _delayed_counts(client, [layout.delayed(name) for name in names])
        else:
            delayed = await _delayed_counts(client, [keys.delayed()])
            if names is None:
                names = await _known_queues(client, delayed)
        async with client.pipeline(transaction=False) as pipe:
            for name in names:
                for priority in keys.PRIORITIES:
                    pipe.xlen(layout.stream(name, priority))
                    pipe.xpending(layout.stream(name, priority), keys.GROUP)
                pipe.xlen(layout.dlq(name))
            results: list[Any] = await pipe.execute(raise_on_error=False)
    out = []
    per_queue = 2 * len(keys.PRIORITIES) + 1
    for index, name in enumerate(names):
        chunk = results[index * per_queue : (index + 1) * per_queue]
        length = sum(int(v) for v in chunk[0:-1:2] if isinstance(v, int))
        # XPENDING fails with NOGROUP on a stream nobody consumed yet: nothing is leased there.
        unacked = sum(int(v["pending"]) for v in chunk[1:-1:2] if isinstance(v, dict))
        waiting = sum(delayed[layout.stream(name, p)] for p in keys.PRIORITIES)
        dead = chunk[-1] if isinstance(chunk[-1], int) else 0
        out.append(QueueDepth(name, length - unacked, waiting, unacked, int(dead)))
    return out


async def purge(
    client: aioredis.Redis, url: str, queues: Sequence[str], layout: keys.Layout = keys.SINGLE
) -> int:
    """See :meth:`aqueue.transports.base.QueueAdmin.purge`.

    Raises:
        BrokerConnectionError: the server cannot be reached.
    """
    by_set: dict[str, list[str]] = {}  # delayed set -> the streams of its queues purged
    for queue in dict.fromkeys(queues):
        targets = by_set.setdefault(layout.delayed(queue), [])
        targets += [layout.stream(queue, p) for p in keys.PRIORITIES]
    streams = [stream for targets in by_set.values() for stream in targets]
    if not streams:
        return 0
    removed = 0
    with redis_errors(url, "purge"):
        purge_stream = lua.register(client, "purge_stream")
        for stream in streams:
            start = "-"
            while True:
                read, gone, last = await purge_stream(
                    keys=[stream], args=[keys.GROUP, start, BATCH]
                )
                removed += int(gone)
                if int(read) < BATCH:
                    break
                start = "(" + as_bytes(last).decode()  # exclusive: after the last entry read
        purge_delayed = lua.register(client, "purge_delayed")
        for delayed, targets in by_set.items():
            index = 0
            while True:
                read, gone = await purge_delayed(
                    keys=[delayed], args=[index, index + BATCH - 1, *targets]
                )
                removed += int(gone)
                if int(read) < BATCH:
                    break
                index += int(read) - int(gone)  # removed members no longer take an index
    return removed


async def purge_dead_letters(
    client: aioredis.Redis,
    url: str,
    queue: str,
    limit: int | None,
    layout: keys.Layout = keys.SINGLE,
) -> int:
    """See :meth:`aqueue.transports.base.QueueAdmin.purge_dead_letters`.

    Raises:
        BrokerConnectionError: the server cannot be reached.
    """
    key = layout.dlq(queue)
    with redis_errors(url, "purge_dead_letters"):
        if limit is None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.xlen(key)
                pipe.delete(key)
                count, _ = await pipe.execute()
            return int(count)
        if limit <= 0:
            return 0
        trim = lua.register(client, "trim_dlq")
        return int(await trim(keys=[key], args=[limit]))
