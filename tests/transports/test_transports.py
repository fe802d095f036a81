"""The transport registry, and every role of one app and loop sharing one client per server."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest

from aqueue import Aqueue
from aqueue.exceptions import ConfigurationError
from aqueue.transports import SCHEMES, transport_for, transport_type

pytestmark = pytest.mark.timeout(30)


def test_every_scheme_has_a_transport_with_its_roles() -> None:
    for scheme, folder in SCHEMES.items():
        cls = transport_type(f"{scheme}://x")
        assert cls.__module__ == f"aqueue.transports.{folder}"
        assert "broker" in cls.roles
    assert transport_type("amqp://x").roles == {"broker", "results"}  # results: rpc://


def test_an_unknown_scheme_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigurationError, match=r"memory://, sqlite:///path\.db, redis://"):
        transport_for("kafka://localhost")


def test_a_missing_role_says_what_to_use_instead() -> None:
    with pytest.raises(ConfigurationError, match="amqp:// has no beat store: RabbitMQ carries"):
        transport_for("amqp://guest@127.0.0.1//").beat_store("app")


async def test_redis_roles_share_one_connection_pool(redis_server: str) -> None:
    url = f"{redis_server}/0"
    app = Aqueue(f"one-pool-{uuid.uuid4().hex[:6]}", broker=url, backend=url)
    try:
        broker = await app.broker()
        backend = await app.result_backend()
        control = await app.control_transport()
        store = await app.beat_store()
        transport = app.transport(url)
        shared = [r._shared for r in (broker, backend, control, store)]  # type: ignore[attr-defined]
        assert all(s is transport.client for s in shared)  # type: ignore[attr-defined]
        clients = {id(await s.get()) for s in shared}
        assert len(clients) == 1
        await backend.reply_channel()  # type: ignore[attr-defined]
        await control.put("t", "k", b"v", 10)
        assert transport.client.current is not None  # type: ignore[attr-defined]
    finally:
        await app.close()
    assert transport.client.current is None  # type: ignore[attr-defined]


def _sqlite_threads() -> int:
    return sum(t.name.startswith("aqueue-sqlite") for t in threading.enumerate())


async def test_sqlite_roles_share_one_connection_and_thread(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    before = _sqlite_threads()
    app = Aqueue("one-file", broker=url, backend=url)
    try:
        broker = await app.broker()
        backend = await app.result_backend()
        control = await app.control_transport()
        store = await app.beat_store()
        db = app.transport(url).client  # type: ignore[attr-defined]
        for role in (broker, backend, control, store):
            assert role._db is db  # type: ignore[attr-defined]
        await backend.store([("t", b"r")], 60)
        await control.put("t", "k", b"v", 10)
        await store.put("e", b"{}")
        assert _sqlite_threads() == before + 1
    finally:
        await app.close()


async def test_memory_is_one_transport_per_app_for_every_loop() -> None:
    app = Aqueue("mem", broker="memory://")
    other = Aqueue("mem2", broker="memory://")
    try:
        assert app.transport("memory://") is app.transport("memory://")
        assert app.transport("memory://") is not other.transport("memory://")
    finally:
        await app.close()
        await other.close()


async def test_a_broker_instance_is_used_as_given(tmp_path: Path) -> None:
    from aqueue.transports.sqlite import SQLiteBroker

    url = f"sqlite:///{tmp_path / 'given.db'}"
    given = SQLiteBroker(url, {"visibility_timeout": 12})
    app = Aqueue("given", broker=given)
    try:
        assert await app.broker() is given
        assert app.conf.broker_url == url
        assert app.control_url() == url
    finally:
        await app.close()


def test_an_instance_must_be_a_broker() -> None:
    with pytest.raises(ConfigurationError, match="broker= takes a URL or a Broker instance"):
        Aqueue("bad", broker=object())  # type: ignore[arg-type]
