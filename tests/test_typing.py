"""Task[P, R] typing: a type checker rejects bad delay() arguments and knows the result type."""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api

SNIPPET = """
from aqueue import Aqueue, Task

app = Aqueue("typed", broker="memory://")

@app.task
async def add(x: int, y: int) -> int:
    return x + y

@app.task(bind=True, max_retries=2)
def crunch(self: Task, n: int) -> str:
    return str(n)

async def main() -> None:
    r = await add.delay(2, 2)
    reveal_type(await r)
    reveal_type(await (await crunch.delay(3)))
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
    assert [t.strip('"').removeprefix("builtins.") for t in revealed] == ["int", "str"], out
    assert 'Argument 1 to "delay" of "Task" has incompatible type "str"; expected "int"' in out, out
    expected = 'Argument "n" to "delay" of "Task" has incompatible type "str"; expected "int"'
    assert expected in out, out
