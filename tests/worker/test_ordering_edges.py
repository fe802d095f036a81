"""Edges of ordering in the worker, on real servers (SQLite and Redis): tasks sent ``after=``
others (aqueue.dependencies) whose release meets a failing publish, and signal receivers that
raise or are connected per sender (aqueue.signals)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aqueue import Worker, signals
from aqueue.exceptions import BrokerConnectionError
from aqueue.message import Message
from aqueue.middleware import Middleware, PublishNext
from aqueue.signals import Signal
from tests.apps import semantics_tasks as sem
from tests.apps.semantics_tasks import SemanticsTasks
from tests.conftest import _url

pytestmark = pytest.mark.timeout(60)


class Refuses(Middleware):
    """Raises ``error`` instead of publishing the first ``times`` messages of task ``task``."""

    def __init__(self, task: str, error: Exception, times: int = 1) -> None:
        self.task = task
        self.error = error
        self.times = times
        self.refused: list[str] = []

    async def publish(self, messages: list[Message], call_next: PublishNext) -> None:
        if self.times > 0 and any(m.task == self.task for m in messages):
            self.times -= 1
            self.refused.extend(m.id for m in messages if m.task == self.task)
            raise self.error
        await call_next(messages)


@pytest.fixture(params=["sqlite", "redis"])
async def st(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SemanticsTasks]:
    url = _url(request.param, request, tmp_path, "ordering")
    tasks = sem.build(url, queue=f"q-{uuid.uuid4().hex[:12]}")
    sem.ORDER.clear()
    yield tasks
    await tasks.app.close()


async def test_a_held_send_retried_after_its_release_failed_runs(st: SemanticsTasks) -> None:
    # The dependency is done when the dependent is sent: the send itself releases it, and that
    # publish fails. The send raises; sent again with the same id (what task_id= is for), the
    # dependent must run - not stay held behind the claim the failed release took.
    refuse = Refuses("sem.step", BrokerConnectionError("broker down for a moment"), times=0)
    st.app.add_middleware(refuse)
    async with Worker(st.app, concurrency=2, shutdown_timeout=5):
        a = await st.step.delay("a", 1)
        assert await a.get(timeout=10) == 1
        refuse.times = 1  # the next publish of sem.step: the release of the dependent
        task_id = f"d-{uuid.uuid4().hex}"
        with pytest.raises(BrokerConnectionError):
            await st.step.apply_async(("d", 1), after=[a], task_id=task_id)
        assert refuse.refused == [task_id]
        d = await st.step.apply_async(("d", 1), after=[a], task_id=task_id)
        assert await d.get(timeout=10) == 2
    assert sem.ORDER == ["a", "d"]


async def test_a_release_refused_by_middleware_fails_the_dependent(st: SemanticsTasks) -> None:
    # A worker releases the dependent when the dependency succeeds, and the app's middleware
    # refuses that publish: the dependent must end (failed, with the middleware's error), not
    # stay held forever; the dependency's success stands and its message is not dead-lettered.
    refuse = Refuses("sem.step", ValueError("tenant header missing"))
    st.app.add_middleware(refuse)
    a = await st.gather.delay("a")
    d = await st.step.apply_async(("d", 1), after=[a])
    dead: list[Any] = []
    async with Worker(st.app, concurrency=2, shutdown_timeout=5) as worker:

        def lettered(sender: Any, **kwargs: Any) -> None:
            dead.append(kwargs)

        signals.task_dead_lettered.connect(lettered)
        try:
            assert await a.get(timeout=10) == []
            with pytest.raises(Exception, match="tenant header missing"):
                await d.get(timeout=10)
            await worker.wait_processed(1)
        finally:
            signals.task_dead_lettered.disconnect(lettered)
    assert refuse.refused == [d.id]
    assert dead == []
    assert sem.ORDER == ["a"]


async def test_a_receiver_raising_cancelled_error_drops_no_message(st: SemanticsTasks) -> None:
    # A receiver that lets out a CancelledError of its own (it awaited something another part
    # of the program cancelled) while the worker is not stopping: logged like any receiver's
    # error; the message still runs, nothing is dead-lettered.
    calls: list[str] = []
    dead: list[Any] = []

    async def received(sender: Any, request: Any, **kwargs: Any) -> None:
        calls.append(request.id)
        raise asyncio.CancelledError

    def lettered(sender: Any, **kwargs: Any) -> None:
        dead.append(kwargs)

    signals.task_received.connect(received)
    signals.task_dead_lettered.connect(lettered)
    try:
        a = await st.step.delay("a", 1)
        async with Worker(st.app, concurrency=1, shutdown_timeout=5):
            assert await a.get(timeout=10) == 1
    finally:
        signals.task_received.disconnect(received)
        signals.task_dead_lettered.disconnect(lettered)
    assert calls == [a.id]
    assert dead == []
    assert sem.ORDER == ["a"]


async def test_one_receiver_connected_for_two_senders_hears_both() -> None:
    # As in Celery, a receiver is connected per (receiver, sender): connecting it for a second
    # task must not be a no-op, or it never hears that task.
    signal = Signal("probe")
    heard: list[Any] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        heard.append(sender)

    signal.connect(receiver, sender="proj.a")
    signal.connect(receiver, sender="proj.b")
    signal.connect(receiver, sender="proj.b")  # again: still once
    await signal.send("proj.a")
    await signal.send("proj.b")
    await signal.send("proj.c")
    assert heard == ["proj.a", "proj.b"]
    uid = Signal("uid")
    uid.connect(receiver, sender="proj.a", dispatch_uid="r")
    uid.connect(receiver, sender="proj.b", dispatch_uid="r")
    uid.connect(receiver, sender="proj.b", dispatch_uid="r")
    heard.clear()
    await uid.send("proj.b")
    assert heard == ["proj.b"]


class Holds(Middleware):
    """Holds the publish of task ``task``'s messages until :attr:`go` is set."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.holding = asyncio.Event()
        self.go = asyncio.Event()
        self.held: list[str] = []

    async def publish(self, messages: list[Message], call_next: PublishNext) -> None:
        if any(m.task == self.task for m in messages):
            self.held.extend(m.id for m in messages)
            self.holding.set()
            await self.go.wait()
        await call_next(messages)


async def test_a_release_cancelled_while_it_publishes_still_releases_the_dependent(
    st: SemanticsTasks,
) -> None:
    # The dependency is done when the dependent is sent: the send claims the dependent and
    # publishes it. Cancelled there (the sender gave up, a shutdown), the claim is taken and
    # nothing else will ever publish the dependent: the release must go on to its end.
    async with Worker(st.app, concurrency=2, shutdown_timeout=5):
        a = await st.step.delay("a", 1)
        assert await a.get(timeout=10) == 1
        hold = Holds("sem.step")
        st.app.add_middleware(hold)
        send = asyncio.ensure_future(st.step.apply_async(("d", 1), after=[a]))
        await asyncio.wait_for(hold.holding.wait(), 10)
        [task_id] = hold.held
        send.cancel()
        with pytest.raises(asyncio.CancelledError):
            await send
        hold.go.set()
        assert await st.app.AsyncResult(task_id).get(timeout=10) == 2
    assert sem.ORDER == ["a", "d"]


async def test_a_link_whose_publish_fails_once_is_sent_again(st: SemanticsTasks) -> None:
    # The parent succeeded and its result is stored; the publish of its link meets a broker
    # that is away for a moment. The link must still be sent (tried again, as a chain's next
    # step is), not logged and dropped while the parent's message is acked.
    refuse = Refuses("sem.step", BrokerConnectionError("broker down for a moment"), times=0)
    st.app.add_middleware(refuse)
    link_id = f"l-{uuid.uuid4().hex}"
    # A link gets the parent's result first: step(1, 5), label 1.
    a = await st.step.apply_async(("a", 1), link=st.step.s(5).set(task_id=link_id))
    refuse.times = 1  # the next publish of sem.step: the link's
    async with Worker(st.app, concurrency=2, shutdown_timeout=5):
        assert await a.get(timeout=10) == 1
        assert await st.app.AsyncResult(link_id).get(timeout=10) == 5
    assert refuse.refused == [link_id]
    assert sem.ORDER == ["a", 1]
