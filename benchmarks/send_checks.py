"""Micro-benchmark: what checking a call's arguments against the task's signature costs a send.

``delay()`` checks the arguments before anything is sent (Celery's ``typing=True``;
``@app.task(typing=False)`` skips it). Two figures, CPU only (the memory transport, no I/O):

- ``check``: one ``Task.check_arguments`` call, for calls of several shapes;
- ``delay``: one ``await task.delay(...)`` on ``memory://`` (``--batch`` sends gathered at once,
  as a busy producer does), for a task with the check and the same task without it, rounds
  interleaved (each first in every other round) so that a busy machine slows both alike.

Run from the repository root::

    python benchmarks/send_checks.py
    python benchmarks/send_checks.py --repeat 9

Prints microseconds per call, the best of ``--repeat`` rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import sys
import time
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: import this checkout's aqueue
    sys.path.insert(0, str(REPO_ROOT))

from aqueue import Aqueue, Task  # noqa: E402
from aqueue.transports.base import QueueAdmin  # noqa: E402

app = Aqueue("bench-checks", broker="memory://bench-checks", backend="memory://bench-checks")


async def add(x: int, y: int, z: int = 0) -> int:
    """Three plain parameters, one with a default."""
    return x + y + z


async def flexible(x: int, *rest: int, scale: int = 1, **extra: Any) -> int:
    """``*args``, a keyword-only parameter and ``**kwargs``: always the full check."""
    return x * scale


async def bound(self: Task[Any, Any], x: int, y: int) -> int:
    """``bind=True``: the task itself comes first."""
    return x + y


checked = app.task(name="bench.checked")(add)
unchecked = app.task(typing=False, name="bench.unchecked")(add)
flexible_task = app.task(name="bench.flexible")(flexible)
bound_task = app.task(bind=True, name="bench.bound")(bound)

CHECK_CASES: dict[str, tuple[Task[Any, Any], tuple[Any, ...], dict[str, Any]]] = {
    "add(1, 2)": (checked, (1, 2), {}),
    "add(1, 2, 3)": (checked, (1, 2, 3), {}),
    "add(1, y=2)": (checked, (1,), {"y": 2}),
    "add(x=1, y=2, z=3)": (checked, (), {"x": 1, "y": 2, "z": 3}),
    "bound(1, 2) (bind=True)": (bound_task, (1, 2), {}),
    "flexible(1, 2, scale=3)": (flexible_task, (1, 2), {"scale": 3}),
}


def best(fn: Callable[[], Any], number: int, repeat: int) -> float:
    """Microseconds per call of ``fn``: the best of ``repeat`` rounds of ``number`` calls."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


async def delay_round(task: Task[Any, Any], calls: int, batch: int, kwargs: bool) -> float:
    """Seconds of CPU per ``delay()`` over ``calls`` sends, ``batch`` gathered at once."""
    gc.collect()
    started = time.process_time()
    for _ in range(calls // batch):
        if kwargs:
            await asyncio.gather(*(task.delay(x=1, y=2) for _ in range(batch)))
        else:
            await asyncio.gather(*(task.delay(1, 2) for _ in range(batch)))
    spent = time.process_time() - started
    broker = await app.broker()
    if isinstance(broker, QueueAdmin):  # the next round starts from an empty queue
        await broker.purge([app.conf.task_default_queue])
    return spent / (calls // batch * batch)


async def delay_figures(calls: int, batch: int, repeat: int) -> None:
    tasks: dict[str, Task[Any, Any]] = {"checked": checked, "typing=False": unchecked}
    for kwargs in (False, True):
        shape = "delay(x=1, y=2)" if kwargs else "delay(1, 2)"
        rounds: dict[str, list[float]] = {name: [] for name in tasks}
        await delay_round(checked, batch, batch, kwargs)  # warm-up: connect, reply channel
        order = list(tasks.items())
        for _ in range(repeat):
            for name, task in order:
                rounds[name].append(await delay_round(task, calls, batch, kwargs))
            order.reverse()  # each goes first in every other round
        figures = {name: min(times) * 1e6 for name, times in rounds.items()}
        line = "  ".join(f"{name} {us:6.2f}" for name, us in figures.items())
        diff = figures["checked"] - figures["typing=False"]
        line += f"  (check: {diff:+.2f} µs, {diff / figures['typing=False']:+.1%})"
        print(f"{shape:<26}{line}")
    await app.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200_000, help="check calls per round")
    parser.add_argument("--calls", type=int, default=20_000, help="delay() calls per round")
    parser.add_argument("--batch", type=int, default=1_000, help="delay() calls gathered")
    parser.add_argument("--repeat", type=int, default=5, help="rounds (the best is kept)")
    opts = parser.parse_args(argv)
    print("check_arguments                (µs per call)")
    for name, (task, args, kwargs) in CHECK_CASES.items():
        check = functools.partial(task.check_arguments, args, kwargs)
        us = best(check, opts.number, opts.repeat)
        print(f"  {name:<28}{us:6.3f}")
    print("delay() on memory://, CPU     (µs per call)")
    asyncio.run(delay_figures(opts.calls, opts.batch, opts.repeat))


if __name__ == "__main__":
    main()
