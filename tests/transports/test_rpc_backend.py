"""The ``rpc://`` result backend on a real RabbitMQ, with no Redis anywhere.

Results, states with ``on_message``, ``then()``, groups, chains and retries reach the client that
sent the task, on its own reply queue; two clients never see each other's; the limits (another
client's handle, chords, control, beat, a non-AMQP broker) raise ``ConfigurationError`` naming the
fix; a caller that goes away leaves nothing on the broker. The contract suites over ``BACKENDS``
do not apply (``rpc://`` stores nothing another handle could read): this is its own suite.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiormq
import aiormq.exceptions
import pytest

from aqueue import Aqueue, AsyncResult, GroupResult, Worker, chain, chord, group
from aqueue.exceptions import ConfigurationError
from aqueue.transports.amqp import RpcBackend, results, server_url
from tests.apps.rpc_tasks import build
from tests.conftest import RabbitNode, until
from tests.workerproc import WorkerProcess

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def queue() -> str:
    return f"rpc-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def worker(rabbitmq_server: RabbitNode, queue: str) -> AsyncIterator[WorkerProcess]:
    """``aqueue worker`` in its own process, results over rpc://, nothing but RabbitMQ."""
    env = {
        "AQUEUE_BROKER_URL": rabbitmq_server.url,
        "AQUEUE_RESULT_BACKEND": "rpc://",
        "AQUEUE_RPC_QUEUE": queue,
    }
    async with WorkerProcess("tests.apps.rpc_tasks", ["-c", "20", "-Q", queue], env) as proc:
        yield proc


@pytest.fixture
async def client(rabbitmq_server: RabbitNode, queue: str) -> AsyncIterator[Aqueue]:
    app = build(rabbitmq_server.url, queue)
    yield app
    await app.close()


async def rpc_backend(app: Aqueue) -> RpcBackend:
    backend = await app.result_backend()
    assert isinstance(backend, RpcBackend)
    return backend


async def depth(url: str, name: str) -> int | None:
    """Messages ready in queue ``name`` (a passive declare), or ``None`` if it does not exist."""
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        try:
            ok = await channel.queue_declare(name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        assert ok.message_count is not None
        return ok.message_count
    finally:
        await connection.close()


def listed(node: RabbitNode, name: str) -> int | None:
    """Messages in queue ``name`` as ``rabbitmqctl list_queues`` shows them (``None``: no such
    queue). Unlike a passive declare, this does not count as a use that renews ``x-expires``."""
    for line in node.ctl("list_queues", "-q", "name", "messages").splitlines():
        fields = line.split()
        if fields[:1] == [name]:
            return int(fields[1])
    return None


# -- what the sending client gets ---------------------------------------------------------------


async def test_results_states_and_failures(worker: WorkerProcess, client: Aqueue) -> None:
    r = await client.tasks["rpc.add"].delay(4, 4)
    assert await r.get(timeout=10) == 8
    assert await r.ready() and await r.state() == "SUCCESS" and r.result == 8
    info = await r.info()
    assert info.state == "SUCCESS" and info.result == 8 and info.date_done is not None

    bad = await client.tasks["rpc.fail"].delay("missing")
    with pytest.raises(KeyError, match="missing"):
        await bad.get(timeout=10)
    assert isinstance(await bad.get(propagate=False), KeyError)
    assert await bad.failed() and "KeyError" in (bad.traceback or "")
    await bad.forget()  # nothing is stored: what arrived here is forgotten
    assert await bad.state() == "PENDING"


async def test_ready_and_state_answer_from_what_arrived(
    worker: WorkerProcess, client: Aqueue
) -> None:
    r = await client.tasks["rpc.nap"].delay(1, 1.0)
    assert not await r.ready() and await r.state() == "PENDING"  # no server was asked
    assert await r.get(timeout=10) == 1
    assert await r.ready()
    same = client.AsyncResult(r.id)  # another handle in this client, while r lives
    assert await same.state() == "SUCCESS" and await same.get(timeout=1) == 1


async def test_every_state_reaches_on_message(worker: WorkerProcess, client: Aqueue) -> None:
    seen: list[dict[str, Any]] = []
    r = await client.tasks["rpc.progress"].delay(3)
    assert await r.get(timeout=10, on_message=seen.append) == 3
    assert [m["status"] for m in seen] == [
        "STARTED", "PROGRESS", "PROGRESS", "PROGRESS", "CHECKING", "SUCCESS",
    ]  # fmt: skip
    assert [m["result"] for m in seen if m["status"] == "PROGRESS"] == [
        {"step": 0}, {"step": 1}, {"step": 2},
    ]  # fmt: skip
    assert {m["task_id"] for m in seen} == {r.id}


async def test_then_calls_back_with_the_finished_result(
    worker: WorkerProcess, client: Aqueue
) -> None:
    r = await client.tasks["rpc.add"].delay(2, 2)
    assert await r.then(lambda done: (done.id, done.result)) == (r.id, 4)
    failed: list[str] = []
    bad = await client.tasks["rpc.fail"].delay("k")
    await bad.then(lambda _: None, on_error=lambda done: failed.append(done.id))
    assert failed == [bad.id]


async def test_a_group_and_a_chain(worker: WorkerProcess, client: Aqueue) -> None:
    add = client.tasks["rpc.add"]
    g = await group(add.s(i, i) for i in range(20)).delay()
    assert isinstance(g, GroupResult)
    assert await g.get(timeout=10) == [2 * i for i in range(20)]
    assert await g.ready() and await g.completed_count() == 20

    c = await (add.s(1, 2) | add.s(3) | add.s(5)).delay()
    assert isinstance(c, AsyncResult)
    assert await c.get(timeout=10) == 11  # the last step was sent by a worker
    assert c.parent is not None and await c.parent.get(timeout=1) == 6

    broken = await chain(client.tasks["rpc.fail"].s("first"), add.s(1)).delay()
    with pytest.raises(KeyError, match="first"):  # the worker fails the chain's result
        await broken.get(timeout=10)


async def test_retries_arrive_as_retry_states(worker: WorkerProcess, client: Aqueue) -> None:
    seen: list[str] = []
    r = await client.tasks["rpc.flaky"].delay(2)
    assert await r.get(timeout=15, on_message=lambda m: seen.append(m["status"])) == 2
    assert seen == ["RETRY", "RETRY", "SUCCESS"]
    assert (await r.info()).retries == 2


async def test_two_clients_get_only_their_own_results(
    worker: WorkerProcess, rabbitmq_server: RabbitNode, queue: str
) -> None:
    a, b = build(rabbitmq_server.url, queue), build(rabbitmq_server.url, queue)
    n = 200

    async def run(app: Aqueue, base: int) -> list[int]:
        add = app.tasks["rpc.add"]
        sent = await asyncio.gather(*(add.delay(base, i) for i in range(n)))
        return list(await asyncio.gather(*(r.get(timeout=30) for r in sent)))

    try:
        got_a, got_b = await asyncio.gather(run(a, 0), run(b, 10_000))
        assert got_a == list(range(n)) and got_b == [10_000 + i for i in range(n)]
        for app in (a, b):
            backend = await rpc_backend(app)
            assert backend.records_received == n  # its own SUCCESS records, and no other
            assert backend.records_unclaimed == 0
        names = {await (await rpc_backend(app)).reply_channel() for app in (a, b)}
        assert len(names) == 2
    finally:
        await a.close()
        await b.close()


# -- the limits, said plainly -------------------------------------------------------------------


async def test_another_client_is_told_it_cannot_see_the_result(
    worker: WorkerProcess, client: Aqueue, rabbitmq_server: RabbitNode, queue: str
) -> None:
    r = await client.tasks["rpc.add"].delay(1, 1)
    assert await r.get(timeout=10) == 2
    other = build(rabbitmq_server.url, queue)
    try:
        handle = other.AsyncResult(r.id)
        started = time.monotonic()
        with pytest.raises(ConfigurationError, match=r"rpc:// .* only to the result handle"):
            await handle.get(timeout=10)
        assert time.monotonic() - started < 2  # said at once, not PENDING for ever
        with pytest.raises(ConfigurationError, match="result_backend to a Redis or SQLite"):
            await handle.state()
        with pytest.raises(ConfigurationError, match="rpc://"):
            await GroupResult.restore(other, "some-group")
    finally:
        await other.close()


async def test_chords_are_refused_at_send(client: Aqueue, rabbitmq_server: RabbitNode) -> None:
    add = client.tasks["rpc.add"]
    queue = client.conf.task_default_queue
    for canvas in (
        chord([add.s(1, 1), add.s(2, 2)], add.s(0)),
        group(add.s(1, 1), add.s(2, 2)) | add.s(0),  # a chord too
        add.s(1, 1) | group(add.s(1), add.s(2)) | add.s(0),  # an implicit chord, later on
    ):
        with pytest.raises(ConfigurationError, match="chord needs a result store"):
            await canvas.delay()
    assert await depth(rabbitmq_server.url, queue) in (None, 0)  # nothing was sent


async def test_control_beat_and_a_non_amqp_broker_say_what_to_use(
    client: Aqueue, tmp_path: Any
) -> None:
    with pytest.raises(ConfigurationError, match=r"cannot carry remote control.*Redis or SQLite"):
        await client.control_transport()
    with pytest.raises(ConfigurationError, match="cannot keep beat's claims"):
        await client.beat_store()
    with pytest.raises(ConfigurationError, match="cannot carry remote control"):
        await client.control.ping()
    elsewhere = Aqueue("x", broker=f"sqlite:///{tmp_path}/b.db", backend="rpc")  # Celery's 'rpc'
    with pytest.raises(ConfigurationError, match=r"AMQP broker .* is a sqlite:// one"):
        await elsewhere.result_backend()
    await elsewhere.close()


def test_urls_as_the_celery_tutorials_write_them() -> None:
    assert server_url("pyamqp://") == "amqp://localhost"  # guest:guest at localhost:5672, "/"
    assert server_url("amqp://") == "amqp://localhost"
    assert server_url("amqp://u:p@:5673/v") == "amqp://u:p@localhost:5673/v"
    assert server_url("amqps://u:p@h:5671/v?cafile=x") == "amqps://u:p@h:5671/v?cafile=x"
    assert Aqueue("t", broker="pyamqp://", backend="rpc").conf.result_backend == "rpc"
    assert Aqueue("t", broker="amqp://", backend="rpc://").conf.result_backend == "rpc://"
    with pytest.raises(ConfigurationError, match="scheme 'rpc' is not supported"):
        Aqueue("t", broker="rpc://")


# -- the reply queue's lifetime -----------------------------------------------------------------


async def test_a_clean_close_deletes_the_reply_queue(
    client: Aqueue, rabbitmq_server: RabbitNode
) -> None:
    name = await (await rpc_backend(client)).reply_channel()
    assert name.startswith(results.REPLY_QUEUE_PREFIX)
    assert await depth(rabbitmq_server.url, name) == 0
    await client.close()
    assert await depth(rabbitmq_server.url, name) is None


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_results_sent_while_the_caller_is_disconnected_wait_for_it(
    rabbitmq_server: RabbitNode, queue: str
) -> None:
    """The reply queue outlives a dropped connection: nothing sent meanwhile is lost."""
    user = f"rpc-worker-{uuid.uuid4().hex[:6]}"
    rabbitmq_server.ctl("add_user", user, "pw")
    allow(rabbitmq_server, user)
    worker_url = rabbitmq_server.url.replace("guest:guest", f"{user}:pw")
    worker_app = build(worker_url, queue)
    client = build(rabbitmq_server.url, queue)
    try:
        async with Worker(worker_app, concurrency=10):
            nap = client.tasks["rpc.nap"]
            assert await (await nap.delay(0, 0)).get(timeout=10) == 0
            sent = [await nap.delay(i, 1.0) for i in range(1, 6)]
            # The caller (user guest) is cut off and cannot come back until allowed again;
            # the worker (its own user) goes on storing results meanwhile.
            await asyncio.to_thread(cut_off, rabbitmq_server, "guest")
            await asyncio.sleep(2.5)  # the tasks finish and their results are published
        await asyncio.to_thread(allow, rabbitmq_server, "guest")
        assert [await r.get(timeout=20) for r in sent] == [1, 2, 3, 4, 5]
    finally:
        allow(rabbitmq_server, "guest")
        await client.close()
        await worker_app.close()


def allow(node: RabbitNode, user: str) -> None:
    node.ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")


def cut_off(node: RabbitNode, user: str) -> None:
    """Close ``user``'s connections, and refuse the new ones until :func:`allow`."""
    node.ctl("clear_permissions", "-p", "/", user)
    closed = 0
    for line in node.ctl("list_connections", "-q", "pid", "user").splitlines():
        pid, _, who = line.partition("\t")
        if who.strip() == user:
            node.ctl("close_connection", pid.strip(), "test")
            closed += 1
    assert closed >= 2  # the caller's broker connection and its rpc:// one


CALLER = """
import asyncio, os, sys
from aqueue.transports.amqp import results
results.REPLY_QUEUE_EXPIRES = float(sys.argv[3])
from tests.apps.rpc_tasks import build

async def main():
    app = build(sys.argv[1], sys.argv[2])
    sent = await app.send_many("rpc.nap", [(i, 0.005) for i in range(1000)])
    backend = await app.result_backend()
    print(await backend.reply_channel(), len(sent), flush=True)
    os._exit(0)  # gone, as a crash would be: no close, 1,000 results still to come

asyncio.run(main())
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_caller_that_exits_leaves_nothing_behind(
    rabbitmq_server: RabbitNode, queue: str
) -> None:
    ttl, grace = 5.0, 20.0  # result_expires (per-message TTL), the reply queue's x-expires
    worker_app = build(rabbitmq_server.url, queue, result_expires=ttl)
    done = 0

    @worker_app.task(name="rpc.nap")
    async def nap(i: int, seconds: float) -> int:
        nonlocal done
        await asyncio.sleep(seconds)
        done += 1
        return i

    reply_queue, most_replies = "", 0  # the caller's reply queue; the most results seen in it

    async def drained() -> bool:
        nonlocal most_replies
        out = await asyncio.to_thread(
            rabbitmq_server.ctl, "list_queues", "-q", "name", "messages", "messages_unacknowledged"
        )
        rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()}
        if reply_queue in rows:
            most_replies = max(most_replies, int(rows[reply_queue][0]))
        return done >= 1000 and rows.get(queue) == ["0", "0"]

    try:
        async with Worker(worker_app, concurrency=50):
            caller = await asyncio.create_subprocess_exec(
                sys.executable, "-c", CALLER, rabbitmq_server.url, queue, str(grace),
                stdout=asyncio.subprocess.PIPE, cwd=os.getcwd(),
            )  # fmt: skip
            out, _ = await asyncio.wait_for(caller.communicate(), 30)
            assert caller.returncode == 0
            name, count = out.decode().split()
            assert count == "1000" and name.startswith(results.REPLY_QUEUE_PREFIX)
            reply_queue = name
            # The worker finishes and acks every task, its caller gone: nothing blocks or fails.
            await until(drained, 60, "all 1,000 tasks done and acked")
            # Results did go to the caller's queue (seen while draining: on a slow machine the
            # last of them may have expired by the time the drain is confirmed)...
            assert (
                most_replies > 0
                or (await asyncio.to_thread(listed, rabbitmq_server, name) or 0) > 0
            )

            async def expired() -> bool:
                return await asyncio.to_thread(listed, rabbitmq_server, name) in (0, None)

            await until(expired, ttl + 3, "the results expired")  # ...and expire

            async def deleted() -> bool:
                return await asyncio.to_thread(listed, rabbitmq_server, name) is None

            await until(deleted, grace + 5, "the reply queue deleted")  # and so does the queue
    finally:
        await worker_app.close()
