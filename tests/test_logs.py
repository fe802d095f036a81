"""Log lines that carry the task: formatters, and a worker's lines with ``--log-format``."""

from __future__ import annotations

import logging
import sys
import uuid

import orjson
import pytest

from aqueue import Aqueue
from aqueue.logs import JsonFormatter, TaskFilter, TaskFormatter
from aqueue.task import Request, current_request
from tests.workerproc import WorkerProcess

pytestmark = pytest.mark.timeout(60)


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "x", "levelname": "INFO", "msg": message})
    record.__dict__.update(extra)
    return record


def test_lines_inside_a_task_carry_its_name_and_id() -> None:
    formatter = TaskFormatter(fmt="%(message)s", task_fmt="%(task_name)s[%(task_id)s] %(message)s")
    assert formatter.format(_record("outside")) == "outside"
    token = current_request.set(Request(id="abc", task="proj.add"))
    try:
        assert formatter.format(_record("inside")) == "proj.add[abc] inside"
    finally:
        current_request.reset(token)


def test_the_filter_adds_celerys_placeholders_outside_a_task() -> None:
    record = _record("x")
    assert TaskFilter().filter(record)
    assert (getattr(record, "task_name"), getattr(record, "task_id")) == ("???", "???")  # noqa: B009


def test_json_lines_carry_the_task_extra_fields_and_the_exception() -> None:
    token = current_request.set(Request(id="abc", task="proj.add"))
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            record = _record("failed %s", user="ann", exc_info=sys.exc_info())
            record.args = ("now",)
        line = orjson.loads(JsonFormatter().format(record))
    finally:
        current_request.reset(token)
    assert line["message"] == "failed now" and line["level"] == "INFO"
    assert (line["task_name"], line["task_id"], line["user"]) == ("proj.add", "abc", "ann")
    assert "ValueError: boom" in line["exception"]


async def test_a_worker_writes_json_lines_with_the_task(redis_server: str) -> None:
    queue = f"q-{uuid.uuid4().hex[:12]}"
    env = {"AQUEUE_BROKER_URL": redis_server, "AQUEUE_E2E_QUEUE": queue}
    producer = Aqueue("p", broker=redis_server, backend=redis_server)
    try:
        args = ["-c", "2", "--log-format", "json"]
        async with WorkerProcess("tests.apps.log_tasks", args, env) as worker:
            result = await producer.send_task("logs.say", ("hi",), queue=queue)
            assert await result.get(timeout=10) == "hi"
            own = orjson.loads(await worker.wait_for("task says hi", timeout=10))
            other = orjson.loads(await worker.wait_for("a library line", timeout=10))
    finally:
        await producer.close()
    for line in (own, other):
        assert (line["task_name"], line["task_id"]) == ("logs.say", result.id)
    assert own["logger"] == "tests.apps.log_tasks" and other["level"] == "WARNING"


async def test_text_lines_inside_a_task_follow_celerys_task_format(redis_server: str) -> None:
    queue = f"q-{uuid.uuid4().hex[:12]}"
    env = {"AQUEUE_BROKER_URL": redis_server, "AQUEUE_E2E_QUEUE": queue}
    producer = Aqueue("p", broker=redis_server, backend=redis_server)
    try:
        async with WorkerProcess("tests.apps.log_tasks", ["-c", "2"], env) as worker:
            result = await producer.send_task("logs.say", ("hello",), queue=queue)
            await result.get(timeout=10)
            line = await worker.wait_for("task says hello", timeout=10)
    finally:
        await producer.close()
    assert f"logs.say[{result.id}]: task says hello" in line
