"""Authentication against real servers: a Redis ACL user restricted to aqueue's keys and
channels and the least set of commands (docs/security.md) running everything aqueue does, and
RabbitMQ users and vhosts made with rabbitmqctl; wrong passwords and missing permissions fail
at once with errors that name the URL without its password, and no password reaches a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

import pytest
import redis

from aqueue import Aqueue, Worker, chord
from aqueue.control.queues import cluster_status, purge, replay_dead_letters
from aqueue.exceptions import BrokerError, TaskNotRegistered
from aqueue.transports import Outgoing
from aqueue.transports.redis.broker import RedisBroker
from tests.apps.auth_tasks import AuthTasks, build
from tests.apps.ops_tasks import EventLog
from tests.conftest import QUICK, RabbitNode, refused_at_once
from tests.workerproc import WorkerProcess

pytestmark = pytest.mark.timeout(90)

#: The ACL rules of a Redis user that can do everything aqueue does, and no more: its keys and
#: pub/sub channels (all named ``aqueue:...``), and the commands aqueue sends (docs/security.md).
MINIMUM_ACL = [
    "resetkeys",
    "~aqueue:*",
    "resetchannels",
    "&aqueue:*",
    "-@all",
    "+@read",
    "+@write",
    "+@pubsub",
    "+@transaction",
    "+@connection",
    "+evalsha",
    "+script|load",
    "+time",
    "-@dangerous",
]


async def _get_a_result(app: Aqueue) -> None:
    await app.AsyncResult(uuid.uuid4().hex).state()  # GET


async def _send(app: Aqueue) -> None:
    await app.send_task("auth.add", (1, 1), queue=f"q-{uuid.uuid4().hex[:12]}")  # EVALSHA: XADD


async def _broadcast(app: Aqueue) -> None:
    await (await app.control_transport()).publish("needs", [b"x"])  # PUBLISH


async def _put_in_a_table(app: Aqueue) -> None:
    await (await app.control_transport()).put("needs", "k", b"v", 1.0)  # MULTI HSET INCR EXEC


async def _take_a_token(app: Aqueue) -> None:
    await (await app.control_transport()).acquire(f"needs-{uuid.uuid4().hex}", 1.0, 1.0)  # TIME


#: Each grant of :data:`MINIMUM_ACL`, and an operation of aqueue that fails without it.
NEEDS: dict[str, Callable[[Aqueue], Awaitable[None]]] = {
    "+@read": _get_a_result,
    "+@write": _send,
    "+@pubsub": _broadcast,
    "+@transaction": _put_in_a_table,
    "+@connection": _get_a_result,  # PING, the first command of a connection
    "+evalsha": _send,
    "+script|load": _send,  # on a server that does not know the script yet (restarted)
    "+time": _take_a_token,
}


class AclUsers:
    """Makes Redis ACL users on the session's server; removes them after the test."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.admin = redis.Redis.from_url(server)
        self.made: list[str] = []

    def add(self, rules: Sequence[str], db: int = 0) -> tuple[str, str]:
        """A new user with ``rules`` and a fresh password: (its URL to database ``db``, the
        password)."""
        user, password = f"aq-{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
        self.admin.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}", *rules)
        self.made.append(user)
        host = self.server.removeprefix("redis://")
        return f"redis://{user}:{password}@{host}/{db}", password

    def close(self) -> None:
        if self.made:
            self.admin.execute_command("ACL", "DELUSER", *self.made)
        self.admin.close()


@pytest.fixture
def acl_users(redis_server: str) -> Iterator[AclUsers]:
    with contextlib.closing(AclUsers(redis_server)) as users:
        yield users


@pytest.fixture
async def apps() -> AsyncIterator[list[Aqueue]]:
    """Apps a test makes, closed after it."""
    made: list[Aqueue] = []
    yield made
    for app in made:
        await app.close()


def redis_worker(url: str, queue: str, name: str, *args: str) -> WorkerProcess:
    """``aqueue worker -A tests.apps.auth_tasks:app`` on ``url``, consuming ``queue``."""
    env = {"AQUEUE_BROKER_URL": url, "AQUEUE_AUTH_QUEUE": queue, "AQUEUE_AUTH_APP": name}
    return WorkerProcess("tests.apps.auth_tasks:app", ["-c", "4", *args], env)


async def everything(t: AuthTasks, worker: WorkerProcess, hostname: str) -> None:
    """What a client does against a running worker (started with ``-E -B``): tasks, countdowns,
    a chord, a global rate limit, results waited for by id, remote control, events, beat's
    entries and ticks, queue status and the dead-letter queue; then the worker is stopped
    (SIGTERM), and the queue purged."""
    app, queue = t.app, t.app.conf.task_default_queue
    async with EventLog(app) as log:
        result = await t.add.delay(2, 3)
        assert await result.get(timeout=15) == 5
        await log.wait(type="task-succeeded", uuid=result.id, timeout=15)
        later = await t.add.apply_async((4, 4), countdown=0.2)
        assert await later.get(timeout=15) == 8
        summed = await chord((t.add.s(i, i) for i in range(3)), t.total.s()).delay()
        assert await summed.get(timeout=15) == 6
        assert await (await t.limited.delay(7)).get(timeout=15) == 7
        again = app.AsyncResult(result.id)  # no mailbox here: watched by id
        assert await again.get(timeout=15) == 5
        await again.forget()
    assert await app.control.inspect(timeout=10, destination=[hostname]).ping() == {
        hostname: "pong"
    }
    await app.control.rate_limit("auth.limited", "50/s", destination=[hostname])
    await app.control.revoke(uuid.uuid4().hex)
    await app.beat.add("stored", task="auth.add", schedule=60.0, args=(0, 0))
    assert "stored" in [e.name for e in await app.beat.list()]
    assert await app.beat.remove("stored")
    await worker.wait_for("beat: sent 'each-second'", timeout=15)
    status = await cluster_status(app, [queue])
    assert hostname in {w.hostname for w in status.workers}
    unknown = await app.send_task("auth.no_such_task")
    with pytest.raises(TaskNotRegistered):  # and dead-lettered
        await unknown.get(timeout=15)
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0
    assert queue in {depth.queue for depth in (await cluster_status(app)).queues}  # SCAN
    assert (await cluster_status(app, [queue])).queues[0].dead == 1
    assert await replay_dead_letters(app, queue) == 1
    await t.add.delay(1, 1)
    assert await purge(app, [queue]) == 2


# -- Redis ACL users -------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_user_with_the_minimum_acl_runs_everything(
    acl_users: AclUsers, apps: list[Aqueue], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url, password = acl_users.add(MINIMUM_ACL, db=1)  # SELECT too
    queue, name = f"q-{uuid.uuid4().hex[:12]}", f"auth-{uuid.uuid4().hex[:8]}"
    hostname = f"acl-{uuid.uuid4().hex[:6]}@auth"
    t = build(url, queue, name)
    apps.append(t.app)
    async with redis_worker(url, queue, name, "-E", "-B", "-n", hostname, "-l", "debug") as worker:
        await everything(t, worker, hostname)
    assert not [line for line in worker.lines if "NOPERM" in line or "Traceback" in line]
    assert not [line for line in worker.lines if password in line]
    assert password not in caplog.text


async def test_a_wrong_password_fails_at_once_naming_the_url_without_it(
    acl_users: AclUsers, apps: list[Aqueue], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url, password = acl_users.add(MINIMUM_ACL)
    wrong = url.replace(password, "not-the-password")
    t = build(wrong, "q")
    apps.append(t.app)
    message = await refused_at_once(t.add.delay(1, 1))
    assert "refused the login during connect" in message
    assert "invalid username-password pair" in message
    user = url.split("//")[1].split(":")[0]
    assert f"redis://{user}:**@127.0.0.1:" in message
    assert "not-the-password" not in message and password not in message
    assert "not-the-password" not in caplog.text


def test_every_grant_of_the_minimum_is_needed() -> None:
    assert sorted(NEEDS) == sorted(rule for rule in MINIMUM_ACL if rule.startswith("+"))


@pytest.mark.parametrize("grant", sorted(NEEDS))
async def test_without_any_grant_of_the_minimum_an_operation_is_refused_clearly(
    acl_users: AclUsers, apps: list[Aqueue], grant: str
) -> None:
    if grant == "+script|load":
        acl_users.admin.script_flush()  # as after a restart; every client loads them again
    url, password = acl_users.add([rule for rule in MINIMUM_ACL if rule != grant])
    app = build(url, "q").app
    apps.append(app)
    started = time.monotonic()
    with pytest.raises(BrokerError, match="the ACL user lacks a permission aqueue needs") as info:
        await NEEDS[grant](app)
    assert time.monotonic() - started < QUICK
    assert password not in str(info.value)


async def test_a_stop_with_the_minimum_acl_drops_the_blocking_read_it_may_not_wake(
    acl_users: AclUsers, caplog: pytest.LogCaptureFixture
) -> None:
    # CLIENT UNBLOCK is an optional grant (docs/security.md): without it, a cancelled blocking
    # read is dropped as before, said once in the log, and the next fetch works.
    caplog.set_level(logging.INFO, "aqueue.transports.redis.broker")
    url, _ = acl_users.add(MINIMUM_ACL)
    user = url.split("//")[1].split(":")[0]
    broker = RedisBroker(url, {})
    queue = f"q-{uuid.uuid4().hex[:12]}"
    try:
        for _ in range(2):
            fetch = asyncio.ensure_future(broker.fetch([queue], 1, 5.0))
            for _ in range(500):  # until it blocks in XREADGROUP
                clients = acl_users.admin.client_list()
                if fetch.done() or any(
                    c["user"] == user and c["cmd"] == "xreadgroup" and "b" in c["flags"]
                    for c in clients
                ):
                    break
                await asyncio.sleep(0.002)
            assert not fetch.done()
            fetch.cancel()
            with pytest.raises(asyncio.CancelledError):
                await fetch
        await broker.publish([Outgoing(queue, b"m", uuid.uuid4().hex)])
        [got] = await broker.fetch([queue], 1, 5.0)
        await broker.ack([got])
    finally:
        await broker.close()
    assert caplog.text.count("may not CLIENT UNBLOCK") == 1


async def test_a_user_without_aqueues_keys_gets_a_clear_refusal(
    acl_users: AclUsers, apps: list[Aqueue]
) -> None:
    url, _ = acl_users.add([*MINIMUM_ACL, "resetkeys", "~other:*"])
    t = build(url, f"q-{uuid.uuid4().hex[:12]}")
    apps.append(t.app)
    with pytest.raises(BrokerError, match=r"lacks a permission .* no permissions to access .* key"):
        await t.add.delay(1, 1)


# -- RabbitMQ users and vhosts -------------------------------------------------------------------


class RabbitUsers:
    """Vhosts and users made with rabbitmqctl on the session's node; deleted after the test."""

    def __init__(self, node: RabbitNode) -> None:
        self.node = node
        self.users: list[str] = []
        self.vhosts: list[str] = []

    def vhost(self) -> str:
        name = f"v-{uuid.uuid4().hex[:8]}"
        self.node.ctl("add_vhost", name)
        self.vhosts.append(name)
        return name

    def user(self, *vhosts: str) -> tuple[str, str]:
        """A new user with every permission on ``vhosts`` (none elsewhere): (name, password)."""
        name, password = f"u-{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
        self.node.ctl("add_user", name, password)
        self.users.append(name)
        for vhost in vhosts:
            self.node.ctl("set_permissions", "-p", vhost, name, ".*", ".*", ".*")
        return name, password

    def url(self, user: str, password: str, vhost: str) -> str:
        return f"amqp://{user}:{password}@127.0.0.1:{self.node.port}/{vhost}"

    def close(self) -> None:
        for user in self.users:
            self.node.ctl("delete_user", user)
        for vhost in self.vhosts:
            self.node.ctl("delete_vhost", vhost)


@pytest.fixture(scope="module")
def rabbit_users(rabbitmq_server: RabbitNode) -> Iterator[RabbitUsers]:
    with contextlib.closing(RabbitUsers(rabbitmq_server)) as users:
        yield users


@pytest.fixture(scope="module")
def vhost_user(rabbit_users: RabbitUsers) -> tuple[str, str, str]:
    """A vhost and a user with permissions on it alone: (vhost, user, password)."""
    vhost = rabbit_users.vhost()
    return (vhost, *rabbit_users.user(vhost))


@pytest.mark.timeout(180)
async def test_a_task_round_trip_over_a_user_and_vhost_of_its_own(
    rabbit_users: RabbitUsers,
    vhost_user: tuple[str, str, str],
    redis_server: str,
    apps: list[Aqueue],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    vhost, user, password = vhost_user
    url = rabbit_users.url(user, password, vhost)
    app = Aqueue("auth", broker=url, backend=f"{redis_server}/0")
    app.conf.task_default_queue = f"q-{uuid.uuid4().hex[:12]}"
    apps.append(app)

    @app.task(name="auth.mul")
    async def mul(x: int, y: int) -> int:
        return x * y

    async with Worker(app, concurrency=2, shutdown_timeout=5):
        assert await (await mul.delay(6, 7)).get(timeout=15) == 42
        assert await (await mul.apply_async((2, 3), countdown=0.2)).get(timeout=15) == 6
    queues = rabbit_users.node.ctl("list_queues", "-p", vhost, "name")
    assert app.conf.task_default_queue in queues  # declared in the user's vhost
    assert password not in caplog.text


@pytest.mark.timeout(180)
@pytest.mark.parametrize("case", ["wrong password", "no permission", "no such vhost"])
async def test_a_refused_login_or_vhost_fails_at_once_with_a_clear_error(
    rabbit_users: RabbitUsers,
    vhost_user: tuple[str, str, str],
    apps: list[Aqueue],
    case: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    vhost, user, password = vhost_user
    if case == "wrong password":
        url, expected = rabbit_users.url(user, "nope-" + password, vhost), "refused the login"
    elif case == "no permission":
        other = rabbit_users.vhost()  # exists; the user has no permissions on it
        url, expected = rabbit_users.url(user, password, other), f"refused the vhost '{other}'"
    else:
        url, expected = rabbit_users.url(user, password, "v-none"), "refused the vhost 'v-none'"
    app = Aqueue("auth", broker=url, backend="memory://")
    apps.append(app)
    message = await refused_at_once(app.send_task("auth.mul", (1, 2)))
    assert expected in message
    assert f"RabbitMQ at amqp://{user}:**@127.0.0.1:{rabbit_users.node.port}/" in message
    assert password not in message and password not in caplog.text
