"""Redis Sentinel: a primary found through its sentinels, and followed through a failover.

Two URL forms, for the broker, the result backend, control and beat alike:

- ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db][?query]``: the
  sentinels (port 26379 by default), the monitored service's name, the database. The user and
  password are the primary's (as in a ``redis://`` URL), and so is the query (redis-py's
  ``socket_timeout``, ``ssl_ca_certs``...), but for ``sentinel_username`` and
  ``sentinel_password``, the sentinels' own login. ``rediss+sentinel://`` speaks TLS to the
  sentinels and to the primary.
- ``sentinel://[[user]:password@]host:port[/db][;sentinel://host:port...]``: kombu's (Celery's)
  form, the service named by the transport option ``master_name``.

Options (``broker_transport_options`` for the broker, ``result_backend_transport_options`` for a
result backend on another URL; Celery's and kombu's names): ``master_name`` (the service) and
``sentinel_kwargs``, redis-py's connection arguments for the sentinels themselves: a password
for sentinels started with ``requirepass`` (``{"password": "..."}``), TLS options. Sentinels
get the primary's timeouts, and its TLS when the URL is ``rediss+sentinel://`` or TLS comes from
``broker_use_ssl`` / ``redis_backend_use_ssl``; ``sentinel_kwargs`` adds to that or overrides it.

Following a failover (Redis Sentinel's semantics, redis-py's
:class:`redis.asyncio.sentinel.SentinelConnectionPool`):

- Every new connection asks the sentinels where the primary is. All of them are asked at once
  (concurrent connections share one round of questions), and of the answers the newest view
  wins: the highest configuration epoch, and at one epoch a settled view over that of the
  sentinel leading a failover, which names the old primary until it has repointed every
  replica, while the others already name the promoted one.
- A :class:`PrimaryWatch` per client listens on every sentinel for ``+switch-master`` (and
  asks again every :data:`CHECK_EVERY` seconds, in case a message was missed). When the
  primary changed, every connection of the pool is closed, idle or busy: a command in flight
  is retried once on a connection to the new primary (redis-py's retry), a blocking
  ``XREADGROUP`` with it, and a pub/sub connection reconnects and subscribes again there
  (the result backend then reads back the records its waiters missed). Without this, clients
  would keep writing to the old primary until Sentinel turns it into a replica - about ten
  seconds after the switch - and everything written there meanwhile would be discarded.

What a failover can still lose, and the broker's ``wait_replicas`` option that closes that
window for sends, are in ``docs/deployment.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedSSLConnection,
)

from aqueue.exceptions import ConfigurationError
from aqueue.transports import SENTINEL_OPTIONS, SENTINEL_SCHEMES
from aqueue.transports.base import ConnectionOptions
from aqueue.transports.redis.client import (
    MAX_CONNECTIONS,
    BoundedPool,
    SharedClient,
    check_socket_timeout,
    dropped_connection_retry,
    tls_arguments,
)
from aqueue.transports.urls import redacted_url

__all__ = [
    "CHECK_EVERY",
    "DEFAULT_PORT",
    "FOLLOW_EVERY",
    "PrimaryWatch",
    "SentinelClient",
    "SentinelPool",
    "SentinelURL",
    "Sentinels",
    "open_sentinel_client",
    "parse_sentinel_url",
    "server_address",
]

log = logging.getLogger(__name__)

#: A sentinel's port when the URL names none (Redis Sentinel's default).
DEFAULT_PORT = 26379
#: Seconds between two questions of a :class:`PrimaryWatch` to the sentinels when no
#: ``+switch-master`` came (a missed message, a subscription lost unnoticed).
CHECK_EVERY = 5.0
#: Seconds the discovery waits for the other sentinels' answers after a first valid one (a
#: stale sentinel must not win over one that saw the failover; a dead one must not hold
#: every new connection up for long).
ANSWER_GRACE = 0.2
#: Seconds between two questions to the sentinels while a failover is known to be under way.
FOLLOW_EVERY = 0.1
#: First and longest pause between attempts of a watch to subscribe to a sentinel (seconds).
WATCH_BACKOFF = (0.1, 2.0)
#: The channel on which every sentinel announces a new primary (Redis Sentinel's).
SWITCH_CHANNEL = "+switch-master"
# redis-py's TLS connection arguments, copied from the primary's to the sentinels'.
_TLS_KEYS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """A Sentinel URL taken apart (see the module's docstring for the forms).

    Attributes:
        sentinels: ``(host, port)`` of each sentinel, in the URL's order.
        service: the name the sentinels monitor the primary under (``master_name``).
        tls: TLS to the sentinels and the primary (``rediss+sentinel://``).
        primary: redis-py's connection arguments for the primary from the URL: ``username``,
            ``password``, ``db`` and the query's options.
        sentinel_login: ``username`` / ``password`` for the sentinels, from the query's
            ``sentinel_username`` / ``sentinel_password``.
    """

    sentinels: tuple[tuple[str, int], ...]
    service: str
    tls: bool
    primary: Mapping[str, Any]
    sentinel_login: Mapping[str, str]


def parse_sentinel_url(url: str, options: Mapping[str, Any] | None = None) -> SentinelURL:
    """Take a ``redis+sentinel://``, ``rediss+sentinel://`` or ``sentinel://`` URL apart.

    Args:
        url: the URL.
        options: the Sentinel transport options (``master_name``, ``sentinel_kwargs``): the
            service's name when the URL has none (``sentinel://``).

    Raises:
        ConfigurationError: not a Sentinel URL, no sentinel or no service named, a port or a
            database number that is not one, or two names for the service.
    """
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    where = redacted_url(url)
    if not sep or scheme not in SENTINEL_SCHEMES:
        raise ConfigurationError(f"{where!r} is not a Redis Sentinel URL")
    if scheme == "sentinel":
        sentinels, first = _kombu_sentinels(url, where)
        service = ""
    else:
        first = urlsplit(url)
        sentinels = tuple(
            server_address(part, where) for part in first.netloc.rpartition("@")[2].split(",")
        )
        service, _, rest = first.path.lstrip("/").partition("/")
        service = unquote(service)
        first = first._replace(path=rest)
    named = (options or {}).get("master_name")
    if named is not None and not (isinstance(named, str) and named):
        raise ConfigurationError(f"master_name must be the service's name, not {named!r}")
    if service and named and named != service:
        raise ConfigurationError(
            f"{where!r} names the service {service!r} but master_name is {named!r}: name it once"
        )
    service = service or named or ""
    if not service:
        raise ConfigurationError(
            f"{where!r} names no service: redis+sentinel://host:26379,host2:26379/<service>/<db>,"
            f" or with sentinel:// URLs the transport option master_name (Celery's "
            f"broker_transport_options={{'master_name': 'mymaster'}})"
        )
    userinfo, at, _ = first.netloc.rpartition("@")
    db = first.path.strip("/")
    if db and not db.isdigit():
        raise ConfigurationError(f"{where!r}: the database must be a number, not {db!r}")
    try:
        primary = dict(parse_url(f"redis://{userinfo}{at}primary/{db}?{first.query}"))
    except ValueError as exc:
        raise ConfigurationError(f"invalid Redis Sentinel URL {where!r}: {exc}") from exc
    primary.pop("host", None)
    login = {
        key.removeprefix("sentinel_"): str(primary.pop(key))
        for key in ("sentinel_username", "sentinel_password")
        if key in primary
    }
    return SentinelURL(sentinels, service, scheme == "rediss+sentinel", primary, login)


def _kombu_sentinels(url: str, where: str) -> tuple[tuple[tuple[str, int], ...], Any]:
    """The sentinels of ``sentinel://a:1;sentinel://b:2``, and the first part split (its user,
    password, database and query stand for all: kombu's reading)."""
    parts = [urlsplit(part.strip()) for part in url.split(";") if part.strip()]
    for part in parts:
        if part.scheme.lower() != "sentinel":
            raise ConfigurationError(
                f"{where!r}: every part of a ;-separated URL must be sentinel://host:port"
            )
        if part.netloc.rpartition("@")[0] not in ("", parts[0].netloc.rpartition("@")[0]):
            raise ConfigurationError(
                f"{where!r}: the parts name different users or passwords; the first part's "
                f"are the primary's, and sentinel_kwargs holds the sentinels' own"
            )
    found = tuple(server_address(part.netloc.rpartition("@")[2], where) for part in parts)
    return found, parts[0]


def server_address(text: str, where: str, default: int = DEFAULT_PORT) -> tuple[str, int]:
    """``(host, port)`` of ``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` (``default``
    when no port is given)."""
    host, port = text, ""
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    elif ":" in text:
        host, _, port = text.rpartition(":")
    if not host:
        raise ConfigurationError(f"{where!r}: a server in the URL has no host")
    if port and not port.isdigit():
        raise ConfigurationError(f"{where!r}: {port!r} is not a port")
    return unquote(host), int(port) if port else default


def sentinel_options(options: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """``options`` checked: only :data:`~aqueue.transports.SENTINEL_OPTIONS`, and
    ``sentinel_kwargs`` a mapping of argument names.

    Raises:
        ConfigurationError: an unknown key, or ``sentinel_kwargs`` not a mapping.
    """
    found = dict(options or {})
    unknown = set(found) - set(SENTINEL_OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown Sentinel options {sorted(unknown)}; supported: "
            f"{sorted(SENTINEL_OPTIONS)}"
        )
    extra = found.get("sentinel_kwargs")
    if extra is not None and (
        not isinstance(extra, Mapping) or not all(isinstance(k, str) for k in extra)
    ):
        raise ConfigurationError(
            f"{where}: sentinel_kwargs must be a mapping of redis-py connection arguments "
            f"(e.g. {{'password': '...'}}), not {extra!r}"
        )
    return found


class Sentinels(Sentinel):
    """redis-py's :class:`~redis.asyncio.sentinel.Sentinel`, asking every sentinel at once.

    :meth:`discover_master` takes, of the sentinels' valid answers, the one with the highest
    configuration epoch (redis-py's takes the first valid one, which may come from a sentinel
    that has not yet heard of a failover and names the old primary). Concurrent calls share one
    round of questions: a burst of new connections asks the sentinels once.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._asking: dict[str, asyncio.Future[tuple[str, int]]] = {}
        self._late: set[asyncio.Future[Any]] = set()  # questions answered after the grace
        self._closed = False

    async def aclose(self) -> None:
        """Close every sentinel's client, after the rounds of questions under way (each ends
        within the sentinels' socket timeouts) and then the late answers of finished rounds (at
        most :data:`ANSWER_GRACE` seconds more, then they are cancelled).

        A round still running when the clients closed would open its connections again, and
        leave them open in the closed clients' pools; no round starts once this is called."""
        self._closed = True
        rounds = set(self._asking.values())
        if rounds:
            await asyncio.wait(rounds)
        late, self._late = self._late, set()
        if late:
            _, pending = await asyncio.wait(late, timeout=ANSWER_GRACE)
            for ask in pending:
                ask.cancel()
            if pending:
                await asyncio.wait(pending)  # ended, so that closing the clients closes all
        await super().aclose()

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        """The primary's ``(host, port)`` for ``service_name``, by the newest configuration
        any sentinel answering within :data:`ANSWER_GRACE` s of the first valid answer has.

        A sentinel's answer is valid when it names a primary it does not think is down
        (redis-py's ``check_master_state``). A call made while another is asking waits for
        that one's answer.

        Raises:
            MasterNotFoundError: no sentinel answered with a valid primary (a
                :class:`redis.exceptions.ConnectionError`); names each sentinel's error; or
                :meth:`aclose` was called.
        """
        if self._closed:
            raise MasterNotFoundError(f"the sentinels of {service_name!r} are closed")
        asking = self._asking.get(service_name)
        if asking is None:
            asking = self._asking[service_name] = asyncio.ensure_future(self._ask(service_name))
            asking.add_done_callback(lambda done: self._asked(service_name, done))
        # Shielded: one caller giving up must not cancel the answer the others wait for.
        return await asyncio.shield(asking)

    def _asked(self, service_name: str, done: asyncio.Future[tuple[str, int]]) -> None:
        self._asking.pop(service_name, None)
        _retrieved(done)  # every caller may have given up

    async def _ask(self, service_name: str) -> tuple[str, int]:
        """One round of questions to every sentinel (see :meth:`discover_master`)."""
        asks: dict[asyncio.Future[Any], tuple[int, aioredis.Redis]] = {
            asyncio.ensure_future(sentinel.sentinel_master(service_name)): (order, sentinel)
            for order, sentinel in enumerate(self.sentinels)
        }
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Future[Any]] = set(asks)
        best: tuple[int, int, int, tuple[str, int]] | None = None
        errors: list[str] = []
        until: float | None = None
        try:
            while pending:
                wait = None if until is None else max(0.0, until - loop.time())
                done, pending = await asyncio.wait(
                    pending, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    break
                for ask in done:
                    order, sentinel = asks[ask]
                    where = _sentinel_address(sentinel)
                    error = ask.exception()
                    if error is not None:
                        errors.append(f"{where}: {type(error).__name__}: {error}")
                        continue
                    state = ask.result()
                    if not self.check_master_state(state, service_name):
                        errors.append(f"{where}: names no primary it thinks is up")
                        continue
                    found = _rank(state, order)
                    if best is None or found > best:
                        best = found
                    if until is None:
                        until = loop.time() + ANSWER_GRACE
        finally:
            # Left to finish on their own (each within the sentinels' socket timeouts), not
            # cancelled: a command cancelled while its connection opens can leave the socket
            # behind unclosed.
            for ask in pending:
                self._late.add(ask)
                ask.add_done_callback(self._late.discard)
                ask.add_done_callback(_retrieved)
        if best is None:
            raise MasterNotFoundError(
                f"no sentinel named a primary for {service_name!r}: " + "; ".join(errors)
            )
        return best[3]


def _retrieved(done: asyncio.Future[Any]) -> None:
    """Read a background question's outcome, so that its error is not reported as lost."""
    if not done.cancelled():
        done.exception()


def _failing_over(state: Mapping[str, Any]) -> bool:
    """True when a sentinel's state of a primary says that sentinel is failing it over."""
    return "failover_in_progress" in str(state.get("flags", ""))


def _rank(state: Mapping[str, Any], order: int) -> tuple[int, int, int, tuple[str, int]]:
    """How new a sentinel's view of the primary is, the newest highest: its configuration
    epoch; then, at one epoch, a settled view over that of the sentinel leading a failover,
    which still names the old primary while the others already name the promoted replica;
    then the sentinel listed first. Last: the primary's ``(host, port)``."""
    address = (str(state["ip"]), int(state["port"]))
    settled = 0 if _failing_over(state) else 1
    return int(state.get("config-epoch", 0)), settled, -order, address


def _in_sync(replica: Mapping[str, Any], primary: tuple[str, int]) -> bool:
    """True when a sentinel's state of a replica says it follows ``primary``, linked."""
    if replica.get("is_sdown") or replica.get("is_odown") or replica.get("is_disconnected"):
        return False
    follows = (str(replica.get("master-host")), int(replica.get("master-port") or 0))
    linked = replica.get("master-link-status") == "ok"
    return replica.get("role-reported") == "slave" and linked and follows == primary


def _sentinel_address(sentinel: aioredis.Redis) -> str:
    kwargs = sentinel.connection_pool.connection_kwargs
    return f"{kwargs.get('host')}:{kwargs.get('port')}"


class SentinelPool(BoundedPool, SentinelConnectionPool):
    """redis-py's Sentinel connection pool (its connections go to the primary the sentinels
    name), bounded as every aqueue pool is (:class:`~aqueue.transports.redis.client.BoundedPool`).

    A connection handed back while it is connected to a server that is no longer the primary
    is closed rather than kept: a connection opened while a failover was being announced is not
    reused against the old primary.
    """

    async def release(self, connection: Any) -> None:
        primary = self.master_address
        if primary is not None and (connection.host, connection.port) != tuple(primary):
            connection.mark_for_reconnect()
        await super().release(connection)


def open_sentinel_client(
    url: str, connection: ConnectionOptions | None = None
) -> tuple[Sentinels, aioredis.Redis, str]:
    """The sentinels of ``url`` and a redis-py client of its primary (nothing connected yet),
    and the service's name.

    Timeouts, the pool's size and TLS come from ``connection`` as for a ``redis://`` URL (the
    URL's query wins, as in redis-py); the Sentinel options from ``connection.sentinel``.

    Raises:
        ConfigurationError: the URL or an option is invalid, or the socket timeout is too short
            for a blocking fetch.
    """
    options = connection or ConnectionOptions()
    where = redacted_url(url)
    extra = sentinel_options(options.sentinel, where)
    parsed = parse_sentinel_url(url, extra)
    primary: dict[str, Any] = {
        "retry": dropped_connection_retry(options.retry_on_timeout),
        "socket_timeout": options.socket_timeout,
        "socket_connect_timeout": options.connect_timeout,
        **tls_arguments(options.tls, SentinelManagedSSLConnection),
    }
    primary.update(parsed.primary)
    if parsed.tls and "connection_class" not in primary:
        primary["connection_class"] = SentinelManagedSSLConnection
    check_socket_timeout(url, primary.get("socket_timeout"))
    tls = primary.get("connection_class") is SentinelManagedSSLConnection
    sentinel_kwargs: dict[str, Any] = {
        # A sentinel answers at once or not at all: never wait for ever.
        "socket_timeout": primary["socket_timeout"] or primary["socket_connect_timeout"],
        "socket_connect_timeout": primary["socket_connect_timeout"],
    }
    if tls:
        sentinel_kwargs["ssl"] = True
        sentinel_kwargs.update({k: primary[k] for k in _TLS_KEYS if k in primary})
    sentinel_kwargs.update(parsed.sentinel_login)
    sentinel_kwargs.update(extra.get("sentinel_kwargs") or {})
    try:
        sentinels = Sentinels(list(parsed.sentinels), sentinel_kwargs=sentinel_kwargs)
        pool = SentinelPool(
            parsed.service,
            sentinels,
            limit=options.max_connections or MAX_CONNECTIONS,
            **primary,
        )
    except TypeError as exc:  # an argument redis-py does not take, in sentinel_kwargs
        raise ConfigurationError(f"{where}: invalid Sentinel connection argument: {exc}") from exc
    return sentinels, aioredis.Redis.from_pool(pool), parsed.service


class PrimaryWatch:
    """Moves a :class:`SentinelPool` to a new primary as soon as a sentinel announces one.

    Subscribed to ``+switch-master`` on every sentinel (each subscription is made again, with a
    growing pause, when it fails), it asks all sentinels (:meth:`Sentinels.discover_master`) on
    every announcement of its service, after every (re)subscription and every
    :data:`CHECK_EVERY` seconds. When the answer differs from the primary the pool connects to,
    it closes every connection of the pool (see the module's docstring). Every sentinel is
    listened to because the one leading a failover announces the switch last: the others
    announce it as soon as the replica is promoted. Runs until :meth:`aclose`.

    Args:
        sentinels: the sentinels to ask and listen to.
        pool: the primary's pool.
        service: the service's name.
        owner: what to name in log lines (the redacted URL).
    """

    def __init__(self, sentinels: Sentinels, pool: SentinelPool, service: str, owner: str) -> None:
        self.sentinels = sentinels
        self.pool = pool
        self.service = service
        self.owner = owner
        self._tasks: list[asyncio.Task[None]] = []
        self._checking: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # Set by aclose(): the loops stop on it too, since redis-py may turn the cancellation
        # of a command into a connection error, which the loops ride out.
        self._closing = False
        self._moved = asyncio.Event()  # set (and replaced) when the pool follows a new primary

    def closing(self) -> bool:
        """True once :meth:`aclose` was called."""
        return self._closing

    def start(self) -> None:
        """Start listening (tasks of the running loop). Idempotent."""
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._listen_to(s), name=f"sentinel watch {self.owner}")
                for s in self.sentinels.sentinels
            ]
            self._tasks.append(asyncio.create_task(self._check_every(CHECK_EVERY)))

    def check_soon(self) -> None:
        """Ask the sentinels now, in the background (once at a time)."""
        if self._checking is None or self._checking.done():
            self._checking = asyncio.ensure_future(self._check_logged())

    async def check(self) -> bool:
        """Ask the sentinels where the primary is; follow it if it moved. True if it moved.

        Raises:
            MasterNotFoundError: no sentinel named a primary.
        """
        async with self._lock:
            address = await self.sentinels.discover_master(self.service)
            old = self.pool.master_address
            if old is not None and tuple(old) == tuple(address):
                return False
            self.pool.master_address = address
            if old is None:
                return False
            log.warning(
                "%s: primary of %r moved from %s:%s to %s:%s; reconnecting",
                self.owner,
                self.service,
                *old,
                *address,
            )
            await self.pool.disconnect(inuse_connections=True)
            self._moved.set()
            self._moved = asyncio.Event()
            return True

    async def moved_from(self, primary: tuple[str, int], timeout: float) -> bool:
        """Wait until the pool follows another primary than ``primary`` (it may already),
        asking the sentinels every :data:`FOLLOW_EVERY` seconds meanwhile (a failover is known
        to be under way); False if ``timeout`` seconds passed first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._follows(primary):
            left = deadline - loop.time()
            if left <= 0:
                return False
            moved = self._moved
            self.check_soon()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
            # that comes as the move is announced, and a cancelled send would go on.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(FOLLOW_EVERY, left)):
                    await moved.wait()
        return True

    async def aclose(self) -> None:
        """Stop listening. Idempotent."""
        self._closing = True
        tasks = [t for t in (*self._tasks, self._checking) if t is not None and not t.done()]
        self._tasks, self._checking = [], None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def _follows(self, primary: tuple[str, int]) -> bool:
        address = self.pool.master_address
        return address is not None and (str(address[0]), int(address[1])) == primary

    async def _check_logged(self) -> None:
        try:
            await self.check()
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("%s: cannot ask the sentinels for the primary: %s", self.owner, exc)

    async def _check_every(self, seconds: float) -> None:
        while not self.closing():
            await asyncio.sleep(seconds)
            await self._check_logged()

    async def _listen_to(self, sentinel: aioredis.Redis) -> None:
        """Listen to ``sentinel``'s announcements, subscribing again after a failure."""
        pause = WATCH_BACKOFF[0]
        while not self.closing():
            pubsub = sentinel.pubsub()
            try:
                await pubsub.subscribe(SWITCH_CHANNEL)
                await self._check_logged()  # what was announced while we were not listening
                pause = WATCH_BACKOFF[0]
                await self._listen(pubsub)
            except (redis.exceptions.RedisError, OSError) as exc:
                if self.closing():
                    return
                log.warning(
                    "%s: lost sentinel %s (%s); subscribing again in %gs",
                    self.owner,
                    _sentinel_address(sentinel),
                    exc,
                    pause,
                )
            finally:
                # Untyped before redis-py 8.2.
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
            if self.closing():
                return
            await asyncio.sleep(pause)
            pause = min(pause * 2, WATCH_BACKOFF[1])

    async def _listen(self, pubsub: Any) -> None:
        """Read announcements until the subscription fails; ask on each one of our service.
        After :data:`CHECK_EVERY` seconds of silence the sentinel gets a PING.

        Raises:
            redis.exceptions.ConnectionError: the connection failed, or the sentinel did not
                answer a PING within :data:`CHECK_EVERY` seconds (a half-open connection).
        """
        pinged = False
        while not self.closing():
            message = await pubsub.get_message(timeout=CHECK_EVERY)
            if message is None:
                if pinged:
                    raise redis.exceptions.ConnectionError(
                        f"no answer to PING within {CHECK_EVERY:g}s"
                    )
                pinged = True
                await pubsub.ping()
                continue
            pinged = False
            if message.get("type") != "message":
                continue
            data = message.get("data")
            words = (data.decode() if isinstance(data, bytes) else str(data)).split()
            if words and words[0] == self.service:
                await self._check_logged()


class SentinelClient(SharedClient):
    """A :class:`~aqueue.transports.redis.client.SharedClient` whose pool follows the primary
    of a Sentinel-monitored service (see the module's docstring), for the roles of one app,
    event loop and URL.

    Raises:
        ConfigurationError: the URL or the Sentinel options are invalid (checked here).
    """

    def __init__(self, url: str, connection: ConnectionOptions | None = None) -> None:
        super().__init__(url, connection)
        self._sentinels: Sentinels | None = None
        self._watch: PrimaryWatch | None = None
        self._opening: tuple[Sentinels, PrimaryWatch] | None = None
        # Checked now, as a redis:// URL is when its pool is made.
        where = redacted_url(url)
        parse_sentinel_url(url, sentinel_options(self.connection.sentinel, where))

    @property
    def watch(self) -> PrimaryWatch | None:
        """The watch of the connected client (``None`` before the first connection)."""
        return self._watch

    def _open(self) -> aioredis.Redis:
        sentinels, client, service = open_sentinel_client(self.url, self.connection)
        pool = client.connection_pool
        assert isinstance(pool, SentinelPool)
        watch = PrimaryWatch(sentinels, pool, service, redacted_url(self.url))
        self._opening = (sentinels, watch)
        return client

    def _opened(self, client: aioredis.Redis) -> None:
        assert self._opening is not None
        (self._sentinels, self._watch), self._opening = self._opening, None
        self._watch.start()

    async def _abandon(self, client: aioredis.Redis) -> None:
        opening, self._opening = self._opening, None
        try:
            await super()._abandon(client)
        finally:
            if opening is not None:
                await opening[0].aclose()

    def primary(self) -> tuple[str, int] | None:
        watch = self._watch
        address = None if watch is None else watch.pool.master_address
        return None if address is None else (str(address[0]), int(address[1]))

    async def replicas_in_sync(self, primary: tuple[str, int] | None) -> int | None:
        """The replicas of ``primary`` that could take its place, as the sentinels see them,
        when every sentinel answers, names ``primary`` with one configuration epoch, and none
        is failing it over; else ``None``. When the sentinels name another primary, ``None``
        comes once the pool follows it (or after the connect timeout), so that a write tried
        again goes there rather than to the old primary, which would drop it.

        A replica counts when, as a sentinel last saw it, it reports itself a replica of
        ``primary`` with its link up, and that sentinel does not think it down or disconnected;
        the largest count any sentinel gives is taken. The old primary listed as a replica right
        after a failover does not count until it has turned into a replica and caught up. The
        sentinels refresh what they know of a replica every 10 s: a replica that has just come
        back may count late, and meanwhile a send needs fewer replicas (as Redis itself, without
        ``min-replicas-to-write``, accepts writes).

        Raises:
            redis.exceptions.RedisError: never for an unreachable sentinel (that is ``None``).
        """
        sentinels, watch = self._sentinels, self._watch
        if sentinels is None or watch is None or primary is None:
            return None
        service = watch.service
        masters: list[Any] = await asyncio.gather(
            *(s.sentinel_master(service) for s in sentinels.sentinels), return_exceptions=True
        )
        ranked = []
        for order, state in enumerate(masters):
            if isinstance(state, BaseException) or not sentinels.check_master_state(state, service):
                return None
            ranked.append(_rank(state, order))
        if max(ranked)[3] != primary:
            # A failover moved the primary: what the old one takes is lost. Answer once the
            # pool follows the new one, so that a write tried again goes there.
            await watch.moved_from(primary, self.connection.connect_timeout)
            return None
        if len({r[3] for r in ranked}) != 1 or any(map(_failing_over, masters)):
            return None  # the tail of a failover to ``primary``: replicas are being repointed
        listed: list[Any] = await asyncio.gather(
            *(s.sentinel_slaves(service) for s in sentinels.sentinels), return_exceptions=True
        )
        counts = [
            sum(1 for replica in replicas if _in_sync(replica, primary))
            for replicas in listed
            if not isinstance(replicas, BaseException)
        ]
        return max(counts) if len(counts) == len(listed) else None

    async def aclose(self) -> None:
        watch, self._watch = self._watch, None
        sentinels, self._sentinels = self._sentinels, None
        try:
            if watch is not None:
                await watch.aclose()
            await super().aclose()
        finally:
            if sentinels is not None:
                await sentinels.aclose()
