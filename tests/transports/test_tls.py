"""TLS against real servers: a TLS-only redis-server and RabbitMQ's TLS listener, each with a
certificate from a throwaway CA (tests/conftest.py), reached through the URL form
(``rediss://...?ssl_ca_certs=``) and through Celery's settings (``broker_use_ssl``,
``redis_backend_use_ssl``); what an untrusted CA, a missing client certificate and a plain
connection to a TLS port fail with; and how the settings are checked.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from aqueue import Aqueue, Task, Worker
from aqueue.exceptions import BrokerConnectionError, ConfigurationError, UnknownSetting
from aqueue.transports.amqp import AMQPBroker
from aqueue.transports.base import ConnectionOptions
from aqueue.transports.redis import RedisBroker
from aqueue.transports.redis.client import SharedClient
from aqueue.transports.tls import TLSOptions
from tests.conftest import RabbitNode, RedisTLS, refused_at_once

pytestmark = pytest.mark.timeout(60)

Apps = Callable[..., tuple[Aqueue, Task[[int, int], int]]]


@pytest.fixture
async def make_app() -> AsyncIterator[Apps]:
    """Apps with one task (``tls.add``) on a fresh queue, closed after the test."""
    made: list[Aqueue] = []

    def make(broker: str, backend: str | None, **settings: Any) -> tuple[Aqueue, Task[Any, Any]]:
        app = Aqueue("tls", broker=broker, backend=backend)
        app.conf.update(task_default_queue=f"q-{uuid.uuid4().hex[:12]}", **settings)

        @app.task(name="tls.add")
        async def add(x: int, y: int) -> int:
            return x + y

        made.append(app)
        return app, add

    yield make
    for app in made:
        await app.close()


async def round_trip(app: Aqueue, add: Task[[int, int], int]) -> None:
    """A worker in this process runs one task; its result comes back through the backend."""
    async with Worker(app, concurrency=2, shutdown_timeout=5):
        result = await add.delay(20, 22)
        assert await result.get(timeout=15) == 42
        assert await result.state() == "SUCCESS"


def plain(server: RedisTLS, db: int) -> str:
    """``redis://`` (no TLS in the URL) to the TLS server's port."""
    return f"redis://127.0.0.1:{server.port}/{db}"


# -- Redis: the URL form -------------------------------------------------------------------------


async def test_broker_results_and_a_worker_over_rediss(
    redis_tls_server: RedisTLS, make_app: Apps
) -> None:
    app, add = make_app(redis_tls_server.trusted_url(0), redis_tls_server.trusted_url(1))
    await round_trip(app, add)


async def test_rediss_refuses_an_untrusted_ca_at_once(
    redis_tls_server: RedisTLS, untrusted_ca: str
) -> None:
    url = f"redis://:s3cret@127.0.0.1:{redis_tls_server.port}/0?ssl_ca_certs={untrusted_ca}"
    url = url.replace("redis://", "rediss://")
    broker = RedisBroker(url, {})
    message = await refused_at_once(broker.connect())
    assert f"Redis at rediss://:**@127.0.0.1:{redis_tls_server.port}/0" in message
    assert "failed TLS during connect: its TLS certificate was not accepted" in message
    assert "CERTIFICATE_VERIFY_FAILED" in message and "ssl_ca_certs" in message
    assert "s3cret" not in message and untrusted_ca not in message
    await broker.close()


async def test_rediss_with_no_ca_named_trusts_only_the_system_cas(
    redis_tls_server: RedisTLS,
) -> None:
    with pytest.raises(BrokerConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        await RedisBroker(f"{redis_tls_server.url}/0", {}).connect()


@pytest.mark.parametrize("timeout", [2.0, 4.0])
async def test_plain_redis_to_the_tls_port_fails_within_its_timeout_with_the_hint(
    redis_tls_server: RedisTLS, make_app: Apps, timeout: float
) -> None:
    _, add = make_app(
        plain(redis_tls_server, 0), plain(redis_tls_server, 0), broker_connection_timeout=timeout
    )
    message = await refused_at_once(add.delay(1, 2), within=timeout + 0.5)
    assert f"redis://127.0.0.1:{redis_tls_server.port}/0" in message
    assert "a server listening for TLS on that port cuts it" in message
    assert "use rediss://" in message


async def test_client_certificate_in_the_url(redis_mtls_server: RedisTLS, make_app: Apps) -> None:
    certs = redis_mtls_server.certs
    mine = f"&ssl_certfile={certs}/client.pem&ssl_keyfile={certs}/client.key"
    url = redis_mtls_server.trusted_url(0) + mine
    app, add = make_app(url, url)
    await round_trip(app, add)


@pytest.mark.parametrize(
    ("client", "message"),
    [
        (None, "asks for a client certificate and got none: .*give one with ssl_certfile"),
        ("other", "refused this client's certificate"),
    ],
)
async def test_a_server_that_wants_a_client_certificate_refuses_none_or_another_at_once(
    redis_mtls_server: RedisTLS, untrusted_ca: str, client: str | None, message: str
) -> None:
    """The server's TLS alert says why; in TLS 1.3 it may cut the connection before the alert
    can be read, and then the message names the likely cause."""
    url = redis_mtls_server.trusted_url(0)
    if client == "other":
        other = Path(untrusted_ca).parent
        url += f"&ssl_certfile={other}/client.pem&ssl_keyfile={other}/client.key"
    broker = RedisBroker(url, {})
    text = await refused_at_once(broker.connect())
    assert text.startswith(f"Redis at rediss://127.0.0.1:{redis_mtls_server.port}/0 ")
    cut = "a server that wants a client certificate cuts a TLS connection"
    assert re.search(message, text) or (cut in text and "ssl_certfile and ssl_keyfile" in text)
    await broker.close()


# -- Redis: Celery's settings --------------------------------------------------------------------


async def test_celery_settings_turn_tls_on_for_broker_and_result_backend(
    redis_tls_server: RedisTLS, make_app: Apps
) -> None:
    app, add = make_app(
        plain(redis_tls_server, 0),
        plain(redis_tls_server, 1),
        broker_use_ssl={"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": redis_tls_server.ca},
        redis_backend_use_ssl={"ssl_cert_reqs": "required", "ssl_ca_certs": redis_tls_server.ca},
    )
    await round_trip(app, add)


async def test_celery_settings_carry_a_client_certificate(
    redis_mtls_server: RedisTLS, make_app: Apps
) -> None:
    certs = redis_mtls_server.certs
    tls = {
        "ssl_ca_certs": str(certs / "ca.pem"),
        "ssl_certfile": str(certs / "client.pem"),
        "ssl_keyfile": str(certs / "client.key"),
    }
    url = plain(redis_mtls_server, 0)
    app, add = make_app(url, url, broker_use_ssl=tls, redis_backend_use_ssl=tls)
    await round_trip(app, add)


async def test_the_url_query_wins_over_the_setting(
    redis_tls_server: RedisTLS, make_app: Apps, untrusted_ca: str
) -> None:
    url = redis_tls_server.trusted_url(0)
    app, add = make_app(url, url, broker_use_ssl={"ssl_ca_certs": untrusted_ca})
    await round_trip(app, add)


@pytest.mark.parametrize("setting", ["broker_use_ssl", "redis_backend_use_ssl"])
async def test_an_untrusted_ca_in_the_settings_is_refused_at_once(
    redis_tls_server: RedisTLS, make_app: Apps, untrusted_ca: str, setting: str
) -> None:
    url = plain(redis_tls_server, 0)
    app, _ = make_app(url, url, **{setting: {"ssl_ca_certs": untrusted_ca}})
    assert "CERTIFICATE_VERIFY_FAILED" in await refused_at_once(app.broker())


async def test_broker_use_ssl_true_verifies_against_the_system_cas(
    redis_tls_server: RedisTLS, make_app: Apps
) -> None:
    url = plain(redis_tls_server, 0)
    app, _ = make_app(url, url, broker_use_ssl=True)
    with pytest.raises(BrokerConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        await app.broker()


async def test_cert_reqs_none_encrypts_without_verifying(
    redis_tls_server: RedisTLS, make_app: Apps
) -> None:
    url = plain(redis_tls_server, 0)
    app, add = make_app(url, url, broker_use_ssl={"ssl_cert_reqs": "none"})
    await round_trip(app, add)


async def test_a_silent_server_with_tls_from_the_settings_gets_the_tls_hint() -> None:
    """A server that never answers the TLS handshake: the message says the connection spoke
    TLS, though the URL is ``redis://``."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    options = ConnectionOptions(connect_timeout=1.0, tls=TLSOptions())
    client = SharedClient(f"redis://127.0.0.1:{port}/0", options)
    message = await refused_at_once(client.get(), within=1.0 + 0.5)
    assert "this connection (*_use_ssl) speaks TLS" in message
    server.close()
    await server.wait_closed()


# -- RabbitMQ: Celery's settings -----------------------------------------------------------------


def amqp_tls_port(node: RabbitNode) -> str:
    """``amqp://`` (no TLS in the URL) to the node's TLS listener."""
    return f"amqp://guest:guest@127.0.0.1:{node.tls_port}/"


@pytest.mark.timeout(120)
async def test_broker_use_ssl_on_rabbitmq_with_a_redis_backend_over_tls(
    rabbitmq_server: RabbitNode, redis_tls_server: RedisTLS, make_app: Apps
) -> None:
    """Both settings at once: the AMQP broker and the Redis result backend over TLS."""
    app, add = make_app(
        amqp_tls_port(rabbitmq_server),
        plain(redis_tls_server, 2),
        broker_use_ssl={"ca_certs": f"{rabbitmq_server.dir}/ca.pem", "cert_reqs": "required"},
        redis_backend_use_ssl={"ssl_ca_certs": redis_tls_server.ca},
    )
    await round_trip(app, add)


@pytest.mark.timeout(120)
async def test_broker_use_ssl_carries_rpc_results_too(
    rabbitmq_server: RabbitNode, make_app: Apps
) -> None:
    app, add = make_app(
        amqp_tls_port(rabbitmq_server),
        "rpc://",
        broker_use_ssl={"ca_certs": f"{rabbitmq_server.dir}/ca.pem"},
    )
    await round_trip(app, add)


@pytest.mark.timeout(120)
async def test_broker_use_ssl_on_rabbitmq_with_a_client_certificate(
    rabbitmq_server: RabbitNode, tls_certificates: Any, make_app: Apps, redis_server: str
) -> None:
    """The node does not ask for one, but the files are loaded and sent if asked."""
    app, add = make_app(
        amqp_tls_port(rabbitmq_server),
        f"{redis_server}/0",
        broker_use_ssl={
            "ca_certs": f"{rabbitmq_server.dir}/ca.pem",
            "certfile": str(tls_certificates / "client.pem"),
            "keyfile": str(tls_certificates / "client.key"),
        },
    )
    await round_trip(app, add)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "value",
    [True, {"ca_certs": "UNTRUSTED"}, {"cert_reqs": ssl.CERT_REQUIRED}],
    ids=["true", "other-ca", "system-cas"],
)
async def test_broker_use_ssl_on_rabbitmq_refuses_an_unverified_server_at_once(
    rabbitmq_server: RabbitNode, untrusted_ca: str, value: Any
) -> None:
    if isinstance(value, dict) and value.get("ca_certs") == "UNTRUSTED":
        value = {"ca_certs": untrusted_ca}
    app = Aqueue("tls", broker=amqp_tls_port(rabbitmq_server), backend="memory://")
    app.conf.broker_use_ssl = value
    message = await refused_at_once(app.broker())
    assert "TLS certificate was not accepted" in message
    assert "CERTIFICATE_VERIFY_FAILED" in message and "ca_certs" in message
    assert f"RabbitMQ at amqp://guest:**@127.0.0.1:{rabbitmq_server.tls_port}/" in message
    await app.close()


@pytest.mark.timeout(120)
async def test_broker_use_ssl_cert_none_on_rabbitmq(rabbitmq_server: RabbitNode) -> None:
    broker = AMQPBroker(amqp_tls_port(rabbitmq_server), {}, tls=TLSOptions(cert_reqs=ssl.CERT_NONE))
    await broker.connect()
    await broker.close()


@pytest.mark.timeout(120)
async def test_plain_amqp_to_the_tls_port_fails_at_once_with_the_hint(
    rabbitmq_server: RabbitNode,
) -> None:
    broker = AMQPBroker(amqp_tls_port(rabbitmq_server), {"connect_timeout": 5})
    message = await refused_at_once(broker.connect())
    assert "a server listening for TLS on that port cuts it" in message
    await broker.close()


# -- the settings, checked -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("broker_use_ssl", "yes", "must be True or a dict of TLS options"),
        ("broker_use_ssl", ["ssl_ca_certs"], "not list"),
        ("broker_use_ssl", {"ssl_ca_cert": "/ca.pem"}, r"unknown key\(s\) 'ssl_ca_cert'"),
        ("broker_use_ssl", {"ca_certs": "/a", "ssl_certfile": "/b"}, "mixes the keys"),
        ("broker_use_ssl", {"ssl_cert_reqs": "maybe"}, r"\['ssl_cert_reqs'\] must be ssl.CERT_"),
        ("broker_use_ssl", {"cert_reqs": True}, r"\['cert_reqs'\] must be ssl.CERT_"),
        ("broker_use_ssl", {"cert_reqs": 7}, r"\['cert_reqs'\] must be ssl.CERT_"),
        ("broker_use_ssl", {"ssl_ca_certs": 3}, r"\['ssl_ca_certs'\] must be a file path"),
        ("broker_use_ssl", {"certfile": ""}, r"\['certfile'\] must be a file path"),
        ("redis_backend_use_ssl", True, "must be a dict of TLS options"),
        ("redis_backend_use_ssl", {"ca_certs": "/a"}, "Redis takes ssl_ca_certs"),
    ],
)
def test_bad_tls_settings_are_refused_when_set(name: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Aqueue("t").conf.update({name: value})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, TLSOptions()),
        ({}, TLSOptions()),
        ({"ssl_cert_reqs": ssl.CERT_NONE}, TLSOptions(cert_reqs=ssl.CERT_NONE)),
        ({"ssl_cert_reqs": "optional"}, TLSOptions(cert_reqs=ssl.CERT_OPTIONAL)),
        ({"ssl_cert_reqs": "CERT_REQUIRED"}, TLSOptions(cert_reqs=ssl.CERT_REQUIRED)),
        ({"ssl_cert_reqs": 0}, TLSOptions(cert_reqs=ssl.CERT_NONE)),
        (
            {"ssl_ca_certs": "/ca", "ssl_certfile": "/c", "ssl_keyfile": "/k"},
            TLSOptions(ca_certs="/ca", certfile="/c", keyfile="/k"),
        ),
        ({"ssl_keyfile": None}, TLSOptions()),
    ],
)
def test_redis_keys_make_the_connection_options(value: Any, expected: TLSOptions) -> None:
    app = Aqueue("t", broker="redis://h:1/0", backend="redis://h:1/1")
    app.conf.broker_use_ssl = value
    assert app.conf.connection_options("redis://h:1/0").tls == expected
    assert app.conf.connection_options("redis://h:1/1").tls is None  # the backend's own


def test_amqp_keys_make_the_connection_options() -> None:
    app = Aqueue("t", broker="amqp://h/", backend="redis://h:1/1")
    app.conf.broker_use_ssl = {"ca_certs": "/ca", "certfile": "/c", "cert_reqs": ssl.CERT_NONE}
    expected = TLSOptions(ca_certs="/ca", certfile="/c", cert_reqs=ssl.CERT_NONE)
    assert app.conf.connection_options("amqp://h/").tls == expected
    app.conf.redis_backend_use_ssl = {"ssl_ca_certs": "/ca"}
    assert app.conf.connection_options("redis://h:1/1").tls == TLSOptions(ca_certs="/ca")


def test_no_tls_from_the_settings_by_default_nor_for_servers_without_network() -> None:
    app = Aqueue("t", broker="redis://h:1/0")
    assert app.conf.broker_use_ssl is False and app.conf.redis_backend_use_ssl is False
    assert app.conf.connection_options("redis://h:1/0").tls is None
    app = Aqueue("t", broker="sqlite:///x.db", backend="memory://")
    app.conf.update(broker_use_ssl=True, redis_backend_use_ssl={})
    assert app.conf.connection_options("sqlite:///x.db").tls is None


@pytest.mark.parametrize(
    ("broker", "value", "message"),
    [
        ("redis://h:1/0", {"ca_certs": "/a"}, r"'ca_certs'; Redis takes ssl_ca_certs, .*h:1/0"),
        ("amqp://u:pw@h/", {"ssl_ca_certs": "/a"}, r"'ssl_ca_certs'; RabbitMQ takes ca_certs"),
    ],
)
async def test_keys_for_the_other_kind_of_server_are_refused_at_first_use(
    broker: str, value: Any, message: str
) -> None:
    app = Aqueue("t", broker=broker, backend="memory://")
    app.conf.broker_use_ssl = value  # the broker may be set after; checked when it is used
    with pytest.raises(ConfigurationError, match=message) as info:
        await app.broker()
    assert "pw" not in str(info.value)
    await app.close()


def test_one_redis_server_takes_one_tls_configuration() -> None:
    app = Aqueue("t", broker="redis://h:1/0", backend="redis://h:1/0")
    app.conf.update(broker_use_ssl={"ssl_ca_certs": "/a"}, redis_backend_use_ssl={})
    with pytest.raises(ConfigurationError, match="broker_use_ssl and redis_backend_use_ssl differ"):
        app.conf.connection_options("redis://h:1/0")
    app.conf.redis_backend_use_ssl = {"ssl_ca_certs": "/a"}
    assert app.conf.connection_options("redis://h:1/0").tls == TLSOptions(ca_certs="/a")
    app.conf.redis_backend_use_ssl = False  # the broker's alone is the pool's
    assert app.conf.connection_options("redis://h:1/0").tls == TLSOptions(ca_certs="/a")


def test_celery_3_names_are_told_the_new_ones() -> None:
    conf = Aqueue("t").conf
    with pytest.raises(UnknownSetting, match="call it 'broker_use_ssl'"):
        conf.update(BROKER_USE_SSL=True)
    with pytest.raises(UnknownSetting, match="call it 'redis_backend_use_ssl'"):
        conf.update(CELERY_REDIS_BACKEND_USE_SSL={})


async def test_an_unreadable_certificate_file_is_a_configuration_error(
    make_app: Apps, tmp_path: Any
) -> None:
    missing = str(tmp_path / "missing.pem")
    app, _ = make_app("redis://127.0.0.1:9/0", None, broker_use_ssl={"ssl_ca_certs": missing})
    with pytest.raises(ConfigurationError, match="cannot load the CA certificates"):
        await app.broker()
    with pytest.raises(ConfigurationError, match="cannot load the client certificate"):
        TLSOptions(certfile=missing).context()
    with pytest.raises(ConfigurationError, match="a keyfile needs its certfile"):
        TLSOptions(keyfile=missing).context()
