"""An app whose signal receivers write a line per signal, for the subprocess signal tests
(``-A tests.apps.signal_tasks``; broker from ``$AQUEUE_BROKER_URL``). With
``$AQUEUE_TEST_OWN_LOGGING`` set, a ``setup_logging`` receiver configures logging itself."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from aqueue import Aqueue, signals

url = os.environ.get("AQUEUE_BROKER_URL", "memory://")
app = Aqueue("sig", broker=url, backend=url)
app.conf.task_default_queue = os.environ.get("AQUEUE_E2E_QUEUE", "default")
log = logging.getLogger("tests.signals")


@app.task(name="sig.echo")
async def echo(value: str) -> str:
    return value


def _report(name: str) -> None:
    def receiver(sender: Any, **kwargs: Any) -> None:
        shown = {k: v for k, v in kwargs.items() if k in ("sig", "how", "exitcode")}
        log.warning("signal %s %s", name, shown)

    getattr(signals, name).connect(receiver)


for _name in ("worker_process_init", "worker_init", "worker_ready", "worker_shutting_down",
              "worker_shutdown"):  # fmt: skip
    _report(_name)

if os.environ.get("AQUEUE_TEST_OWN_LOGGING"):

    @signals.setup_logging.connect
    def own_logging(loglevel: str, logfile: Any, format: str, **kwargs: Any) -> None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"OWN {loglevel} %(message)s"))
        logging.basicConfig(level=logging.INFO, handlers=[handler])
