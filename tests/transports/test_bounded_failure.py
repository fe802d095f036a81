"""Bounded failure: a send to a server that is down, silent or wrong fails in bounded time.

Real servers only: a loopback listener that accepts and never answers (asyncio), a refused port,
a TLS URL to a plain Redis or RabbitMQ, and a proxy that drops a pooled connection under a
command. Each case asserts the elapsed time between a sane minimum and the bound plus a margin,
and that the error names the URL without its password (README: "When a server is down").
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from aqueue import Aqueue, Worker
from aqueue.exceptions import BrokerConnectionError, ConfigurationError
from aqueue.transports.base import MIN_SOCKET_TIMEOUT
from aqueue.transports.redis import RedisBroker
from aqueue.transports.redis.broker import _MAX_BLOCK
from tests.conftest import RabbitNode

pytestmark = pytest.mark.timeout(60)

PASSWORD = "s3cret"
MARGIN = 0.5  # seconds past a bound that a loaded machine may add to a failure
BACKEND_LOG = "result backend"


# -- servers that do not answer ---------------------------------------------------------------


@asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A loopback TCP server that accepts connections, reads, and never answers; its port."""
    closing = asyncio.Event()
    clients: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        clients.append(writer)
        await closing.wait()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        closing.set()
        for writer in clients:
            writer.close()
        server.close()
        await server.wait_closed()


def refused_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def url_for(kind: str, port: int) -> str:
    """A URL of scheme ``kind`` to loopback ``port``, with a password to keep out of errors."""
    if kind.startswith("redis"):
        return f"{kind}://:{PASSWORD}@127.0.0.1:{port}/0"
    return f"{kind}://guest:{PASSWORD}@127.0.0.1:{port}/"


def app_for(broker: str, backend: str, **settings: Any) -> Aqueue:
    app = Aqueue("bounded", broker=broker, backend=backend, **settings)

    @app.task(name="bounded.add")
    async def add(x: int, y: int) -> int:
        return x + y

    return app


async def timed_failure(app: Aqueue) -> tuple[float, BrokerConnectionError]:
    """Seconds ``delay()`` took to fail, and its error."""
    started = time.monotonic()
    try:
        with pytest.raises(BrokerConnectionError) as caught:
            await app.send_task("bounded.add", (2, 2))
        return time.monotonic() - started, caught.value
    finally:
        await app.close()


def assert_names_url(error: BaseException, port: int) -> None:
    assert f"127.0.0.1:{port}" in str(error)
    assert PASSWORD not in str(error)


@pytest.fixture
def backend(redis_server: str) -> str:
    """A reachable result backend, for the AMQP broker (which stores no results)."""
    return f"{redis_server}/0"


# -- a silent server --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("timeout", [2.0, 5.0])
@pytest.mark.parametrize("kind", ["redis", "rediss", "amqp", "amqps"])
async def test_a_silent_server_fails_delay_within_the_timeout(
    kind: str, timeout: float, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with silent_server() as port:
        broker = url_for(kind, port)
        # A Redis broker is its own result backend, as by default; AMQP pairs with Redis.
        app = app_for(
            broker,
            broker if kind.startswith("redis") else backend,
            broker_connection_timeout=timeout,
        )
        elapsed, error = await timed_failure(app)
    assert timeout - 0.1 <= elapsed <= timeout + MARGIN, elapsed
    assert_names_url(error, port)
    assert f"did not answer within {timeout:g}s" in str(error)
    if kind in ("rediss", "amqps"):
        assert "speaks TLS" in str(error)
    assert BACKEND_LOG not in caplog.text  # the broker is what is down, and it says so


async def test_the_default_timeout_is_at_most_5_seconds(backend: str) -> None:
    async with silent_server() as port:
        elapsed, error = await timed_failure(app_for(url_for("redis", port), backend))
    assert Aqueue().conf.broker_connection_timeout <= 5.0
    assert 3.9 <= elapsed <= 5.0 + MARGIN, elapsed
    assert_names_url(error, port)


# -- a refused port ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["redis", "amqp"])
async def test_a_refused_port_fails_within_a_second(
    kind: str, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = refused_port()
    broker = url_for(kind, port)
    app = app_for(broker, broker if kind == "redis" else backend)
    elapsed, error = await timed_failure(app)
    assert elapsed < 1.0, elapsed
    assert_names_url(error, port)
    assert BACKEND_LOG not in caplog.text


async def test_a_refused_port_without_retries_fails_at_once() -> None:
    broker = url_for("redis", refused_port())
    app = app_for(broker, broker)
    started = time.monotonic()
    with pytest.raises(BrokerConnectionError):
        await app.send_task("bounded.add", (1, 1), retry=False)
    assert time.monotonic() - started < 0.2
    await app.close()


async def test_a_patient_retry_policy_keeps_trying_past_the_timeout() -> None:
    broker = url_for("redis", refused_port())
    app = app_for(broker, broker, broker_connection_timeout=0.5)
    patient = {"max_retries": 4, "interval_start": 0.25, "interval_step": 0, "interval_max": 0.25}
    started = time.monotonic()
    with pytest.raises(BrokerConnectionError):
        await app.send_task("bounded.add", (1, 1), retry_policy=patient)
    # Its pauses add up to 1 s: it tries at 0, 0.25, 0.5 and 0.75 s, past the 0.5 s timeout.
    assert 0.7 <= time.monotonic() - started <= 1.0 + MARGIN
    await app.close()


# -- a TLS URL to a plain server --------------------------------------------------------------


async def test_a_tls_url_to_a_plain_redis_fails_within_the_timeout(redis_server: str) -> None:
    port = int(redis_server.rsplit(":", 1)[1])
    broker = url_for("rediss", port)
    elapsed, error = await timed_failure(app_for(broker, broker, broker_connection_timeout=2))
    assert elapsed <= 2 + MARGIN, elapsed
    assert_names_url(error, port)


async def test_a_tls_url_to_a_plain_rabbitmq_fails_within_the_timeout(
    rabbitmq_server: RabbitNode, backend: str
) -> None:
    broker = url_for("amqps", rabbitmq_server.port)
    elapsed, error = await timed_failure(app_for(broker, backend, broker_connection_timeout=2))
    assert elapsed <= 2 + MARGIN, elapsed
    assert_names_url(error, rabbitmq_server.port)


# -- which server is down ---------------------------------------------------------------------


async def test_a_silent_result_backend_does_not_fail_a_send(
    redis_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with silent_server() as port:
        app = app_for(f"{redis_server}/0", url_for("redis", port), broker_connection_timeout=2)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="aqueue.app"):
            result = await app.send_task("bounded.add", (2, 2))
        elapsed = time.monotonic() - started
        await app.close()
    assert result.id
    # The backend gets half of what is left after the broker answered; then the send goes on.
    assert 0.9 <= elapsed <= 1.0 + MARGIN, elapsed
    assert f"result backend redis://127.0.0.1:{port}/0 unreachable" in caplog.text
    assert PASSWORD not in caplog.text


# -- what redis-py still retries --------------------------------------------------------------


class DroppingProxy:
    """A TCP proxy to Redis that, when armed, closes the next connection that sends a command
    without forwarding it (a pooled connection dying under a command, as in a restart)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.armed = False
        self.dropped = 0
        self.connections = 0
        self._pipes: set[asyncio.Task[None]] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        back = asyncio.create_task(self._pipe(up_reader, writer))
        self._pipes.add(back)
        try:
            while data := await reader.read(65536):
                if self.armed:
                    self.armed = False
                    self.dropped += 1
                    break
                up_writer.write(data)
                await up_writer.drain()
        except ConnectionError:
            pass
        finally:
            back.cancel()
            for w in (writer, up_writer):
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass

    async def close(self) -> None:
        for task in self._pipes:
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)


async def test_a_connection_dropped_under_a_command_is_retried_once(redis_server: str) -> None:
    direct = f"{redis_server}/0"
    proxy = DroppingProxy(int(redis_server.rsplit(":", 1)[1]))
    server = await asyncio.start_server(proxy.serve, "127.0.0.1", 0)
    proxied = f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    worker_app = app_for(direct, direct)
    client = app_for(proxied, proxied, broker_connection_timeout=2)  # alone on the proxy
    try:
        async with Worker(worker_app, concurrency=1):
            assert await (await client.send_task("bounded.add", (1, 1))).get(timeout=10) == 2
            before = proxy.connections
            proxy.armed = True
            # One try of aqueue's own: redis-py's single reconnect is what saves the send.
            result = await client.send_task("bounded.add", (2, 2), retry=False)
            assert proxy.dropped == 1
            assert proxy.connections == before + 1  # the command went again on a fresh one
            assert await result.get(timeout=10) == 4
    finally:
        await client.close()
        await worker_app.close()
        await proxy.close()
        server.close()
        await server.wait_closed()


# -- socket timeouts and the worker's blocking fetch ------------------------------------------


def test_the_minimum_socket_timeout_outlasts_the_blocking_fetch() -> None:
    assert MIN_SOCKET_TIMEOUT > _MAX_BLOCK


async def test_a_blocking_fetch_survives_the_shortest_socket_timeout(redis_server: str) -> None:
    url = f"{redis_server}/0"
    app = Aqueue("bounded", broker=url, redis_socket_timeout=MIN_SOCKET_TIMEOUT)
    broker = await app.broker()
    assert isinstance(broker, RedisBroker)
    started = time.monotonic()
    # Empty: several blocking reads of up to 1 s each, none cut off by the 2 s socket timeout.
    assert await broker.fetch(["bounded-empty"], 1, MIN_SOCKET_TIMEOUT + 1.0) == []
    assert time.monotonic() - started >= MIN_SOCKET_TIMEOUT + 0.9
    await app.close()


async def test_a_socket_timeout_in_the_url_shorter_than_the_fetch_is_refused(
    redis_server: str,
) -> None:
    url = f"{redis_server}/0?socket_timeout=0.5"
    app = app_for(url, url)
    with pytest.raises(ConfigurationError, match=r"socket_timeout 0\.5s is shorter"):
        await app.send_task("bounded.add", (1, 1))
    await app.close()


async def test_settings_reach_the_redis_pool(redis_server: str) -> None:
    url = f"{redis_server}/0"
    app = Aqueue(
        "bounded",
        broker=url,
        broker_connection_timeout=3,
        broker_pool_limit=20,
        redis_socket_timeout=30,
        redis_retry_on_timeout=True,
    )
    transport = app.transport(url)
    client = await transport.client.get()  # type: ignore[attr-defined]
    pool = client.connection_pool
    assert pool.connection_kwargs["socket_connect_timeout"] == 3
    assert pool.connection_kwargs["socket_timeout"] == 30
    assert pool.max_connections == 20
    await app.close()
