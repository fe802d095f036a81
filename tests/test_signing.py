"""Message signing (``task_signing_key``): HMAC-SHA256 over the exact bytes, on every transport.

A worker with a key runs signed messages and dead-letters unsigned, tampered and wrongly keyed
ones with the reason and one log line each, storing nothing for the id they claim; keys rotate
(the first signs, every one verifies); result records (and group records) are signed, and a
client with a key gets :class:`SecurityError` for a forged one instead of its value; messages
the worker sends itself (chain steps, links, chord bodies, retries) and beat's are signed too.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest

from aqueue import Aqueue, Task, Worker, chain, chord, group
from aqueue.beat import Beat
from aqueue.beat.entry import parse_entry
from aqueue.exceptions import ChordError, ConfigurationError, SecurityError, UnknownSetting
from aqueue.message import Message, decode
from aqueue.results.record import ResultRecord
from aqueue.signing import Signing
from aqueue.transports import Outgoing
from aqueue.transports.memory.beat import MemoryStore
from tests.apps.tasks import backend_for

pytestmark = pytest.mark.timeout(60)

KEY = "test-signing-key-0123456789abcdef"
OLD = b"old-signing-key-0123456789abcdef"
NEW = "new-signing-key-0123456789abcdef"
OTHER = "someone-elses-key-0123456789abcd"
# sig.gated waits for its event (set by the test) before returning.
GATES: dict[str, asyncio.Event] = {}


def signing(key: Any) -> Signing:
    made = Signing.from_setting(key)
    assert made is not None
    return made


def make_app(url: str, queue: str, key: Any) -> Aqueue:
    """An app on ``url`` with the signing tasks; results on the broker's server (AMQP: the
    Redis server the fixture names in ``$AQUEUE_RESULT_BACKEND``)."""
    app = Aqueue(
        "signing",
        broker=url,
        backend=backend_for(url),
        task_default_queue=queue,
        task_signing_key=key,
    )

    @app.task(name="sig.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="sig.tsum")
    async def tsum(values: list[int]) -> int:
        return sum(values)

    @app.task(name="sig.gated")
    async def gated(name: str) -> int:
        await GATES[name].wait()
        return 1

    @app.task(name="sig.flaky", bind=True, max_retries=3)
    async def flaky(self: Task[Any, Any], succeed_on: int) -> int:
        if self.request.retries < succeed_on:
            raise self.retry(exc=OSError("transient"), countdown=0)
        return self.request.retries

    return app


@pytest.fixture
def queue() -> str:
    return f"q-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def app(transport_url: str, queue: str) -> AsyncIterator[Aqueue]:
    made = make_app(transport_url, queue, KEY)
    yield made
    await made.close()


def record_published(app: Aqueue, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every body the app publishes from now on (sends, canvas, the worker's retries and
    workflow steps: all go through ``Sender.publish_outgoing``)."""
    bodies: list[bytes] = []
    publish = app.sender.publish_outgoing

    async def recording(outgoing: list[Outgoing], *args: Any, **kwargs: Any) -> None:
        bodies.extend(o.body for o in outgoing)
        await publish(outgoing, *args, **kwargs)

    monkeypatch.setattr(app.sender, "publish_outgoing", recording)
    return bodies


def build(app: Aqueue, task_id: str, *args: Any) -> Message:
    return app.sender.build_message("sig.add", args, {}, None, {"task_id": task_id})


async def publish_raw(app: Aqueue, queue: str, *items: tuple[str, bytes]) -> None:
    """Publish bodies as they are, as someone with write access to the broker could."""
    broker = await app.broker()
    await broker.publish([Outgoing(queue, body, task_id) for task_id, body in items])


async def dead_reasons(app: Aqueue, queue: str) -> dict[str, str]:
    """The dead letters of ``queue``: the id each claims -> its reason."""
    broker = await app.broker()
    return {decode(d.body).id: d.reason for d in await broker.dead_letters(queue, 100)}


# -- the worker refuses what is not signed with its key ------------------------------------


async def test_signed_messages_run_and_unsigned_tampered_or_wrongly_keyed_are_dead_lettered(
    app: Aqueue, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = [await app.send_task("sig.add", (i, 1)) for i in range(6)]
    unsigned = build(app, "unsigned-1", 1, 2).encode()
    tampered = app.sender.encode(build(app, "tampered-1", 1, 2))
    assert b'"args":[1,2]' in tampered
    tampered = tampered.replace(b'"args":[1,2]', b'"args":[1,9]')
    wrong_key = signing(OTHER).messages.sign(build(app, "wrong-key-1", 1, 2).encode())
    refused = {"unsigned-1": unsigned, "tampered-1": tampered, "wrong-key-1": wrong_key}
    await publish_raw(app, queue, *refused.items())
    more = [await app.send_task("sig.add", (i, 2)) for i in range(6)]

    with caplog.at_level(logging.ERROR, logger="aqueue"):
        async with Worker(app, concurrency=2) as worker:
            values = await asyncio.gather(*(r.get(timeout=20) for r in good + more))
            await worker.wait_processed(len(good) + len(more) + len(refused))

    assert values == [i + 1 for i in range(6)] + [i + 2 for i in range(6)]
    reasons = await dead_reasons(app, queue)
    assert set(reasons) == set(refused)
    assert reasons["unsigned-1"].startswith("unsigned message: "), reasons
    assert reasons["tampered-1"].startswith("bad signature on message: "), reasons
    assert reasons["wrong-key-1"].startswith("bad signature on message: "), reasons
    assert "sig.add[tampered-1]" in reasons["tampered-1"]  # what it claims, for the operator
    logged = [r.getMessage() for r in caplog.records if "dead-letter queue" in r.getMessage()]
    assert len(logged) == len(refused)  # one line each
    # Nothing is stored under the ids they claim: they are not to be trusted.
    backend = await app.result_backend()
    assert await backend.get_many(list(refused)) == [None, None, None]


async def test_a_worker_without_a_key_runs_signed_messages_and_reads_signed_results(
    queue: str,
) -> None:
    """Rolling signing out: a signed message is still a valid envelope for a keyless worker."""
    app = make_app("memory://", queue, KEY)
    try:
        r = await app.send_task("sig.add", (2, 3))
        app.conf.task_signing_key = None
        async with Worker(app, concurrency=2):
            assert await r.get(timeout=10) == 5
    finally:
        await app.close()


# -- key rotation ----------------------------------------------------------------------------


async def test_key_rotation_the_first_key_signs_and_every_key_verifies(
    transport_url: str, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(transport_url, queue, [OLD])
    try:
        sent = record_published(app, monkeypatch)
        before = await app.send_task("sig.add", (1, 1))  # signed with the old key
        app.conf.task_signing_key = [NEW, OLD]  # rotated: the new key signs, the old one verifies
        after = await app.send_task("sig.add", (2, 2))
        signing(OLD).messages.verify(sent[0])
        signing(NEW).messages.verify(sent[1])
        with pytest.raises(SecurityError, match="bad signature"):
            signing(OLD).messages.verify(sent[1])

        async with Worker(app, concurrency=2) as worker:  # holds [NEW, OLD]
            assert await before.get(timeout=20) == 2
            assert await after.get(timeout=20) == 4
            await worker.wait_processed(2)
        # Records are signed with the new key: a reader with the old one alone refuses them.
        app.conf.task_signing_key = OLD
        with pytest.raises(SecurityError, match="bad signature on result record"):
            await app.AsyncResult(after.id).get(timeout=5)
        app.conf.task_signing_key = [NEW]
        assert await app.AsyncResult(after.id).get(timeout=5) == 4

        # The old key dropped everywhere: a message still signed with it is refused.
        app.conf.task_signing_key = [OLD]
        stale = await app.send_task("sig.add", (3, 3))
        app.conf.task_signing_key = NEW
        async with Worker(app, concurrency=2) as worker:
            await worker.wait_processed(1)
        reasons = await dead_reasons(app, queue)
        assert reasons[stale.id].startswith("bad signature on message: not made by the key")
    finally:
        await app.close()


# -- result records --------------------------------------------------------------------------


async def forge(app: Aqueue, task_id: str, change: Callable[[bytes], bytes]) -> None:
    """Rewrite the stored record of ``task_id`` with ``change``, as someone with write access
    to the result backend could."""
    backend = await app.result_backend()
    [raw] = await backend.get_many([task_id])
    assert raw is not None
    await backend.store([(task_id, change(raw))], None)


async def test_a_tampered_or_unsigned_result_record_raises_security_error(
    app: Aqueue, queue: str
) -> None:
    async with Worker(app, concurrency=2):
        r = await app.send_task("sig.add", (20, 1))
        assert await r.get(timeout=20) == 21
    backend = await app.result_backend()
    [raw] = await backend.get_many([r.id])
    assert raw is not None and raw.startswith(b'{"hmac":"')

    await forge(app, r.id, lambda raw: raw.replace(b'"result":21', b'"result":99'))
    forged = app.AsyncResult(r.id)
    with pytest.raises(SecurityError, match="bad signature on result record") as refused:
        await forged.get(timeout=5)
    assert f"sig.add[{r.id}]" in str(refused.value)
    with pytest.raises(SecurityError):
        await forged.state()
    with pytest.raises(SecurityError):
        await forged.info()
    assert forged.result is None  # the forged value never reached the handle

    # Written by something without the key (or with the signature cut off): unsigned.
    plain = ResultRecord(r.id, "SUCCESS", 99, None, 1.0, 0, "sig.add").encode()
    await backend.store([(r.id, plain)], None)
    with pytest.raises(SecurityError, match="unsigned result record"):
        await app.AsyncResult(r.id).get(timeout=5)

    # Another task's genuine record, copied under this id: signed, but not this task's.
    other = await app.send_task("sig.add", (500, 500))
    async with Worker(app, concurrency=2):
        assert await other.get(timeout=20) == 1000
    [copied] = await backend.get_many([other.id])
    assert copied is not None
    await backend.store([(r.id, copied)], None)
    with pytest.raises(SecurityError, match=f"read for task {r.id} was written for task"):
        await app.AsyncResult(r.id).get(timeout=5)


async def test_a_waiter_gets_security_error_for_a_forged_record_arriving_while_it_waits(
    app: Aqueue,
) -> None:
    """No worker runs: the "result" is stored by someone without the key while a client waits."""
    task_id = f"waited-{uuid.uuid4().hex[:8]}"
    waiting = asyncio.create_task(app.AsyncResult(task_id).get(timeout=20))
    backend = await app.result_backend()
    plain = ResultRecord(task_id, "SUCCESS", 99, None, 1.0, 0, "sig.add").encode()
    await backend.store([(task_id, plain)], None)
    with pytest.raises(SecurityError, match="unsigned result record"):
        await waiting


async def test_a_forged_group_record_is_refused(app: Aqueue) -> None:
    async with Worker(app, concurrency=4):
        g = await group(app.tasks["sig.add"].s(i, i) for i in range(3)).delay()
        assert await g.get(timeout=20) == [0, 2, 4]
    meta = f"group:{g.id}"
    backend = await app.result_backend()
    [raw] = await backend.get_many([meta])
    assert raw is not None and raw.startswith(b'{"hmac":"')
    await backend.store([(meta, b'{"id":"%s","results":["x"]}' % g.id.encode())], None)
    with pytest.raises(SecurityError, match="unsigned result record"):
        await app.GroupResult(g.id).get(timeout=5)
    # Another group's genuine record copied under this group's id.
    async with Worker(app, concurrency=4):
        other = await group(app.tasks["sig.add"].s(i, 1) for i in range(2)).delay()
        assert await other.get(timeout=20) == [1, 2]
    [copied] = await backend.get_many([f"group:{other.id}"])
    assert copied is not None
    await backend.store([(meta, copied)], None)
    with pytest.raises(SecurityError, match="written for another group"):
        await app.GroupResult(g.id).get(timeout=5)


# -- what the worker and beat send are signed too --------------------------------------------


async def test_chain_link_chord_and_retry_messages_are_signed_and_run(
    app: Aqueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = record_published(app, monkeypatch)
    add, tsum, flaky = app.tasks["sig.add"], app.tasks["sig.tsum"], app.tasks["sig.flaky"]
    async with Worker(app, concurrency=8) as worker:
        chained = await chain(add.s(1, 2), add.s(3), add.s(4)).delay()
        linked = await add.apply_async((1, 1), link=add.s(10))
        chorded = await chord([add.s(i, i) for i in range(4)], tsum.s()).delay()
        retried = await flaky.delay(2)
        assert await chained.get(timeout=20) == 10
        assert await chorded.get(timeout=20) == 12
        assert await retried.get(timeout=20) == 2
        assert await linked.get(timeout=20) == 2
        # chain 3, link 2, chord 4 + body, flaky 1 + 2 retries
        await worker.wait_processed(3 + 2 + 5 + 3)
    tasks = [decode(body).task for body in sent]
    assert tasks.count("sig.flaky") == 3  # the first send and two retries
    assert tasks.count("sig.tsum") == 1  # the chord's body, sent by the worker
    assert tasks.count("sig.add") == 3 + 2 + 4
    check = signing(KEY).messages
    for body in sent:
        check.verify(body)  # every one, the worker's own sends included


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_beat_sends_signed_messages_and_skips_stored_entries_not_signed(
    queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app("memory://", queue, KEY)
    clock = Clock(1_700_000_003.0)
    store = MemoryStore(clock=clock)
    try:
        app.conf.beat_schedule = {
            "static": {"task": "sig.add", "schedule": 10, "args": (1, 1)},
        }
        for name, args, sign in (("stored", [2, 2], True), ("planted", [6, 6], False)):
            spec = {"task": "sig.add", "schedule": 10, "args": args}
            entry = replace(parse_entry(app, name, spec), dynamic=True, since=clock.now)
            data = entry.encode()
            await store.put(name, signing(KEY).beat.sign(data) if sign else data)
        beat = Beat(app, clock=clock, store=store)
        with caplog.at_level(logging.ERROR, logger="aqueue.beat"):
            await beat.tick()
            clock.now += 7  # the next 10-second tick
            await beat.tick()
        broker = await app.broker()
        deliveries = await broker.fetch([queue], 100, 0)
        for d in deliveries:
            signing(KEY).messages.verify(d.body)
        assert sorted(decode(d.body).args for d in deliveries) == [(1, 1), (2, 2)]
        [skipped] = [r.getMessage() for r in caplog.records if "planted" in r.getMessage()]
        assert "unsigned stored beat entry" in skipped

        # app.beat.add signs what it stores.
        await app.beat.add("added", task="sig.add", schedule=10, args=(3, 3))
        stored = (await (await app.beat_store()).load()).entries["added"]
        signing(KEY).beat.verify(stored)
        assert [e.name for e in await app.beat.list()] == ["added", "static"]
    finally:
        await app.close()


# -- the setting ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("short", "at least 16 bytes, not 5"),
        ([], "at least one key"),
        ([KEY, 7], "not int"),
        (12345, "not int"),
    ],
)
def test_bad_keys_are_refused_without_showing_them(value: Any, error: str) -> None:
    app = Aqueue("signing", broker="memory://")
    with pytest.raises(ConfigurationError, match=error) as refused:
        app.conf.task_signing_key = value
    assert KEY not in str(refused.value)
    assert app.conf.signing is None


def test_the_key_stays_out_of_repr_and_is_set_like_any_setting() -> None:
    app = Aqueue("signing", broker="memory://", task_signing_key=KEY)
    made = app.conf.signing
    assert made is not None
    assert KEY not in repr(app.conf) and KEY not in repr(made)
    app.conf.update(task_signing_key=[NEW, OLD])
    assert app.conf["task_signing_key"] == [NEW, OLD]
    rotated = app.conf.signing
    assert rotated is not None and rotated is not made and rotated.messages.count == 2
    app.conf.task_signing_key = None
    assert app.conf.get("task_signing_key") is None
    with pytest.raises(UnknownSetting):
        app.conf["signing"] = signing(KEY)  # derived from the key, not a setting


def test_each_kind_signs_with_its_own_key() -> None:
    """A signed record is never accepted as a message (nor a message as a record)."""
    keys = signing(KEY)
    record = keys.results.sign(b'{"task_id":"x","status":"SUCCESS","result":1}')
    with pytest.raises(SecurityError, match="bad signature on message"):
        keys.messages.verify(record)
    keys.results.verify(record)
    with pytest.raises(ValueError, match="JSON object"):
        keys.messages.sign(b"[1, 2]")


async def test_a_chord_header_record_forged_before_the_body_runs_fails_the_chord(
    queue: str,
) -> None:
    """The worker checks the header's records too: a forged value never reaches the body."""
    app = make_app("memory://", queue, KEY)
    gate = GATES[queue] = asyncio.Event()
    first, second = f"first-{queue}", f"second-{queue}"
    try:
        add, tsum, gated = app.tasks["sig.add"], app.tasks["sig.tsum"], app.tasks["sig.gated"]
        header = [add.s(1, 1).set(task_id=first), gated.s(queue).set(task_id=second)]
        c = await chord(header, tsum.s()).delay()
        async with Worker(app, concurrency=4):
            assert await app.AsyncResult(first).get(timeout=10) == 2
            await forge(app, first, lambda raw: raw.replace(b'"result":2', b'"result":50'))
            gate.set()  # the second member finishes and triggers the body
            assert await app.AsyncResult(second).get(timeout=10) == 1
            with pytest.raises(ChordError, match="bad signature on result record"):
                await c.get(timeout=10)
    finally:
        del GATES[queue]
        await app.close()
