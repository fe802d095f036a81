"""A send that gives up is not published afterwards.

The first send on an event loop connects first and has what is left of
``broker_connection_timeout`` to publish; its publish is shared with the other sends of the same
turn (one broker round trip). When that time runs out, the caller gets
:class:`~aqueue.exceptions.BrokerConnectionError`, and the shared publish must stop with it: a
message stored after its caller was told it was not would be sent again by a caller that retries,
and run twice.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aqueue import Aqueue
from aqueue.exceptions import BrokerConnectionError
from aqueue.message import decode

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def silent_url() -> AsyncIterator[str]:
    """A ``redis://`` URL of a server that takes connections and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # kept open, never answered

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"redis://127.0.0.1:{port}/0"
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_a_first_send_that_gives_up_is_not_published_afterwards(
    redis_server: str, silent_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The result backend does not answer, so the first send spends half its time on it and
    goes on without a reply channel; the broker then answers its publish late. The caller gets
    BrokerConnectionError once broker_connection_timeout has passed, and the message must not
    be stored after that."""
    app = Aqueue(
        "deadline",
        broker=f"{redis_server}/0",
        backend=silent_url,
        broker_connection_timeout=1.0,
        task_default_queue=f"deadline-{uuid.uuid4().hex}",
    )
    try:

        @app.task(name="deadline.add")
        async def add(x: int) -> int:
            return x

        broker: Any = await app.broker()  # connected; the result backend is not
        real_publish = broker.publish
        publishing, release, ended = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def publish(messages: Any) -> None:
            if publishing.is_set():
                await real_publish(messages)
                return
            publishing.set()
            try:
                await release.wait()  # the broker's answer is late...
                await real_publish(messages)  # ...and the message stored
            finally:
                ended.set()

        monkeypatch.setattr(broker, "publish", publish)
        with pytest.raises(BrokerConnectionError, match="did not answer"):
            await add.delay(1)
        assert publishing.is_set()
        release.set()
        await ended.wait()  # the publish the send started has ended, one way or the other
        deliveries = await broker.fetch([app.conf.task_default_queue], 10, 0.05)
        assert [decode(d.body).id for d in deliveries] == []  # nothing stored after the error
    finally:
        await app.close()
