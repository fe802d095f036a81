"""The Redis transport's Lua scripts: files with a header, run by SHA, never sent as EVAL text."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from importlib import resources

import pytest
import redis.asyncio as aioredis

from aqueue.transports.base import Outgoing
from aqueue.transports.redis import Transport, lua
from aqueue.transports.redis.admin import purge, purge_dead_letters, queue_depths

pytestmark = pytest.mark.timeout(30)

SCRIPTS = sorted(
    p.name.removesuffix(".lua")
    for p in resources.files("aqueue.transports.redis.lua").iterdir()
    if p.name.endswith(".lua") and not p.name.startswith("_")  # _x.lua: a shared piece
)


@pytest.fixture
async def client(redis_server: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(f"{redis_server}/0")
    yield client
    await client.aclose()


def test_every_script_names_its_keys_and_argv() -> None:
    assert len(SCRIPTS) >= 14
    for name in SCRIPTS:
        header = re.match(r"(--[^\n]*\n)+", lua.source(name))
        assert header is not None, f"{name}.lua has no header comment"
        assert "KEYS" in header.group(0), f"{name}.lua: header does not name its KEYS"
        assert "ARGV" in header.group(0), f"{name}.lua: header does not name its ARGV"


def test_shared_pieces_are_put_in_where_a_script_names_them() -> None:
    for name in ("fetch", "count_delayed", "purge_delayed"):
        text = lua.source(name)
        assert not re.search(r"^-- include:", text, re.MULTILINE), name
        assert text.count("local function framed(member, pos)") == 1, name


def test_no_lua_left_inline_in_the_redis_transport() -> None:
    folder = resources.files("aqueue.transports.redis")
    for module in folder.iterdir():
        if module.name.endswith(".py"):
            text = module.read_text(encoding="utf-8")
            assert "redis.call(" not in text, f"{module.name} still holds Lua"
            assert ".eval(" not in text, f"{module.name} sends a script as EVAL text"


async def test_every_role_runs_its_scripts_by_sha(
    redis_server: str, client: aioredis.Redis
) -> None:
    """Run every script-backed operation twice; the server sees EVALSHA and no EVAL."""
    transport = Transport(f"{redis_server}/0")
    queue = f"q-{uuid.uuid4().hex}"
    try:
        broker = transport.broker({})
        backend = transport.result_backend()
        control = transport.control()
        beat = transport.beat_store(f"lua-{uuid.uuid4().hex}")
        await client.script_flush()  # the first call of each must load it (SCRIPT LOAD)
        await client.config_resetstat()
        for round_ in range(2):
            now = time.time()
            await broker.publish(
                [
                    Outgoing(queue, b"x", uuid.uuid4().hex),
                    Outgoing(queue, b"y", uuid.uuid4().hex, eta=now + 60),
                ]
            )
            [one] = await broker.fetch([queue], 1, 1.0)
            await broker.renew([one])
            await broker.release([one])
            [again] = await broker.fetch([queue], 1, 1.0)
            await broker.ack([again])
            await backend.store([(uuid.uuid4().hex, b"r")], 60.0)
            await control.acquire(f"b-{uuid.uuid4().hex}", 10.0, 1.0)
            tick = 1000 + round_
            await beat.claim("entry", tick, "token", 10.0)
            await beat.confirm("entry", tick, "token", 10.0)
            raw = await transport.client.get() if transport.client else None
            assert raw is not None
            await queue_depths(raw, f"{redis_server}/0", [queue])
            await purge(raw, f"{redis_server}/0", [queue])
            await purge_dead_letters(raw, f"{redis_server}/0", queue, 1)
        stats = await client.info("commandstats")
    finally:
        await transport.close()
    assert "cmdstat_eval" not in stats, "a script was sent as EVAL text"
    assert stats["cmdstat_evalsha"]["calls"] >= 2 * 13
    # Loaded once each after the flush (NOSCRIPT on the first EVALSHA), not once per call.
    assert stats["cmdstat_script|load"]["calls"] <= len(SCRIPTS)
