"""Apps for the command-line tests (``tests/test_cli.py``), named as ``-A module:attribute``.

- ``app``: broker and backend from ``$AQUEUE_BROKER_URL`` / ``$AQUEUE_RESULT_BACKEND`` (worker
  and beat subprocesses); tasks ``cli.add`` and ``cli.mul``.
- ``memory_app``: the same tasks on the memory transport, for commands run in the test's process.
- ``sender``: registers no task of its own (an app that only sends by name).
"""

from __future__ import annotations

from aqueue import Aqueue


def _register(app: Aqueue) -> None:
    @app.task(name="cli.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="cli.mul")
    async def mul(x: int, y: int) -> int:
        return x * y


app = Aqueue("cli")
_register(app)

memory_app = Aqueue("cli-memory", broker="memory://cli-tests")
_register(memory_app)

sender = Aqueue("cli-sender", broker="memory://cli-sender")
