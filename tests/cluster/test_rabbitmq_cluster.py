"""aqueue on a real 3-node RabbitMQ cluster on loopback, with quorum queues (``make
test-cluster``; outside ``make test``): tasks flow, the operations commands count them, and when
the node that leads the queue, and that the producer and the worker are connected to, stops in
the middle of a run, nothing that was sent is lost and consumers are back within 10 s.

Clients list every node (kombu's ``"amqp://a//;amqp://b//;amqp://c//"``) and move to the next
when the one they use is gone; results are in Redis.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import redis.asyncio

from aqueue import Aqueue
from aqueue.control.queues import cluster_status
from tests.apps.cluster_tasks import RUNS, build
from tests.conftest import RabbitCluster, RabbitNode, until
from tests.workerproc import WorkerProcess

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]

APP = "tests.apps.cluster_tasks:app"
# Sends ride out a node's loss: tried again for up to ~30 s.
PATIENT = {"max_retries": 60, "interval_start": 0.1, "interval_step": 0.1, "interval_max": 0.5}


@dataclass
class Setup:
    url: str  # every node, the queue's leader first
    queue: str
    backend: str
    leader: RabbitNode
    app: Aqueue = field(init=False)

    def __post_init__(self) -> None:
        self.app = build(self.url, self.queue)

    @property
    def env(self) -> dict[str, str]:
        return {
            "AQUEUE_BROKER_URL": self.url,
            "AQUEUE_CLUSTER_QUEUE": self.queue,
            "AQUEUE_RESULT_BACKEND": self.backend,
        }


@dataclass
class QueueInfo:
    """What ``rabbitmqctl list_queues`` says of a queue."""

    type: str
    leader: str
    members: list[str]
    online: list[str]


def queue_info(cluster: RabbitCluster, queue: str) -> QueueInfo:
    """``queue``'s type, leader, members and members online, asked of a running node."""
    columns = ("name", "type", "leader", "members", "online")
    for node in cluster.nodes:
        if node.proc is None:
            continue
        for row in json.loads(node.ctl("list_queues", *columns, "--formatter", "json")):
            if row["name"] == queue:
                return QueueInfo(
                    str(row["type"]),
                    str(row["leader"]),
                    sorted(map(str, row["members"])),
                    sorted(map(str, row["online"])),
                )
    raise AssertionError(f"no queue {queue!r} on the cluster")


@pytest.fixture
async def setup(
    rabbitmq_cluster: RabbitCluster, redis_server: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Setup]:
    """The queue declared (through the first node), then every client's URL ordered with its
    leader first: the node the tests stop is the one everybody is connected to."""
    backend = f"{redis_server}/0"
    monkeypatch.setenv("AQUEUE_RESULT_BACKEND", backend)
    queue = f"cq-{uuid.uuid4().hex[:12]}"
    nodes = sorted(n.name for n in rabbitmq_cluster.nodes)
    # The tests take one node of three away from a queue with a member on each: so every node
    # runs (one a test restarted may still be rejoining), and every member is online, first.
    await until(lambda: _all_running(rabbitmq_cluster, nodes), 60, "every node running")
    warm = build(rabbitmq_cluster.url, queue)
    await warm.send_task("cluster.stamp", (0,), ignore_result=True)
    await warm.close()
    assert queue_info(rabbitmq_cluster, queue).members == nodes
    await until(lambda: _queue_whole(rabbitmq_cluster, queue), 60, "every member online")
    leader_name = queue_info(rabbitmq_cluster, queue).leader
    [leader] = [n for n in rabbitmq_cluster.nodes if n.name == leader_name]
    order = [leader, *(n for n in rabbitmq_cluster.nodes if n is not leader)]
    s = Setup(";".join(n.url for n in order), queue, backend, leader)
    yield s
    await s.app.close()


async def test_tasks_flow_on_quorum_queues_over_three_nodes(
    setup: Setup, rabbitmq_cluster: RabbitCluster
) -> None:
    info = queue_info(rabbitmq_cluster, setup.queue)
    assert info.type == "quorum"
    assert info.members == sorted(n.name for n in rabbitmq_cluster.nodes)  # replicated on all
    stamp = setup.app.tasks["cluster.stamp"]
    async with WorkerProcess(APP, ["-c", "20"], setup.env):
        handles = await asyncio.gather(*(stamp.delay(i) for i in range(300)))
        started = await asyncio.gather(*(r.get(timeout=60) for r in handles))
        assert len(started) == 300
        [depth] = (await cluster_status(setup.app, [setup.queue])).queues
        assert (depth.ready, depth.dead, depth.consumers) == (0, 0, 1)
        sent_at = time.time()
        later = await stamp.apply_async((1,), countdown=0.5)  # through the quorum delay chain
        assert await later.get(timeout=30) >= sent_at + 0.5


@dataclass
class Send:
    began: float
    ended: float
    task_id: str | None  # None: it raised
    error: str | None = None


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_a_node_stopped_mid_run_loses_nothing(
    setup: Setup,
    rabbitmq_cluster: RabbitCluster,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    """2,400 tasks sent at ~200/s; a third of the way through, the node that leads the queue
    and that the producer and the worker are connected to goes: a clean shutdown (``stop``,
    SIGTERM), or a crash (``kill``, SIGKILL)."""
    stamp = setup.app.tasks["cluster.stamp"]
    total, rate = 2400, 200.0
    sends: list[Send] = []
    stop_at: list[float] = []  # epoch seconds: asked to stop, stopped

    def stop_leader() -> None:
        stop_at.append(time.time())
        if how == "stop":
            setup.leader.stop()
        else:
            setup.leader.kill()
        stop_at.append(time.time())

    async def send(i: int) -> None:
        began = time.time()
        try:
            r = await stamp.apply_async((i,), retry_policy=PATIENT)
            sends.append(Send(began, time.time(), r.id))
        except Exception as exc:  # counted, and reported: the producer knows of these
            sends.append(Send(began, time.time(), None, f"{type(exc).__name__}: {exc}"))

    stopper: threading.Thread | None = None
    try:
        async with WorkerProcess(APP, ["-c", "50"], setup.env) as worker:
            pending: set[asyncio.Task[None]] = set()
            start = time.monotonic()
            for i in range(total):
                if i == total // 3:
                    stopper = threading.Thread(target=stop_leader, daemon=True)
                    stopper.start()
                task = asyncio.create_task(send(i))
                pending.add(task)
                task.add_done_callback(pending.discard)
                pause = start + (i + 1) / rate - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)  # pacing the producer, not synchronisation
            await asyncio.gather(*pending)
            assert stopper is not None
            await asyncio.get_running_loop().run_in_executor(None, stopper.join)
            # What the cluster says with the node away, for the message of a failure (asked
            # only then: the node comes back before the assertions).
            away = ""
            if any(s.task_id is None for s in sends):
                away = await asyncio.get_running_loop().run_in_executor(
                    None, _queue_and_logs, rabbitmq_cluster, setup.queue
                )

            sent = [s for s in sends if s.task_id is not None]
            handles = [setup.app.AsyncResult(s.task_id) for s in sent if s.task_id]
            starts = await asyncio.gather(*(r.get(timeout=120) for r in handles))
            assert worker.proc is not None and worker.proc.returncode is None
        client = redis.asyncio.Redis.from_url(setup.backend)
        try:
            runs = {k.decode(): int(v) for k, v in (await client.hgetall(RUNS)).items()}
            await client.hdel(RUNS, *(s.task_id for s in sent if s.task_id))
        finally:
            await client.aclose()
    finally:
        if setup.leader.proc is None:
            # Back in the cluster for whatever runs next (it rejoins by itself).
            await asyncio.get_running_loop().run_in_executor(None, setup.leader.start)

    asked, down = stop_at
    lost = [s.task_id for s in sent if runs.get(str(s.task_id), 0) == 0]
    twice = sum(1 for s in sent if runs.get(str(s.task_id), 0) > 1)
    raised = [s for s in sends if s.task_id is None]

    def longest_pause(times: list[float]) -> tuple[float, float]:
        """The longest gap between successive ``times`` from the stop on, and when it ended."""
        after = sorted(t for t in times if t >= asked - 1)
        gaps = [(b - a, b) for a, b in itertools.pairwise(after)]
        return max(gaps) if gaps else (0.0, asked)

    renewed = sum(1 for r in caplog.records if str(r.msg).startswith("RabbitMQ nacked"))
    send_pause, sends_back = longest_pause([s.ended for s in sent])
    start_pause, starts_back = longest_pause(list(starts))
    with capsys.disabled():
        print(
            f"\nRabbitMQ 3-node cluster, quorum queue {setup.queue}: its leader "
            f"{setup.leader.name} {'stopped (SIGTERM' if how == 'stop' else 'killed (SIGKILL'}, "
            f"{down - asked:.1f} s to exit):\n"
            f"  sent {len(sent):,} of {total:,} at ~{rate:.0f}/s; {len(raised)} send(s) "
            f"raised\n"
            f"  every sent task ran: {len(lost)} lost, {twice} ran twice\n"
            f"  sending: longest pause {send_pause:.2f} s, resumed {sends_back - asked:.2f} s "
            f"after the stop began\n"
            f"  consumers: longest pause in task starts {start_pause:.2f} s, resumed "
            f"{starts_back - asked:.2f} s after the stop began\n"
            f"  the producer's publishing channel replaced after nacks {renewed} time(s)"
        )
    assert not raised, f"{raised[:3]}\n{away}"
    assert not lost, f"{len(lost)} sent tasks never ran"
    assert start_pause < 10, f"consumers were away {start_pause:.1f} s"
    await until(lambda: _queue_whole(rabbitmq_cluster, setup.queue), 60, "node rejoined")


async def test_a_first_send_just_after_the_leader_died_goes_through(
    setup: Setup, rabbitmq_cluster: RabbitCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """The producer is connected to a node that stays, and sends its first task to the queue
    just after the queue's leader was killed. RabbitMQ 3.10 nacks a channel's publishes to a
    quorum queue for as long as the leader the queue's record named at the channel's first
    publish is down; aqueue then publishes on a new channel (aqueue.transports.amqp.renewal).
    The send goes through within its retry policy, once the new leader is recorded."""
    stays = next(n for n in rabbitmq_cluster.nodes if n is not setup.leader)
    app = build(stays.url, setup.queue)
    stamp = app.tasks["cluster.stamp"]
    loop = asyncio.get_running_loop()
    took: float | None = None
    try:
        # Connected, its channels open; nothing sent to the queue yet (setup's one task waits).
        [before] = (await cluster_status(app, [setup.queue])).queues
        await loop.run_in_executor(None, setup.leader.kill)
        began = time.monotonic()
        await stamp.apply_async((0,), retry_policy=PATIENT)
        took = time.monotonic() - began
        [after] = (await cluster_status(app, [setup.queue])).queues
        assert after.ready == before.ready + 1
    finally:
        await app.close()
        await loop.run_in_executor(None, setup.leader.start)
    with capsys.disabled():
        print(f"\nthe first send after the leader's SIGKILL was confirmed in {took:.2f} s")
    await until(lambda: _queue_whole(rabbitmq_cluster, setup.queue), 60, "node rejoined")


def _queue_and_logs(cluster: RabbitCluster, queue: str) -> str:
    """``queue``'s members and leader, and the end of each running node's log."""
    try:
        info: object = queue_info(cluster, queue)
    except AssertionError as exc:
        info = exc
    logs = [f"--- {n.name}:\n{n.log(40)}" for n in cluster.nodes if n.proc is not None]
    return "\n".join([f"queue {queue}: {info}", *logs])


async def _all_running(cluster: RabbitCluster, nodes: list[str]) -> bool:
    """Every node of ``nodes`` running, as each running node sees the cluster."""

    def ask() -> bool:
        for node in cluster.nodes:
            if node.proc is None:
                return False
            status = json.loads(node.ctl("cluster_status", "--formatter", "json"))
            if sorted(map(str, status.get("running_nodes", []))) != nodes:
                return False
        return True

    return await asyncio.get_running_loop().run_in_executor(None, ask)


async def _queue_whole(cluster: RabbitCluster, queue: str) -> bool:
    """The queue's replicas are all online again (the stopped node rejoined)."""
    info = await asyncio.get_running_loop().run_in_executor(None, queue_info, cluster, queue)
    return info.online == info.members
