"""dramatiq runner (its own virtualenv).

Producer: ``actor.send()`` in a loop (dramatiq's client is synchronous). With the Redis broker no
results are stored: the actors append their start time to a file that this runner reads (see
``tasks_dramatiq``). With an AMQP broker (``RabbitmqBroker``) results are stored in Redis and read
in send order with ``message.get_result(block=True)`` (a blocking pop on the result's key).
Worker: ``dramatiq tasks_dramatiq --processes 1 --threads 100`` with the AsyncIO middleware.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from _common import Adapter, main

POLL = 0.005  # seconds between reads of the record file


class DramatiqAdapter(Adapter):
    name = "dramatiq"

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        self.amqp = args.broker.startswith("amqp")
        self.notes = (
            ("RabbitmqBroker (no confirms)" if self.amqp else "RedisBroker")
            + " + AsyncIO middleware, async actors, 1 process x 100 threads; "
            + "send() in a loop (sync client); "
            + (
                "Results middleware, RedisBackend, get_result(block=True)"
                if self.amqp
                else "no results stored (completion read from a file)"
            )
        )
        fd, path = tempfile.mkstemp(prefix="bench-dramatiq-", suffix=".log", dir=args.log_dir)
        os.close(fd)
        self.record = Path(path)
        os.environ["BENCH_RECORD_FILE"] = path  # before worker_env() copies the environment
        self.seen: dict[int, float] = {}
        self.offset = 0
        self.next_index = 0

    def worker_cmd(self) -> list[str]:
        return [
            str(Path(sys.executable).with_name("dramatiq")),
            "tasks_dramatiq",
            "--processes",
            "1",
            "--threads",
            str(self.args.concurrency),
        ]

    def version(self) -> str:
        return f"dramatiq {version('dramatiq')}"

    async def setup(self) -> None:
        import tasks_dramatiq

        self.t = tasks_dramatiq

    async def teardown(self) -> None:
        self.t.broker.close()
        self.record.unlink(missing_ok=True)

    def _send(self, actor: Any, n: int) -> list[Any]:
        """Send ``n`` messages; the handles: messages when results are stored, else indices."""
        first = self.next_index
        self.next_index += n
        messages = [actor.send(i) for i in range(first, first + n)]
        return messages if self.amqp else list(range(first, first + n))

    async def send_noop(self, n: int) -> list[Any]:
        return self._send(self.t.noop, n)

    async def send_sleep(self, n: int) -> list[Any]:
        return self._send(self.t.sleep10, n)

    async def send_one(self) -> Any:
        return self._send(self.t.noop, 1)[0]

    def _read(self) -> None:
        with self.record.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        self.offset += end
        for line in data[:end].splitlines():
            index, started = line.split()
            self.seen[int(index)] = float(started)

    async def wait(self, handles: list[Any], deadline: float) -> list[float]:
        if self.amqp:
            return [
                m.get_result(block=True, timeout=max(1000, (deadline - time.monotonic()) * 1000))
                for m in handles
            ]
        for i in handles:
            while i not in self.seen:
                self._read()
                if i in self.seen:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError
                await asyncio.sleep(POLL)
        return [self.seen[i] for i in handles]


if __name__ == "__main__":
    main(DramatiqAdapter)
