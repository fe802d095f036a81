"""Dead-letter replays that meet other work: a replay from another process at the same moment,
and a worker that runs a replayed task at once. Nothing may be lost: every letter is sent back
or still dead, and a replayed task's new result stands."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from aqueue import Worker
from aqueue.control.queues import replay_dead_letters
from aqueue.message import decode_envelope
from aqueue.transports import Broker, Outgoing
from tests.apps.ops_tasks import SHARED_TRANSPORTS, OpsTasks, build, dead_letter_all, url_for

pytestmark = pytest.mark.timeout(60)


async def drain_ids(broker: Broker, queue: str) -> list[str]:
    """The task ids of every message waiting in ``queue`` (fetched and acked)."""
    ids: list[str] = []
    while deliveries := await broker.fetch([queue], 100, 1.0):
        ids += [decode_envelope(d.body)["id"] for d in deliveries]
        await broker.ack(deliveries)
    return ids


@pytest.mark.parametrize("transport", [*SHARED_TRANSPORTS, "amqp"])
async def test_replays_from_two_processes_at_once_lose_no_dead_letter(
    transport: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process's replay runs while this one has read its letters and not yet sent
    # them: an event loop in another thread, with its own app and connections, as a second
    # process would have. Each replays the oldest two of four letters.
    url = url_for(transport, request, tmp_path)
    queue = f"q-{uuid.uuid4().hex[:12]}"
    here = build(url, queue)
    broker = await here.app.broker()
    sent = {(await here.add.delay(i, i)).id for i in range(4)}
    await dead_letter_all(broker, queue, 4)

    def other_process() -> int:
        async def replay() -> int:
            there = build(url, queue)
            try:
                return await replay_dead_letters(there.app, queue, 2)
            finally:
                await there.app.close()

        return asyncio.run(replay())

    publish = broker.publish
    others: list[int] = []

    async def publish_after_the_other_replay(messages: Sequence[Outgoing]) -> None:
        if not others:
            others.append(await asyncio.to_thread(other_process))
        await publish(messages)

    monkeypatch.setattr(broker, "publish", publish_after_the_other_replay)
    try:
        assert await replay_dead_letters(here.app, queue, 2) == 2
        assert others == [2]
        monkeypatch.undo()
        waiting = await drain_ids(broker, queue)
        dead = [decode_envelope(letter.body)["id"] for letter in await broker.dead_letters(queue)]
        # Every letter is sent back or still dead; none is both, and none is gone.
        assert set(waiting) | set(dead) == sent
        assert not set(waiting) & set(dead)
        if transport == "amqp":  # RabbitMQ hands each letter to one of the two replays
            assert sorted(waiting) == sorted(sent) and dead == []
    finally:
        await here.app.close()


async def test_a_replayed_task_that_runs_at_once_keeps_its_new_result(
    t: OpsTasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The replay forgets the letter's stored record. Had it done so after publishing, a
    # worker that ran the task in between would have its SUCCESS deleted: the result PENDING
    # for ever. The backend's delete here waits for that run whenever the letter is already
    # published, which forces the interleaving.
    queue = t.app.conf.task_default_queue
    broker = await t.app.broker()
    backend = await t.app.result_backend()
    handle = await t.add.delay(20, 22)
    await dead_letter_all(broker, queue, 1)
    published = asyncio.Event()
    publish, delete = broker.publish, backend.delete

    async def noted_publish(messages: Sequence[Outgoing]) -> None:
        await publish(messages)
        published.set()

    async def delete_after_the_run(ids: Sequence[str]) -> None:
        if published.is_set():
            await t.app.AsyncResult(handle.id).get(timeout=10)
        await delete(ids)

    monkeypatch.setattr(broker, "publish", noted_publish)
    monkeypatch.setattr(backend, "delete", delete_after_the_run)
    async with Worker(t.app, queues=[queue], shutdown_timeout=5):
        assert await replay_dead_letters(t.app, queue) == 1
        assert published.is_set()
        assert await handle.get(timeout=10) == 42
    assert (await t.app.AsyncResult(handle.id).state()) == "SUCCESS"
