"""A worker process for tests that have no event loop (the sync client's and the WSGI
frameworks'): started, waited for until it logs ``ready``, killed."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

READY_TIMEOUT = 30.0  # seconds for the worker process to log its ready line


class WorkerThreadless:
    """``python -m aqueue worker`` for a sync test: started, waited for, killed; no event loop."""

    def __init__(self, app: str, env: dict[str, str]) -> None:
        cmd = [sys.executable, "-m", "aqueue", "worker", "-A", app, "-l", "info", "-c", "100"]
        self.proc = subprocess.Popen(
            cmd,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if not self.ready.wait(READY_TIMEOUT):
            self.stop()
            raise AssertionError("worker not ready:\n" + "\n".join(self.lines[-20:]))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())
            if "ready" in line:
                self.ready.set()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.reader.join(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
