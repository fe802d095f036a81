"""Canvas edge cases: bad input in a canvas must give a clear error (before anything is sent,
or as the workflow's failure) and never a chain or chord result that waits forever.

The tests with workers run on every transport (``transport_url``, select one with ``-k``);
the tests that refuse a canvas before sending need only a broker to prove nothing was sent.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aqueue import Worker, chord, group
from aqueue.canvas.dispatch import Plan, result_for
from aqueue.exceptions import BrokerConnectionError, ChordError, ConfigurationError
from aqueue.message import Message
from aqueue.middleware import Middleware, PublishNext
from tests.apps import canvas_tasks
from tests.apps.canvas_tasks import CanvasTasks

pytestmark = pytest.mark.timeout(60)

WAIT = 20.0  # seconds any single result may take
STUCK = 3.0  # seconds after which a result that should have been decided is taken as stuck


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[CanvasTasks]:
    """The canvas tasks on a fresh SQLite broker: for canvases refused before sending."""
    tasks = canvas_tasks.build(f"sqlite:///{tmp_path}/edges.db", queue="edges")
    yield tasks
    await tasks.app.close()


async def nothing_sent(t: CanvasTasks) -> bool:
    broker = await t.app.broker()
    return await broker.fetch([t.app.conf.task_default_queue], 10, 0.1) == []


# -- one task id for two tasks -----------------------------------------------------------------


async def test_a_task_id_used_twice_in_a_canvas_is_refused(local: CanvasTasks) -> None:
    """A frozen signature used twice in a chord header gave two messages with one id: the
    chord counts distinct ids, so it waited forever for a second member. In a group, the two
    calls overwrote one result, so both members read the same value."""
    t = local
    twice = t.add.s(1, 1)
    twice.freeze()
    with pytest.raises(ConfigurationError, match=f"{twice.id}.*twice"):
        await chord([twice, twice], t.tsum.s()).delay()
    with pytest.raises(ConfigurationError, match="twice"):
        await group(twice.clone((5,)), twice.clone((6,))).delay()
    with pytest.raises(ConfigurationError, match="twice"):
        await (twice | t.add.s(1) | twice.clone()).delay()
    assert await nothing_sent(t)
    # Each send of a canvas that was not frozen gets new ids, so sending one twice is fine.
    workflow = chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s())
    await workflow.delay()
    await workflow.delay()


# -- bad option values on steps a worker sends -------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("countdown", "soon", "countdown"),
        ("priority", 99, "priority"),
        ("eta", "tomorrow", "eta"),
        ("expires", "never", "expires"),
        ("headers", "x", "headers"),
    ],
)
async def test_bad_option_on_a_later_step_is_refused_before_sending(
    local: CanvasTasks, option: str, value: Any, match: str
) -> None:
    """Later chain steps and a chord's body are sent by a worker: a bad option value there
    made that worker dead-letter the step before it (which had succeeded) and the result of
    the chain or chord stay PENDING for ever. It is refused when the canvas is sent."""
    t = local
    bad = t.add.s(1).set(**{option: value})
    with pytest.raises(ConfigurationError, match=match):
        await (t.add.s(1, 1) | bad).delay()
    with pytest.raises(ConfigurationError, match=match):
        await chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s().set(**{option: value})).delay()
    with pytest.raises(ConfigurationError, match=match):
        await group(t.add.s(1, 1), t.add.s(1, 1) | bad).delay()
    # A callback is sent by the worker after the task succeeds, before the chain goes on.
    with pytest.raises(ConfigurationError, match=match):
        await (t.add.s(1, 1).set(link=bad) | t.add.s(1)).delay()
    with pytest.raises(ConfigurationError, match=match):
        await chord([t.add.s(1, 1)], t.tsum.s().set(link_error=[bad])).delay()
    assert await nothing_sent(t)


async def test_a_callback_that_is_not_a_task_signature_is_refused(local: CanvasTasks) -> None:
    """A chord body's callbacks are sent by the worker that completes the header: a chain
    there made it give up on the header task's message, and the chord waited for ever."""
    t = local
    body = t.tsum.s().set(link=t.add.s(1) | t.add.s(2))
    with pytest.raises(ConfigurationError, match="task signatures"):
        await chord([t.add.s(1, 1)], body).delay()
    with pytest.raises(ConfigurationError, match="task signatures"):
        await (t.add.s(1, 1) | t.add.s(1).set(link_error=group(t.add.s(1)))).delay()
    assert await nothing_sent(t)


async def test_bad_option_met_by_a_worker_fails_the_chain(c: CanvasTasks) -> None:
    """A chain whose next step cannot be built (a bad option in a message from a client that
    did not check it) fails with a clear error; the step that succeeded is acked, not
    dead-lettered."""
    chained = c.add.s(1, 1) | c.add.s(1).set(countdown="soon") | c.add.s(1)
    chained.assign_ids()
    result = result_for(c.app, chained)
    plan = Plan(c.app)
    plan.add(chained)  # as a client that does not check later steps would send it
    async with Worker(c.app, concurrency=2, shutdown_timeout=5) as w:
        await plan.run()
        with pytest.raises(ConfigurationError, match="soon"):
            await result.get(timeout=WAIT)
        await asyncio.wait_for(w.wait_processed(1), WAIT)
    assert result.parent is not None and result.parent.parent is not None
    assert await result.parent.parent.get(timeout=WAIT) == 2
    dead = await (await c.app.broker()).dead_letters(c.app.conf.task_default_queue)
    assert dead == []


# -- a chord body that cannot be sent -----------------------------------------------------------


async def test_chord_body_too_large_fails_the_chord(transport_url: str) -> None:
    """Each header result is small, their list is over task_max_message_size: the body cannot
    be sent, and the chord's result must say so (ChordError) rather than wait for ever."""
    t = canvas_tasks.build(
        transport_url, queue=f"q-{uuid.uuid4().hex[:12]}", task_max_message_size=2000
    )
    try:
        async with Worker(t.app, concurrency=4, shutdown_timeout=5):
            header = [t.add.s("x" * 600, str(i)) for i in range(4)]
            r = await chord(header, t.record_body.s(uuid.uuid4().hex)).delay()
            with pytest.raises(ChordError):
                await r.get(timeout=STUCK)
    finally:
        await t.app.close()


class _FailBodyOnce(Middleware):
    """Publishing the chord body fails once, as a broker that is away for a moment."""

    def __init__(self) -> None:
        self.failed = asyncio.Event()

    async def publish(self, messages: list[Message], call_next: PublishNext) -> None:
        if not self.failed.is_set() and any(m.task == "canvas.record_body" for m in messages):
            self.failed.set()
            raise BrokerConnectionError("the broker is away for a moment")
        await call_next(messages)


async def test_chord_body_is_sent_after_a_broker_error(shared_url: str) -> None:
    """The body's publish fails once (BrokerConnectionError) after the completing member took
    the claim, which a redelivery of its message could not take again: the claimer must send
    the body itself once the broker takes it, and the body runs once."""
    tok = uuid.uuid4().hex
    t = canvas_tasks.build(
        shared_url,
        queue=f"q-{uuid.uuid4().hex[:12]}",
        broker_transport_options={"visibility_timeout": 1},
    )
    failing = _FailBodyOnce()
    t.app.add_middleware(failing)
    try:
        async with Worker(t.app, concurrency=4, shutdown_timeout=5):
            r = await chord([t.add.s(1, 1), t.add.s(2, 2)], t.record_body.s(tok)).delay()
            assert await r.get(timeout=STUCK + 2) == 2
            assert failing.failed.is_set()
        assert canvas_tasks.BODY_RUNS[tok] == 1
    finally:
        await t.app.close()


class _RefuseStep(Middleware):
    """The app's publish middleware refuses a chain's second step (not a broker error)."""

    async def publish(self, messages: list[Message], call_next: PublishNext) -> None:
        if any(m.task == "canvas.tsum" for m in messages):
            raise RuntimeError("refused by policy")
        await call_next(messages)


async def test_a_chain_step_refused_by_middleware_fails_the_chain(transport_url: str) -> None:
    """A worker sends the next step of a chain; the app's middleware refusing it (any error but
    the broker's) will refuse it again on every try. The chain must fail with that error and
    the step before it stay a success, not be dead-lettered as a worker failure."""
    t = canvas_tasks.build(transport_url, queue=f"q-{uuid.uuid4().hex[:12]}")
    t.app.add_middleware(_RefuseStep())
    try:
        async with Worker(t.app, concurrency=4, shutdown_timeout=5):
            r = await (t.add.s(1, 1) | t.tsum.s()).delay()
            with pytest.raises(RuntimeError, match="refused by policy"):
                await r.get(timeout=WAIT)
            assert await r.parent.get(timeout=WAIT) == 2  # type: ignore[union-attr]
    finally:
        await t.app.close()
