"""Canvas under faults: a chord's body runs exactly once (or the chord fails with a
ChordError), and a chain's next step is never lost, when the broker or the result backend
fails for a moment in the middle of a workflow.

Faults are made on the real servers' clients: one call of the app's result backend (or one
publish, through the app's middleware) raises ``BrokerConnectionError`` once, as a dropped
connection would. Runs on every transport several processes can share (``shared_url``); on
AMQP a message left unacked comes back only once the worker's channel closes, so a step left
to a redelivery there waits far past these tests' timeouts.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from aqueue import Worker, chord
from aqueue.exceptions import BrokerConnectionError, ChordError
from aqueue.message import Message
from aqueue.middleware import Middleware, PublishNext
from aqueue.results.group import meta_key
from tests.apps import canvas_tasks
from tests.apps.canvas_tasks import CanvasTasks

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0  # seconds any single result may take


@pytest.fixture
async def t(shared_url: str) -> AsyncIterator[CanvasTasks]:
    """Canvas tasks on a fresh queue; a leased message is delivered again after 1 second."""
    tasks = canvas_tasks.build(
        shared_url,
        queue=f"q-{uuid.uuid4().hex[:12]}",
        broker_transport_options={"visibility_timeout": 1},
    )
    yield tasks
    await tasks.app.close()


async def fail_once(t: CanvasTasks, method: str, when: Callable[[Any], bool]) -> asyncio.Event:
    """Make the app's result backend's ``method`` raise BrokerConnectionError the first time
    its first argument matches ``when``; the event is set once it has."""
    backend = await t.app.result_backend()
    real = getattr(backend, method)
    failed = asyncio.Event()

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        if not failed.is_set() and when(args[0]):
            failed.set()
            raise BrokerConnectionError(f"{method}: the result backend is away for a moment")
        return await real(*args, **kwargs)

    setattr(backend, method, flaky)
    return failed


async def fail_storing_once(t: CanvasTasks, task_id: str) -> asyncio.Event:
    """:func:`fail_once` for the first store of ``task_id``'s record. A worker stores a chain's
    or chord's failure with ``store_waited`` where the backend keeps the sets of tasks sent
    after= others (they fail too), else with ``store``."""
    backend = await t.app.result_backend()
    method = "store_waited" if hasattr(backend, "store_waited") else "store"
    return await fail_once(t, method, lambda records: task_id in [k for k, _ in records])


async def test_chord_body_is_sent_after_a_backend_error_reading_the_header(
    t: CanvasTasks,
) -> None:
    """The member that completes the header took the claim, then reading the header's
    results failed once (the backend away for a moment). Its message was left for a
    redelivery, which cannot take the claim again: the body never ran and the chord's result
    stayed PENDING for ever. The claimer must read again and send the body, once."""
    tok = uuid.uuid4().hex
    header = [t.add.s(1, 1), t.add.s(2, 2)]
    workflow = chord(header, t.record_body.s(tok))
    workflow.freeze()
    group_id = workflow.header.id
    failed = await fail_once(t, "get_many", lambda ids: meta_key(str(group_id)) in ids)
    async with Worker(t.app, concurrency=4, shutdown_timeout=5):
        r = await workflow.delay()
        assert await r.get(timeout=WAIT) == 2
        assert failed.is_set()
    assert canvas_tasks.BODY_RUNS[tok] == 1


async def test_chord_failure_is_stored_after_a_backend_error(t: CanvasTasks) -> None:
    """A header member failed and took the claim to fail the chord; storing the body's
    ChordError failed once. The member's message was left for a redelivery, whose run cannot
    take the claim again: the chord's result stayed PENDING for ever, and its errback never
    ran. The claimer must store the failure itself, and run the errback once."""
    tok = uuid.uuid4().hex
    body = t.record_body.s(tok).set(link_error=[t.errback.s(token=tok)])
    workflow = chord([t.add.s(1, 1), t.fail.s("boom")], body)
    workflow.freeze()
    body_id = workflow.body.id
    failed = await fail_storing_once(t, body_id)
    async with Worker(t.app, concurrency=4, shutdown_timeout=5):
        r = await workflow.delay()
        with pytest.raises(ChordError, match="boom"):
            await r.get(timeout=WAIT)
        assert failed.is_set()
    assert canvas_tasks.BODY_RUNS[tok] == 0
    assert [rid for rid, _ in canvas_tasks.ERRBACKS[tok]] == [body_id]


class _FailOnce(Middleware):
    """Publishing a message of task ``name`` fails once, as a broker away for a moment."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.failed = asyncio.Event()

    async def publish(self, messages: list[Message], call_next: PublishNext) -> None:
        if not self.failed.is_set() and any(m.task == self.name for m in messages):
            self.failed.set()
            raise BrokerConnectionError("the broker is away for a moment")
        await call_next(messages)


async def test_chain_step_is_sent_after_a_broker_error(t: CanvasTasks) -> None:
    """The publish of a chain's next step fails once: the step before it is delivered again
    and the chain goes on; its next step runs (once per send) and the chain's result comes."""
    failing = _FailOnce("canvas.tsum")
    t.app.add_middleware(failing)
    async with Worker(t.app, concurrency=4, shutdown_timeout=5):
        r = await (t.add.s([1], [2]) | t.tsum.s() | t.add.s(10)).delay()
        assert await r.get(timeout=WAIT) == 13
        assert failing.failed.is_set()


async def test_chord_claim_whose_reply_was_lost_still_sends_the_body(t: CanvasTasks) -> None:
    """The completing member's claim reached the result backend but its reply was lost (the
    connection dropped after the command ran). Left to a redelivery, whose run claims with a
    token of its own, the claim looked taken by someone else: the body never ran. The run
    that made the claim must ask again with its own token, win, and send the body once."""
    tok = uuid.uuid4().hex
    workflow = chord([t.add.s(1, 1), t.add.s(2, 2)], t.record_body.s(tok))
    workflow.freeze()
    claim = f"chord:{workflow.header.id}:claim"
    backend = await t.app.result_backend()
    real = backend.add_member
    lost = asyncio.Event()

    async def reply_lost(key: str, member: str, expires: float | None) -> int:
        size = await real(key, member, expires)
        if key == claim and not lost.is_set():
            lost.set()
            raise BrokerConnectionError("add_member: connection lost before the reply")
        return size

    backend.add_member = reply_lost  # type: ignore[method-assign]
    async with Worker(t.app, concurrency=4, shutdown_timeout=5):
        r = await workflow.delay()
        assert await r.get(timeout=WAIT) == 2
        assert lost.is_set()
    assert canvas_tasks.BODY_RUNS[tok] == 1


async def test_chain_failure_is_stored_after_a_backend_error(t: CanvasTasks) -> None:
    """A chain's step failed; storing the failure for the chain's last step failed once. Left
    to a redelivery of the failed step (on AMQP: only once the worker's channel closes), the
    chain's result stayed PENDING. The worker must store it itself."""
    workflow = t.fail.s("boom") | t.add.s(1) | t.add.s(2)
    workflow.freeze()
    final_id = workflow.tasks[-1].id
    failed = await fail_storing_once(t, final_id)
    async with Worker(t.app, concurrency=4, shutdown_timeout=5):
        r = await workflow.delay()
        with pytest.raises(ValueError, match="boom"):
            await r.get(timeout=WAIT)
        assert failed.is_set()


async def test_chord_member_is_counted_after_a_backend_error(t: CanvasTasks) -> None:
    """Counting a header member that succeeded failed once (the backend away for a moment).
    Left to a redelivery of the member (on AMQP: only once the worker's channel closes), the
    chord waited; the worker must count it itself, and the body run once."""
    tok = uuid.uuid4().hex
    workflow = chord([t.add.s(1, 1), t.add.s(2, 2)], t.record_body.s(tok))
    workflow.freeze()
    members = f"chord:{workflow.header.id}"
    failed = await fail_once(t, "add_member", lambda key: key == members)
    async with Worker(t.app, concurrency=4, shutdown_timeout=5):
        r = await workflow.delay()
        assert await r.get(timeout=WAIT) == 2
        assert failed.is_set()
    assert canvas_tasks.BODY_RUNS[tok] == 1
