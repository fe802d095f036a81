"""aqueue on a real Redis Cluster: three primaries, no replicas, on loopback (``make
test-cluster``; outside ``make test``), broker, results and beat all on ``redis+cluster://``.

- 8 queues whose keys land on all three primaries (checked with ``CLUSTER KEYSLOT`` and
  ``CLUSTER SLOTS``, then by finding each queue's stream on its primary alone); 50,000 tasks
  over them through two worker processes, every one run exactly once with its result right
  (``$RCLUSTER_N`` changes the number);
- a chord of 1,000 tasks;
- three beat processes sending each tick exactly once.

Each scenario prints one ``redis cluster:`` line (run with ``-s``).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from aqueue import Aqueue, chord
from aqueue.transports import ReplyChannels, backend_from_url
from aqueue.transports.redis.keys import CLUSTER
from tests.apps.redis_cluster_tasks import RUNS, build
from tests.beat.test_beat_processes import (
    _QUEUE,
    beat_env,
    beat_processes,
    drain,
    each_tick_once,
    stop_beats,
)
from tests.transports.redis_cluster import RedisClusterGroup
from tests.workerproc import WorkerProcess

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

APP = "tests.apps.redis_cluster_tasks:app"
TOTAL = int(os.environ.get("RCLUSTER_N", "50000"))
QUEUES = 8
BATCH = 2000  # delay() calls gathered at once


async def owners(client: RedisCluster, names: list[str]) -> dict[str, int]:
    """The port of the primary serving each key of ``names`` (CLUSTER KEYSLOT, CLUSTER SLOTS)."""
    ranges = await client.execute_command("CLUSTER SLOTS")  # {(first, last): {"primary": ...}}
    found = {}
    for name in names:
        slot = int(await client.execute_command("CLUSTER KEYSLOT", name))
        [port] = [int(v["primary"][1]) for (a, b), v in ranges.items() if a <= slot <= b]
        found[name] = port
    return found


async def spread_queues(client: RedisCluster, primaries: int) -> dict[str, int]:
    """:data:`QUEUES` new queue names, as evenly over the ``primaries`` as names allow: queue
    -> the port of the primary its keys live on."""
    chosen: dict[str, int] = {}
    per_node: Counter[int] = Counter()
    cap = -(-QUEUES // primaries)
    for i in itertools.count():
        name = f"rc-{uuid.uuid4().hex[:6]}-{i}"
        port = (await owners(client, [CLUSTER.stream(name, 0)]))[CLUSTER.stream(name, 0)]
        if per_node[port] < cap:
            chosen[name] = port
            per_node[port] += 1
        if len(chosen) == QUEUES:
            return chosen
    raise AssertionError("unreachable")


@pytest.fixture
async def client(redis_cluster: RedisClusterGroup) -> AsyncIterator[RedisCluster]:
    found = RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0])
    yield found
    await found.aclose()


@pytest.fixture
async def queues(client: RedisCluster, redis_cluster: RedisClusterGroup) -> dict[str, int]:
    spread = await spread_queues(client, len(redis_cluster.ports))
    assert set(spread.values()) == set(redis_cluster.ports)  # every primary has queues
    # A queue's keys are in one slot: its streams, delayed set and dead letters.
    for queue in spread:
        names = [CLUSTER.stream(queue, p) for p in range(10)]
        names += [CLUSTER.delayed(queue), CLUSTER.delayed_rejected(queue), CLUSTER.dlq(queue)]
        assert set((await owners(client, names)).values()) == {spread[queue]}
    return spread


@pytest.fixture
async def app(redis_cluster: RedisClusterGroup, queues: dict[str, int]) -> AsyncIterator[Aqueue]:
    made = build(redis_cluster.url, next(iter(queues)))
    yield made
    await made.close()


def env_for(url: str, queue: str) -> dict[str, str]:
    return {"AQUEUE_BROKER_URL": url, "AQUEUE_RCLUSTER_QUEUE": queue}


async def test_50000_tasks_over_8_queues_on_3_primaries_run_once_each(
    app: Aqueue,
    client: RedisCluster,
    queues: dict[str, int],
    redis_cluster: RedisClusterGroup,
    capsys: pytest.CaptureFixture[str],
) -> None:
    add = app.tasks["rcluster.add"]
    names = list(queues)
    await client.delete(RUNS)
    env = env_for(redis_cluster.url, names[0])
    args = ["-Q", ",".join(names), "-c", "100"]
    began = time.perf_counter()
    async with WorkerProcess(APP, args, env), WorkerProcess(APP, args, env):
        results = []
        for start in range(0, TOTAL, BATCH):
            results += await asyncio.gather(
                *(
                    add.apply_async((i, 1), queue=names[i % QUEUES])
                    for i in range(start, min(TOTAL, start + BATCH))
                )
            )
        sent = time.perf_counter() - began
        values = []
        for start in range(0, TOTAL, BATCH):
            values += await asyncio.gather(
                *(r.get(timeout=300) for r in results[start : start + BATCH])
            )
        drained = time.perf_counter() - began
    assert values == [i + 1 for i in range(TOTAL)]
    runs = {k.decode(): int(v) for k, v in (await client.hgetall(RUNS)).items()}
    assert len(runs) == TOTAL
    assert {r.id for r in results} == set(runs)
    twice = [task_id for task_id, n in runs.items() if n != 1]
    assert twice == [], f"{len(twice)} tasks ran more than once"
    # Each queue's keys are on its primary, and only there (asked of each node directly).
    for queue, port in queues.items():
        slot = int(await client.execute_command("CLUSTER KEYSLOT", CLUSTER.stream(queue, 0)))
        for node in redis_cluster.ports:
            direct = aioredis.Redis(host="127.0.0.1", port=node)
            try:
                held = int(await direct.execute_command("CLUSTER COUNTKEYSINSLOT", slot))
            finally:
                await direct.aclose()
            assert (held > 0) == (node == port), (queue, node, port, held)
    per_node = Counter(queues.values())
    with capsys.disabled():
        print(
            f"\nredis cluster: {TOTAL:,} tasks over {QUEUES} queues on "
            f"{len(redis_cluster.ports)} primaries (queues per primary: "
            f"{sorted(per_node.values())}), 2 worker processes: sent in {sent:.1f} s, "
            f"all results in {drained:.1f} s ({TOTAL / drained:,.0f} tasks/s), "
            f"each run exactly once"
        )


async def test_a_chord_of_1000(app: Aqueue, queues: dict[str, int]) -> None:
    add, tsum = app.tasks["rcluster.add"], app.tasks["rcluster.tsum"]
    names = list(queues)
    env = env_for(app.conf.broker_url, names[0])
    async with WorkerProcess(APP, ["-Q", ",".join(names), "-c", "100"], env):
        result = await chord(
            (add.s(i, i).set(queue=names[i % QUEUES]) for i in range(1000)), tsum.s()
        ).delay()
        assert await result.get(timeout=120) == sum(2 * i for i in range(1000))


async def test_three_beats_send_each_tick_once(redis_cluster: RedisClusterGroup) -> None:
    url = redis_cluster.url
    env = beat_env(url)
    async with beat_processes(env) as beats:
        all_ready = time.time()
        await asyncio.sleep(5)  # the span measured, not a synchronisation
        stopping = time.time()
        assert await stop_beats(beats) == [0, 0, 0]
    records, ticks = each_tick_once(beats)
    assert ticks[0] <= all_ready + 1 and ticks[-1] >= stopping - 2.0
    assert len(ticks) >= 4
    # Each tick is one message on the queue, nothing more.
    assert sorted(await drain(url, env[_QUEUE])) == sorted(r[2] for r in records)


async def test_replies_come_after_their_records_even_when_the_script_is_new(
    redis_cluster: RedisClusterGroup, client: RedisCluster
) -> None:
    """A worker's store meets primaries without its script (a restart, a failover, a new
    node): the records are stored again once it is loaded, and the replies are published only
    after, so a sender that reads a record once its reply came finds it."""
    sender, worker = backend_from_url(redis_cluster.url), backend_from_url(redis_cluster.url)
    await sender.connect()
    await worker.connect()
    try:
        assert isinstance(sender, ReplyChannels)
        channel = await sender.reply_channel()
        for _ in range(3):
            for port in redis_cluster.ports:  # every primary forgets its scripts
                redis_cluster.cli_call(port, "script", "flush")
            ids = [uuid.uuid4().hex for _ in range(30)]
            boxes = [sender.expect(task_id) for task_id in ids]
            replied = dict.fromkeys(ids, channel)
            storing = asyncio.create_task(worker.store([(i, i.encode()) for i in ids], 60, replied))
            async with asyncio.timeout(10):
                # Read as each reply comes, while the store may still be under way.
                await boxes[0].read_from(0)
                assert await sender.get_many(ids) == [i.encode() for i in ids]
                await storing
    finally:
        await worker.close()
        await sender.close()
