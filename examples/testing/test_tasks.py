"""Tests of examples/testing/tasks.py with the pytest plugin (run by tests/test_tutorial.py)."""

# --8<-- [start:tests]
import pytest

from aqueue import Worker
from examples.testing.tasks import add, app, invoice


async def test_add(aqueue_worker: Worker) -> None:  # a real worker, memory:// broker
    assert await (await add.delay(1, 2)) == 3


async def test_routed_task_runs_and_fails_as_in_production(aqueue_worker: Worker) -> None:
    assert await (await invoice.delay(7)).get(timeout=5) == "invoice-7"  # queue "billing"
    with pytest.raises(ValueError, match="no order -1"):
        await (await invoice.delay(-1)).get(timeout=5)


async def test_eager_mode_needs_no_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.conf, "task_always_eager", True)  # delay() runs the task inline
    assert await (await add.delay(2, 2)).get() == 4


# --8<-- [end:tests]
