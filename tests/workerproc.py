"""Worker subprocesses for tests: start ``aqueue worker``, wait for log lines, signal, reap."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any


class WorkerProcess:
    """``python -m aqueue worker -A <app> ...`` with its log lines collected as they come.

    Use as an async context manager; on exit the process is killed if still running, so no test
    leaves a worker behind. Entering waits for the ``ready`` line unless ``ready=False``.
    """

    def __init__(
        self,
        app: str,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        ready: bool = True,
    ):
        self.cmd = [sys.executable, "-m", "aqueue", "worker", "-A", app, "-l", "info", *args]
        self.ready = ready
        self.env = {**os.environ, **(env or {})}
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> WorkerProcess:
        self.proc = await asyncio.create_subprocess_exec(
            *self.cmd,
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            cwd=os.getcwd(),
        )
        self._reader = asyncio.create_task(self._read())
        if self.ready:
            await self.wait_for("ready", timeout=20)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for raw in self.proc.stderr:
            async with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, text: str, timeout: float = 10) -> str:
        """Wait until a log line contains ``text``; return it.

        Raises:
            AssertionError: the process exited or ``timeout`` seconds passed first.
        """

        async def seek() -> str:
            async with self._changed:
                while True:
                    for line in self.lines:
                        if text in line:
                            return line
                    if self._reader is not None and self._reader.done():
                        raise AssertionError(
                            f"worker exited before logging {text!r}:\n"
                            + "\n".join(self.lines[-30:])
                        )
                    await self._changed.wait()

        try:
            return await asyncio.wait_for(seek(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"no log line with {text!r} within {timeout}s:\n" + "\n".join(self.lines[-30:])
            ) from None

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 20) -> int:
        """Wait for the process to exit; return its exit code."""
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)
