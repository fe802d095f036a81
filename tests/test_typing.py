"""Task[P, R] typing: a type checker rejects bad delay() arguments and knows the result type."""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api

SNIPPET = """
from collections.abc import AsyncIterator
from aqueue import Aqueue, Task

app = Aqueue("typed", broker="memory://")

@app.task
async def add(x: int, y: int) -> int:
    return x + y

@app.task(bind=True, max_retries=2)
def crunch(self: Task, n: int) -> str:
    return str(n)

@app.task(soft_deadline=5)
async def tokens(n: int) -> AsyncIterator[str]:
    yield str(n)

async def main() -> None:
    r = await add.delay(2, 2)
    reveal_type(await r)
    reveal_type(await (await crunch.delay(3)))
    reveal_type(await (await tokens.delay(3)))
    await add.delay("x", 2)
    await crunch.delay(n="3")
"""


@pytest.mark.timeout(120)
def test_delay_is_checked_and_the_result_typed(tmp_path: Path) -> None:
    path = tmp_path / "snippet.py"
    path.write_text(SNIPPET)
    out, _, _ = api.run(
        [
            str(path),
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path),
            "--disable-error-code",
            "type-arg",
        ]
    )
    revealed = [
        line.split("Revealed type is ")[1]
        for line in out.splitlines()
        if "Revealed type is" in line
    ]
    assert [t.strip('"').removeprefix("builtins.") for t in revealed] == [
        "int",
        "str",
        "list[str]",
    ], out
    assert 'Argument 1 to "delay" of "Task" has incompatible type "str"; expected "int"' in out, out
    expected = 'Argument "n" to "delay" of "Task" has incompatible type "str"; expected "int"'
    assert expected in out, out


OPTIONS_SNIPPET = """
from datetime import datetime
from aqueue import Aqueue

app = Aqueue("typed", broker="memory://")

@app.task(max_retries=2, rate_limit="10/m", autoretry_for=(OSError,))
async def add(x: int, y: int) -> int:
    return x + y

@app.task(max_retries="3")
async def bad_option(x: int) -> int:
    return x

async def main() -> None:
    await add.apply_async((1, 2), countdown=1.5, eta=datetime.now(), queue="io", priority=5)
    await add.apply_async((1, 2), countdwn=1)
    await add.apply_async((1, 2), priority="high")
    await app.send_task("typed.add", (1, 2), retry_policy={"max_retries": 2})
    await add.delay_many([(1, 2)], queue=3)
"""


@pytest.mark.timeout(120)
def test_send_and_task_options_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "options.py"
    path.write_text(OPTIONS_SNIPPET)
    out, _, _ = api.run([str(path), "--strict", "--no-incremental", "--cache-dir", str(tmp_path)])
    errors = [line for line in out.splitlines() if ": error:" in line]
    lines = {int(line.split(":")[1]) for line in errors}
    # max_retries="3", countdwn=, priority="high", queue=3 - and nothing else.
    assert lines == {11, 17, 18, 20}, out
    assert 'Unexpected keyword argument "countdwn"' in out, out
