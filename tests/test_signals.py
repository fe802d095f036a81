"""Signals: connecting, filtering by sender, sync and async receivers, failing receivers, and
the worker's and beat's life signals with a real worker."""

from __future__ import annotations

import logging
import signal
from typing import Any

import pytest

from aqueue import Aqueue, Worker, signals
from aqueue.beat import Beat
from aqueue.signals import Signal
from tests.workerproc import WorkerProcess

pytestmark = pytest.mark.timeout(60)


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


class Recorder:
    """Connects a receiver to each task signal; ``calls`` lists ``(signal name, kwargs)``."""

    NAMES = (
        "before_task_publish",
        "after_task_publish",
        "task_received",
        "task_prerun",
        "task_postrun",
        "task_success",
        "task_failure",
        "task_retry",
        "task_revoked",
        "task_unknown",
        "task_rejected",
        "task_dead_lettered",
    )

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        for name in self.NAMES:
            getattr(signals, name).connect(self._receiver(name))

    def _receiver(self, name: str) -> Any:
        async def receive(**kwargs: Any) -> None:
            self.calls.append((name, kwargs))

        return receive

    def names(self, task_id: str | None = None) -> list[str]:
        return [name for name, kw in self.calls if task_id is None or _task_id(kw) == task_id]


def _task_id(kwargs: dict[str, Any]) -> str | None:
    for key in ("task_id", "id"):
        if isinstance(kwargs.get(key), str):
            return str(kwargs[key])
    for key in ("request", "body"):
        value = kwargs.get(key)
        if value is not None and isinstance(getattr(value, "id", None), str):
            return str(value.id)
    return None


@pytest.fixture
async def signal_app(redis_server: str, clean_signals: None) -> Any:
    app = Aqueue("signals", broker=redis_server, backend=redis_server)
    app.conf.task_default_queue = f"q-signals-{id(app)}"
    yield app
    await app.close()


async def test_task_signals_fire_once_each_with_their_arguments(signal_app: Aqueue) -> None:
    app = signal_app

    @app.task(name="s.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="s.bad")
    async def bad() -> None:
        raise KeyError("missing")

    @app.task(name="s.flaky", bind=True, max_retries=1, default_retry_delay=0)
    async def flaky(self: Any) -> str:
        if self.request.retries == 0:
            raise self.retry(exc=ValueError("try again"))
        return "ok"

    recorder = Recorder()
    async with Worker(app, concurrency=4) as worker:
        ok = await add.delay(2, 3)
        assert await ok.get(timeout=10) == 5
        failed = await bad.delay()
        with pytest.raises(KeyError):
            await failed.get(timeout=10)
        retried = await flaky.delay()
        assert await retried.get(timeout=10) == "ok"
        unknown = await app.send_task("s.nobody")
        with pytest.raises(Exception, match="unknown task"):
            await unknown.get(timeout=10)
        await worker.wait_processed(5)

    # The sender's signals in their order, before_task_publish first of all; the worker's in
    # theirs. An idle worker can start a task before its sender's after_task_publish runs (the
    # broker's answer to the sender and the message to the worker leave Redis together).
    names = recorder.names(ok.id)
    assert names[0] == "before_task_publish"
    assert [n for n in names if n.endswith("_publish")] == [
        "before_task_publish", "after_task_publish",
    ]  # fmt: skip
    assert [n for n in names if not n.endswith("_publish")] == [
        "task_received", "task_prerun", "task_success", "task_postrun",
    ]  # fmt: skip
    calls = {name: kw for name, kw in recorder.calls if _task_id(kw) == ok.id}
    assert calls["before_task_publish"]["sender"] == "s.add"
    assert calls["before_task_publish"]["routing_key"] == app.conf.task_default_queue
    assert calls["task_prerun"]["sender"] is add and calls["task_prerun"]["args"] == (2, 3)
    assert calls["task_success"]["result"] == 5
    assert calls["task_postrun"]["state"] == "SUCCESS" and calls["task_postrun"]["retval"] == 5

    worker_side = [n for n in recorder.names(failed.id) if not n.endswith("_publish")]
    assert worker_side[-3:] == ["task_prerun", "task_failure", "task_postrun"]
    failure = next(kw for name, kw in recorder.calls if name == "task_failure")
    assert isinstance(failure["exception"], KeyError) and "KeyError" in failure["traceback"]

    flaky_names = recorder.names(retried.id)
    assert flaky_names.count("task_retry") == 1 and flaky_names.count("task_success") == 1
    assert flaky_names.count("task_received") == 2  # the first run and the retry
    retry = next(kw for name, kw in recorder.calls if name == "task_retry")
    assert isinstance(retry["reason"], ValueError) and retry["request"].id == retried.id
    states = [kw["state"] for name, kw in recorder.calls if name == "task_postrun"]
    # Each run's postrun, by the run's retry count: with a retry delay of 0 an idle runner may
    # finish the retry before the first run's postrun, so their order is not part of it.
    flaky_runs = sorted(
        (kw["request"].retries, kw["state"])
        for name, kw in recorder.calls
        if name == "task_postrun" and _task_id(kw) == retried.id
    )
    assert flaky_runs == [(0, "RETRY"), (1, "SUCCESS")] and "FAILURE" in states

    worker_side = [n for n in recorder.names(unknown.id) if not n.endswith("_publish")]
    assert worker_side[-2:] == ["task_dead_lettered", "task_unknown"]
    dead = next(kw for name, kw in recorder.calls if name == "task_dead_lettered")
    assert dead["name"] == "s.nobody" and "unknown task" in dead["reason"]


async def test_revoked_and_expired_tasks_send_task_revoked(signal_app: Aqueue) -> None:
    app = signal_app

    @app.task(name="s.never")
    async def never() -> None:
        raise AssertionError("must not run")

    recorder = Recorder()
    revoked = await never.apply_async(countdown=0.5)
    await app.control.revoke(revoked.id)
    expired = await never.apply_async(expires=0.001)
    async with Worker(app, concurrency=2) as worker:
        await worker.wait_processed(2)
    by_id = {_task_id(kw): kw for name, kw in recorder.calls if name == "task_revoked"}
    assert set(by_id) == {revoked.id, expired.id}
    assert by_id[revoked.id]["expired"] is False and by_id[revoked.id]["terminated"] is False
    assert by_id[expired.id]["expired"] is True
    assert by_id[revoked.id]["sender"] is never
    assert "task_prerun" not in recorder.names()


@pytest.mark.parametrize("processes", [1, 2])
async def test_a_sigterm_shutdown_sends_the_worker_signals_once(
    redis_server: str, processes: int
) -> None:
    env = {"AQUEUE_BROKER_URL": redis_server, "AQUEUE_E2E_QUEUE": f"q-sigterm-{processes}"}
    args = ["-c", "2", "--processes", str(processes)]
    async with WorkerProcess("tests.apps.signal_tasks", args, env) as worker:
        await worker.wait_for("ready: all" if processes > 1 else " ready: consuming ")
        worker.signal(signal.SIGTERM)
        assert await worker.wait() == 0
    lines = [line for line in worker.lines if "signal " in line]
    for name in ("worker_init", "worker_ready", "worker_shutting_down", "worker_shutdown"):
        assert sum(f"signal {name} " in line for line in lines) == processes, lines
    shutting = [line for line in lines if "signal worker_shutting_down" in line]
    assert all("'sig': 'SIGTERM', 'how': 'Warm', 'exitcode': 0" in line for line in shutting)
    assert sum("signal worker_process_init" in line for line in lines) == (
        processes if processes > 1 else 0
    )


async def test_a_setup_logging_receiver_takes_over_logging(redis_server: str) -> None:
    env = {"AQUEUE_BROKER_URL": redis_server, "AQUEUE_TEST_OWN_LOGGING": "1"}
    async with WorkerProcess("tests.apps.signal_tasks", ["-c", "1"], env) as worker:
        line = await worker.wait_for(" ready: consuming ")
    assert line.startswith("OWN INFO ")
