"""Signals: connecting, filtering by sender, sync and async receivers, failing receivers, and
the worker's and beat's life signals with a real worker."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from aqueue import Aqueue, Worker, signals
from aqueue.beat import Beat
from aqueue.signals import Signal

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def clean_signals() -> Iterator[None]:
    """Every signal's receivers as they were before the test."""
    kept = {name: list(getattr(signals, name).receivers) for name in signals.__all__[1:]}
    yield
    for name, receivers in kept.items():
        getattr(signals, name).receivers = receivers


async def test_sync_and_async_receivers_run_in_order_with_the_arguments() -> None:
    sig = Signal("test_signal", ("value",))
    seen: list[tuple[str, Any, Any]] = []

    @sig.connect
    def first(sender: Any, value: int, **kwargs: Any) -> int:
        seen.append(("first", sender, value))
        assert kwargs["signal"] is sig
        return value + 1

    @sig.connect()
    async def second(sender: Any, value: int, **kwargs: Any) -> int:
        seen.append(("second", sender, value))
        return value * 2

    responses = await sig.send("me", value=5)
    assert seen == [("first", "me", 5), ("second", "me", 5)]
    assert responses == [(first, 6), (second, 10)]


async def test_a_receiver_is_connected_once() -> None:
    sig = Signal("test_signal")
    calls: list[str] = []

    def receiver(**kwargs: Any) -> None:
        calls.append("x")

    sig.connect(receiver)
    sig.connect(receiver)
    sig.connect(lambda **kw: calls.append("uid"), dispatch_uid="one")
    sig.connect(lambda **kw: calls.append("uid again"), dispatch_uid="one")
    await sig.send(None)
    assert calls == ["x", "uid"]
    assert sig.disconnect(receiver) and sig.disconnect(dispatch_uid="one")
    assert not sig.disconnect(receiver)
    assert await sig.send(None) == []


async def test_a_sender_filter_matches_a_task_by_object_or_name() -> None:
    app = Aqueue("proj", broker="memory://")

    @app.task(name="proj.add")
    async def add(x: int, y: int) -> int:
        return x + y

    sig = Signal("test_signal")
    by_name: list[Any] = []
    by_object: list[Any] = []
    sig.connect(lambda sender, **kw: by_name.append(sender), sender="proj.add")
    sig.connect(lambda sender, **kw: by_object.append(sender), sender=add)
    await sig.send(add)
    await sig.send("proj.add")
    await sig.send("proj.other")
    assert by_name == [add, "proj.add"]
    assert by_object == [add, "proj.add"]


async def test_a_failing_receiver_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sig = Signal("test_signal")
    ran: list[str] = []

    @sig.connect
    def broken(**kwargs: Any) -> None:
        raise ValueError("receiver bug")

    @sig.connect
    async def fine(**kwargs: Any) -> None:
        ran.append("fine")

    with caplog.at_level(logging.ERROR, logger="aqueue.signals"):
        responses = await sig.send(None)
    assert ran == ["fine"]
    assert isinstance(responses[0][1], ValueError)
    assert "Signal test_signal: receiver" in caplog.text and "receiver bug" in caplog.text


def test_connect_refuses_what_cannot_be_called() -> None:
    with pytest.raises(TypeError, match="must be callable"):
        Signal("test_signal").connect(42)  # type: ignore[call-overload]


def test_send_sync_runs_async_receivers_outside_a_loop() -> None:
    sig = Signal("test_signal")

    @sig.connect
    async def receiver(sender: Any, **kwargs: Any) -> str:
        return f"got {sender}"

    assert sig.send_sync("x") == [(receiver, "got x")]


async def test_worker_life_signals_fire_once_each(redis_server: str, clean_signals: None) -> None:
    app = Aqueue("proj", broker=redis_server, backend=redis_server)
    seen: list[tuple[str, Any]] = []
    for name in ("worker_init", "worker_ready", "worker_shutdown"):
        getattr(signals, name).connect(
            lambda sender, _name=name, **kw: seen.append((_name, sender))
        )

    @signals.worker_shutting_down.connect
    def shutting_down(sender: Any, sig: str | None, how: str, exitcode: int, **kw: Any) -> None:
        seen.append(("worker_shutting_down", (sender, sig, how, exitcode)))

    worker = Worker(app, concurrency=2, queues=["signals-life"])
    await worker.start()
    assert [name for name, _ in seen] == ["worker_init", "worker_ready"]
    await worker.stop()
    await app.close()
    assert [name for name, _ in seen] == [
        "worker_init",
        "worker_ready",
        "worker_shutting_down",
        "worker_shutdown",
    ]
    assert seen[0][1] is worker and seen[1][1] is worker and seen[3][1] is worker
    assert seen[2][1] == (worker.hostname, None, "Warm", 0)


async def test_beat_init_fires_with_the_beat(redis_server: str, clean_signals: None) -> None:
    app = Aqueue("proj", broker=redis_server, backend=redis_server)
    seen: list[Any] = []
    signals.beat_init.connect(lambda sender, **kw: seen.append(sender))
    beat = Beat(app)
    await beat.start()
    await beat.stop()
    await app.close()
    assert seen == [beat]
