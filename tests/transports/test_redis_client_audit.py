"""The Redis client plumbing against a real server: the pub/sub reader through a refused
re-subscription, and the in-process fanout's subscribers on loops that close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import subprocess
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis

from aqueue.exceptions import BrokerConnectionError
from aqueue.transports.base import ConnectionOptions
from aqueue.transports.fanout import LoopQueue
from aqueue.transports.memory.control import MemoryControl
from aqueue.transports.memory.results import MemoryBackend
from aqueue.transports.redis.client import SharedClient
from aqueue.transports.redis.control import RedisControl
from aqueue.transports.redis.results import RedisBackend
from aqueue.transports.redis.sentinel import PrimaryWatch, SentinelPool, open_sentinel_client
from tests.chaos.harness import FaultProxy
from tests.conftest import _start_redis, until
from tests.net import free_port
from tests.transports.sentinels import SENTINEL_PASSWORD, SentinelGroup

pytestmark = pytest.mark.timeout(60)


class AclUser:
    """A Redis ACL user allowed aqueue's keys, channels and commands on every server of
    ``url`` (a server or a cluster's nodes); removed afterwards."""

    def __init__(self, url: str) -> None:
        scheme, _, hosts = url.partition("://")
        self.admins = [redis.Redis.from_url(f"redis://{host}") for host in hosts.split(",")]
        self.name = f"aq-{uuid.uuid4().hex[:8]}"
        self.password = f"pw-{uuid.uuid4().hex}"
        self.allow_channels()
        self.url = f"{scheme}://{self.name}:{self.password}@{hosts}"
        self.admin_url = url  # the default user's, unrestricted

    def _set(self, *rules: str) -> None:
        for admin in self.admins:
            admin.execute_command("ACL", "SETUSER", self.name, *rules)

    def allow_channels(self) -> None:
        self._set("on", f">{self.password}", "~aqueue:*", "resetchannels", "&aqueue:*", "+@all")

    def deny_channels(self) -> None:
        """Take the channels away: Redis disconnects the user's subscribed clients, and their
        re-subscription is refused (``NOPERM``)."""
        self._set("resetchannels")

    def close(self) -> None:
        for admin in self.admins:
            admin.execute_command("ACL", "DELUSER", self.name)
            admin.close()


@pytest.fixture(params=["redis", "cluster"])
def acl_user(request: pytest.FixtureRequest) -> Iterator[AclUser]:
    if request.param == "redis":
        url = request.getfixturevalue("redis_server")
    else:
        url = request.getfixturevalue("redis_cluster").url
    with contextlib.closing(AclUser(url)) as user:
        yield user


async def test_control_subscription_survives_a_refused_resubscription(
    acl_user: AclUser, caplog: pytest.LogCaptureFixture
) -> None:
    """A subscriber whose re-subscription is refused for a while (its channels taken away by
    an ACL change) logs it and hears the channel again once the ACL allows it: remote control
    does not go deaf for ever."""
    caplog.set_level(logging.WARNING)
    listener, sender = RedisControl(acl_user.url), RedisControl(acl_user.url)
    try:
        async with listener.subscribe("audit") as queue:
            await sender.publish("audit", [b"before"])
            assert await asyncio.wait_for(queue.get(), 10) == b"before"
            (reader,) = listener._readers
            acl_user.deny_channels()

            async def refused() -> bool:
                return reader.done() or "NoPermissionError" in caplog.text

            await until(refused, 20, "the re-subscription refused")
            assert not reader.done(), f"the reader ended: {reader.exception()!r}"
            acl_user.allow_channels()

            await until(
                hears(sender, queue, "audit"), 20, "a message after the ACL allowed the channel"
            )
    finally:
        await listener.close()
        await sender.close()


def hears(
    sender: RedisControl, queue: asyncio.Queue[bytes], channel: str
) -> Callable[[], Awaitable[bool]]:
    """A check for :func:`until`: ``sender`` publishes ``b"after"`` on ``channel``; true once
    ``queue`` (a subscription to it) gets it within 0.1 s."""

    async def heard() -> bool:
        await sender.publish(channel, [b"after"])
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.1):
                return await queue.get() == b"after"
        return False

    return heard


async def test_result_watch_gets_a_record_stored_while_its_channel_was_refused(
    acl_user: AclUser, caplog: pytest.LogCaptureFixture
) -> None:
    """A result watcher whose re-subscription is refused for a while (an ACL change) gets the
    record stored meanwhile once the ACL allows the channel again: results still arrive."""
    caplog.set_level(logging.WARNING)
    backend, writer = RedisBackend(acl_user.url), RedisBackend(acl_user.admin_url)
    task_id = uuid.uuid4().hex
    try:
        async with backend.watch(task_id) as queue:
            acl_user.deny_channels()
            reader = backend._reader
            assert reader is not None

            async def refused() -> bool:
                return reader.done() or "NoPermissionError" in caplog.text

            await until(refused, 20, "the re-subscription refused")
            assert not reader.done(), f"the reader ended: {reader.exception()!r}"
            await writer.store([(task_id, b"SUCCESS")], expires=60)
            acl_user.allow_channels()
            assert await asyncio.wait_for(queue.get(), 20) == b"SUCCESS"
    finally:
        await backend.close()
        await writer.close()


def _closing_when_checked() -> asyncio.AbstractEventLoop:
    """A subscriber's event loop that its own thread closes just as a publisher checks whether
    it is closed (the check still says open): the window between the check and the hand-over."""
    loop = asyncio.new_event_loop()
    was_closed = loop.is_closed

    def closes_now() -> bool:
        closed = was_closed()
        del loop.is_closed  # once: close() asks too
        loop.close()
        return closed

    loop.is_closed = closes_now  # type: ignore[method-assign]
    return loop


async def test_store_survives_a_watcher_loop_closing_meanwhile() -> None:
    """A result store whose watcher's loop closes during the store neither fails (the record
    is stored) nor keeps the record from the other watchers."""
    backend = MemoryBackend(f"memory://{uuid.uuid4().hex}")
    gone = LoopQueue(_closing_when_checked())
    with backend._watchers.holding("t1", gone):
        async with backend.watch("t1") as queue:
            await backend.store([("t1", b"record")], None)
            assert queue.get_nowait() == b"record"
    assert await backend.get_many(["t1"]) == [b"record"]


async def test_publish_survives_a_subscriber_loop_closing_meanwhile() -> None:
    """A memory publish whose subscriber's loop closes during it does not fail, and still
    reaches the other subscribers."""
    control = MemoryControl()
    gone = LoopQueue(_closing_when_checked())
    with control._subscribers.holding("ch", gone):
        async with control.subscribe("ch") as queue:
            await control.publish("ch", [b"a", b"b"])
            assert [queue.get_nowait(), queue.get_nowait()] == [b"a", b"b"]


async def test_subscriber_on_a_closed_loop_is_dropped() -> None:
    """A subscriber whose loop closed while it was still subscribed (its subscription never
    left: the loop was closed under it) is removed at the next publish, not kept for ever."""
    control = MemoryControl()
    loop = asyncio.new_event_loop()
    subscription = control._subscribers.holding("ch", LoopQueue(loop))
    subscription.__enter__()  # held, as by a task of that loop, never resumed
    loop.close()
    async with control.subscribe("ch") as queue:
        await control.publish("ch", [b"a"])
        assert queue.get_nowait() == b"a"
        assert len(control._subscribers.of("ch")) == 1
    assert control._subscribers.keys() == []
    subscription.__exit__(None, None, None)  # leaving late is harmless
    assert control._subscribers.keys() == []


async def test_moved_from_is_cancelled_when_the_move_comes_with_the_cancellation() -> None:
    """A wait for the pool to follow a new primary, cancelled just as the move is announced,
    ends cancelled: the cancellation is not swallowed (Python 3.11's ``wait_for``, gh-86296),
    which would let a cancelled send go on."""
    sentinels, client, service = open_sentinel_client(
        f"redis+sentinel://127.0.0.1:{free_port()}/svc", ConnectionOptions(connect_timeout=1.0)
    )
    pool = client.connection_pool
    assert isinstance(pool, SentinelPool)
    watch = PrimaryWatch(sentinels, pool, service, "audit")
    pool.master_address = ("127.0.0.1", 1111)
    moved = watch._moved
    waiting = asyncio.create_task(watch.moved_from(("127.0.0.1", 1111), 30.0))
    try:
        # One loop step at a time: the window is between two steps; no event marks it.
        while not moved._waiters:  # noqa: ASYNC110 - until the wait for the move has begun
            await asyncio.sleep(0)
        pool.master_address = ("127.0.0.1", 2222)  # what check() does on a move
        moved.set()
        # Until whatever waited on the event itself has seen it (wait_for's inner task).
        while any(  # noqa: ASYNC110 - one loop step at a time, as above
            t.get_coro().__qualname__ == "Event.wait" and not t.done()  # type: ignore[union-attr]
            for t in asyncio.all_tasks()
        ):
            await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.wait([waiting])
        assert waiting.cancelled()
    finally:
        await watch.aclose()
        await client.aclose()
        await sentinels.aclose()


async def test_a_subscription_and_a_publisher_follow_a_failover(tmp_path: Path) -> None:
    """A control subscription and a publisher, both connected before ``SENTINEL FAILOVER``,
    meet on the new primary after it: the subscriber hears what is published after the move
    (a subscriber left on the old primary, or a publisher, would hear or say nothing)."""
    with SentinelGroup(tmp_path, replicas=1) as group:
        url = group.url(0, sentinel_password=SENTINEL_PASSWORD)
        listener, sender = RedisControl(url), RedisControl(url)
        try:
            async with listener.subscribe("failover") as queue:
                await sender.publish("failover", [b"before"])
                assert await asyncio.wait_for(queue.get(), 10) == b"before"
                old, new, _ = await asyncio.to_thread(group.failover)
                assert old != new

                await until(
                    hears(sender, queue, "failover"), 20, "a message published after the failover"
                )
                for role in (listener, sender):
                    assert role._shared.primary() == ("127.0.0.1", new)
        finally:
            await listener.close()
            await sender.close()


async def test_a_shared_client_connects_after_a_failed_first_ping(redis_server: str) -> None:
    """A first PING that fails (the server restarting: the connection cut) fails that call and
    leaves nothing behind: the next call connects afresh and works."""
    proxy = FaultProxy(int(redis_server.rsplit(":", 1)[1]))
    proxy.start()
    shared = SharedClient(proxy.url(0), ConnectionOptions(connect_timeout=2.0))
    try:
        proxy.cut_after(1)
        with pytest.raises(BrokerConnectionError):
            await shared.get()
        assert shared.current is None
        proxy.cut_after(None)
        client = await shared.get()
        key = f"aqueue:audit:{uuid.uuid4().hex}"
        await client.set(key, b"v", ex=10)
        assert await client.get(key) == b"v"
        assert await shared.get() is client
    finally:
        await shared.aclose()
        proxy.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Callable[[], int]]:
    """Starts private redis-servers (their port) that a test may turn into replicas or starve
    of memory without disturbing the session's server; all stopped afterwards."""
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not on PATH"
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> int:
        for _ in range(5):  # a free port may be taken before redis binds it
            port = free_port()
            workdir = tmp_path / str(port)
            workdir.mkdir()
            proc = _start_redis(binary, port, workdir, workdir / "redis.log")
            if proc is not None:
                procs.append(proc)
                return port
        raise AssertionError("redis-server did not start")

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def _admin(port: int) -> redis.Redis:
    return redis.Redis(port=port)


async def test_a_result_store_follows_a_failover_behind_a_virtual_ip(
    own_redis: Callable[[], int],
) -> None:
    """A store after the URL's address moved to a new primary (a virtual IP, DNS) while its
    pooled connection still reaches the old one, now a replica (``READONLY``): the stale
    connection is dropped and the store goes to the new primary. Refused for good, a worker
    would dead-letter the task whose good result this is."""
    old, new = own_redis(), own_redis()
    proxy = FaultProxy(old)  # the virtual IP
    proxy.start()
    backend = RedisBackend(proxy.url(0))
    try:
        await backend.store([("before", b"SUCCESS")], expires=60)  # a connection to `old`
        with contextlib.closing(_admin(old)) as demoted:
            demoted.execute_command("REPLICAOF", "127.0.0.1", str(new))
        proxy.upstream_port = new  # the virtual IP moves: new connections reach `new`

        await backend.store([("after", b"SUCCESS")], expires=60)

        assert await backend.get_many(["after"]) == [b"SUCCESS"]
        with contextlib.closing(_admin(new)) as primary:
            assert primary.info("replication")["role"] == "master"
    finally:
        await backend.close()
        proxy.close()


async def test_a_store_on_a_replica_is_a_connection_failure(
    own_redis: Callable[[], int],
) -> None:
    """A store on a server that is a replica (``READONLY``) fails as a connection failure
    saying so, which a worker tries again (the message kept leased), not as a refusal; once
    the server is a primary again the store goes through."""
    primary, replica = own_redis(), own_redis()
    backend = RedisBackend(f"redis://127.0.0.1:{replica}/0")
    try:
        await backend.store([("before", b"SUCCESS")], expires=60)
        with contextlib.closing(_admin(replica)) as admin:
            admin.execute_command("REPLICAOF", "127.0.0.1", str(primary))
            with pytest.raises(BrokerConnectionError, match="read-only replica"):
                await backend.store([("during", b"SUCCESS")], expires=60)
            admin.execute_command("REPLICAOF", "NO", "ONE")
        await backend.store([("after", b"SUCCESS")], expires=60)
        assert await backend.get_many(["after"]) == [b"SUCCESS"]
    finally:
        await backend.close()


async def test_a_store_on_a_server_out_of_memory_is_a_connection_failure(
    own_redis: Callable[[], int],
) -> None:
    """A store while the server has reached ``maxmemory`` (``noeviction``: ``OOM``) fails as
    a connection failure saying so - the server refuses every write until memory is freed,
    whatever the record - and goes through once it has memory again."""
    port = own_redis()
    backend = RedisBackend(f"redis://127.0.0.1:{port}/0")
    try:
        await backend.store([("before", b"SUCCESS")], expires=60)
        with contextlib.closing(_admin(port)) as admin:
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", 1)  # bytes: below what it uses already
            with pytest.raises(BrokerConnectionError, match="out of memory"):
                await backend.store([("during", b"SUCCESS")], expires=60)
            admin.config_set("maxmemory", 0)  # no limit
        await backend.store([("after", b"SUCCESS")], expires=60)
        assert await backend.get_many(["after"]) == [b"SUCCESS"]
    finally:
        await backend.close()
