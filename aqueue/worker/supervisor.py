"""``aqueue worker --processes N``: N single-loop worker processes under one supervisor.

A worker is one process with one event loop, so it uses one core. The supervisor starts N of
them - each an ordinary ``aqueue worker`` with the same options, named ``<name>-<i>@<host>`` -
and then only watches:

- **A child that dies** (killed, crashed, non-zero exit) is started again, at once the first
  time and with a growing pause (up to 30 s) while it keeps dying within seconds of starting.
  Its unfinished messages are delivered again after the visibility timeout, as for any worker
  that died. A child that exits cleanly by itself (``aqueue control shutdown``) is not
  restarted; when every child has, the supervisor exits too.
- **A child that cannot start** - it died :data:`MAX_FAILED_STARTS` times in a row before it
  was ready (an app that no longer imports, a bad setting), or its process could not be made
  (fork/exec failing: EAGAIN, ENOMEM, no file descriptors left) - is not started again: the
  supervisor says so, stops the other children (warm shutdown) and exits with that child's
  exit code (1 if it was killed by a signal or never ran), as a single worker would have.
  Until then such a failed start is logged and retried with the same pauses as a death; the
  other children run on.
- **Readiness** does not depend on the children's log: each child tells the supervisor on its
  stderr pipe (a line of its own, not relayed) once its worker is ready, wherever the app's
  logging sends its lines. :meth:`Supervisor.ready` (``/readyz``) is true while every child
  is ready; :meth:`Supervisor.alive` (``/healthz``) while none is down (dead, not started or
  exited, until its replacement is ready; a child starting for the first time, or being
  replaced after its per-child limit, is not down); both are false once the shutdown has begun.
- **A child that reached its limit** (``worker_max_tasks_per_child`` messages, or more than
  ``worker_max_memory_per_child`` KiB resident after a task) stops taking messages, hands back
  the ones it had not started, lets its running tasks finish (``worker_shutdown_timeout``),
  runs its lifespan's shutdown and exits with :data:`RECYCLE_EXIT`; it is replaced at once.
- **SIGTERM or SIGINT** is passed to every child as SIGTERM: each does its warm shutdown
  (``worker_shutdown_timeout``), and the supervisor exits once all have; a second signal is
  passed on as well (children then stop at once, handing running tasks back). Children still
  running ``worker_shutdown_timeout + 10`` seconds after the first signal are killed.
- **Its own death**: children run in their own session, so a terminal's Ctrl-C reaches only
  the supervisor (which forwards it once); on Linux each child asks the kernel for SIGTERM when
  the supervisor dies (``PR_SET_PDEATHSIG``), so none is left behind even after a SIGKILL.

The supervisor's exit code is 0 when every child stopped cleanly; 1 when one had to be killed
or died during the shutdown; that of a child that could not start, above.

The children's log lines pass through the supervisor's stderr. It logs one line containing
``ready`` once all N children are ready, as a single worker does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MAX_FAILED_STARTS", "RECYCLE_EXIT", "Supervisor", "child_hostname"]

logger = logging.getLogger("aqueue.worker.supervisor")

_PARENT_ENV = "AQUEUE_SUPERVISOR_PID"
#: A child that dies sooner than this (seconds) after starting counts as failing to start.
_QUICK_DEATH = 5.0
_MAX_BACKOFF = 30.0
#: A child that died this many times in a row before it was ready is not started again.
MAX_FAILED_STARTS = 5
_KILL_GRACE = 10.0  # seconds past the shutdown timeout before children are killed
_DRAIN = 1.0  # seconds the log of a child that exited is still read, at most
_LINE_LIMIT = 2**16  # bytes of a log line relayed at once (a longer one goes in pieces)
#: The exit code of a child that stopped to be replaced (a per-child limit): EX_TEMPFAIL.
RECYCLE_EXIT = 75
#: The exit codes of a child that stopped cleanly when told to: its warm shutdown, or its
#: recycling, or SIGTERM itself before the child had set up its handler (nothing running yet).
_STOPPED = frozenset({0, RECYCLE_EXIT, -signal.SIGTERM})
#: What a child writes on its stderr once its worker is ready: said apart from its log, which
#: the app's own logging (``setup_logging``) may send elsewhere. Not relayed.
_READY = b"\x1eaqueue-supervised-worker-ready\n"


def child_hostname(hostname: str | None, index: int) -> str:
    """The name of child ``index`` (1-based): ``aqueue-2@host`` from ``aqueue@host``."""
    import socket

    base = hostname or f"aqueue@{socket.gethostname()}"
    name, at, host = base.partition("@")
    return f"{name}-{index}{at}{host}"


@dataclass(slots=True)
class _Child:
    index: int
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    failures: int = 0  # quick deaths in a row
    failed_starts: int = 0  # deaths before ready, in a row
    restarts: int = 0  # starts so far
    recycled: int = 0  # replaced after reaching a per-child limit
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    #: Not down: starting for the first time (as a single worker's ``/healthz`` says yes while
    #: it starts), running and ready, or being replaced after its per-child limit. Down from
    #: a death or a failed start until a replacement is ready.
    up: bool = True
    done: bool = False  # exited cleanly by itself: not restarted


class Supervisor:
    """Runs ``processes`` worker processes and keeps them running.

    Args:
        app: the ``-A`` value, passed to every child.
        processes: how many children (>= 1).
        worker_args: other ``aqueue worker`` options for every child (``-c``, ``-Q``, ``-l``...).
        hostname: the ``-n`` base name; child ``i`` is named by :func:`child_hostname`.
        first_args: options for child 1 only (``-B``: one beat, not N).
        shutdown_timeout: the children's ``worker_shutdown_timeout`` (seconds).
        on_exit: called with a child's pid once it has exited (for metrics of dead processes).
    """

    def __init__(
        self,
        app: str,
        processes: int,
        worker_args: Sequence[str] = (),
        hostname: str | None = None,
        first_args: Sequence[str] = (),
        shutdown_timeout: float = 30.0,
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        if processes < 1:
            raise ValueError("processes must be at least 1")
        self.app = app
        self.worker_args = list(worker_args)
        self.hostname = hostname
        self.first_args = list(first_args)
        self.shutdown_timeout = shutdown_timeout
        self.children = [_Child(i + 1) for i in range(processes)]
        self.on_exit = on_exit
        self._stopping = asyncio.Event()
        self._signals = 0
        self._unclean = False  # a child did not stop cleanly when told to (killed, crashed)
        self._gave_up: int | None = None  # the exit code of a child that cannot start
        # Relays of the log of children that exited, whose stderr a process they started holds.
        self._leftover_logs: set[asyncio.Task[None]] = set()

    def ready(self) -> bool:
        """True while every child is ready and no shutdown has begun (readiness; safe to call
        from another thread)."""
        return not self._stopping.is_set() and all(c.ready.is_set() for c in self.children)

    def alive(self) -> bool:
        """True while no child is down - each is starting for the first time, running and
        ready, or being replaced after its per-child limit - and no shutdown has begun
        (liveness; safe to call from another thread). A child that died, could not be started
        or exited by itself is down until a replacement is ready."""
        return not self._stopping.is_set() and all(c.up for c in self.children)

    def run(self) -> int:
        """Run until every child has stopped; return the exit code (0: clean; 1: a child had
        to be killed or died in the shutdown; a child's code: it could not start)."""
        return asyncio.run(self.main())

    async def main(self) -> int:
        """The supervisor itself, in the running loop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        logger.info(
            "supervisor pid %d: starting %d worker processes", os.getpid(), len(self.children)
        )
        watchers = [asyncio.create_task(self._watch(child)) for child in self.children]
        announce = asyncio.create_task(self._announce_ready())
        killer: asyncio.Task[None] | None = None
        try:
            done_watching: asyncio.Future[Any] = asyncio.gather(*watchers)
            stop: asyncio.Future[Any] = asyncio.create_task(self._stopping.wait())
            await asyncio.wait([done_watching, stop], return_when=asyncio.FIRST_COMPLETED)
            if self._stopping.is_set():
                killer = asyncio.create_task(self._kill_late())
            await done_watching
            stop.cancel()
        finally:
            announce.cancel()
            if killer is not None:
                killer.cancel()
            for relay in list(self._leftover_logs):
                relay.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await relay
        if self._gave_up is not None:
            return self._gave_up
        if self._unclean:
            logger.error("worker processes stopped, but some did not stop cleanly (exit code 1)")
            return 1
        logger.info("all worker processes stopped")
        return 0

    def _command(self, child: _Child) -> list[str]:
        args = [sys.executable, "-m", "aqueue.worker.supervisor", "worker", "-A", self.app]
        args += self.worker_args
        args += ["-n", child_hostname(self.hostname, child.index)]
        if child.index == 1:
            args += self.first_args
        return args

    async def _watch(self, child: _Child) -> None:
        """Start ``child``, relay its log, start it again when it dies, until stopping."""
        while not self._stopping.is_set():
            child.started = time.monotonic()
            try:
                log = await self._start(child)
            except OSError as exc:
                # fork/exec or the pipe failed (EAGAIN, ENOMEM, EMFILE, a missing executable):
                # a failed start of this child, not the end of the supervisor and the others.
                await self._failed(child, 1, f"could not be started ({exc})", f"{exc}", False)
                continue
            code = await self._follow(child, log)
            was_ready = child.ready.is_set()
            child.ready.clear()  # not consuming any more: not ready until its replacement is
            if code is None:
                child.up = False
                return
            # A recycled child ran tasks; that exit code before it was ready is a failed start.
            if code != RECYCLE_EXIT or not was_ready:
                assert child.proc is not None
                pid = child.proc.pid
                died = f"(pid {pid}) died ({_describe(code)})"
                await self._failed(child, code, died, f"{_describe(code)}, pid {pid}", was_ready)

    async def _follow(
        self, child: _Child, log: tuple[asyncio.StreamReader, asyncio.BaseTransport]
    ) -> int | None:
        """Watch ``child``'s process, just started, until it exits.

        Returns:
            Its exit code (:data:`RECYCLE_EXIT`: to be replaced at once), or ``None`` when it
            is not to be started again: stopping, or it exited cleanly by itself.
        """
        assert child.proc is not None
        if child.restarts:
            logger.info(
                "worker process %d started again (pid %d, restart %d)",
                child.index,
                child.proc.pid,
                child.restarts,
            )
        else:
            logger.info("worker process %d started (pid %d)", child.index, child.proc.pid)
        child.restarts += 1
        if self._stopping.is_set():  # a signal came while it was starting
            _send(child.proc, signal.SIGTERM)
        code = await self._relay_until_exit(child, log)
        self._exited(child.proc.pid)
        if self._stopping.is_set():
            if code not in _STOPPED:
                self._unclean = True
            return None
        if code == RECYCLE_EXIT and child.ready.is_set():
            child.recycled += 1
            child.failures = 0
            logger.info(
                "worker process %d (pid %d) reached its per-child limit; replacing it",
                child.index,
                child.proc.pid,
            )
        elif code == 0:
            logger.info("worker process %d (pid %d) exited", child.index, child.proc.pid)
            child.done = True
            return None
        return code

    async def _failed(
        self, child: _Child, code: int, failure: str, last: str, was_ready: bool
    ) -> None:
        """Count a death or a failed start of ``child`` and wait out its pause before the
        next start, or give up (:data:`MAX_FAILED_STARTS`).

        Args:
            code: its exit code (1 when it could not be started).
            failure: what happened, for the log (``(pid 12) died (exit code 3)``).
            last: the same, shorter, for the log line of giving up.
            was_ready: whether it had been ready (then it did start).
        """
        child.up = False
        child.failed_starts = 0 if was_ready else child.failed_starts + 1
        if child.failed_starts >= MAX_FAILED_STARTS:
            self._give_up(child, code, last)
            return
        lived = time.monotonic() - child.started
        child.failures = child.failures + 1 if lived < _QUICK_DEATH else 0
        # Once at once; a child that keeps dying young waits 0.5 s, 1 s, 2 s... up to 30 s.
        pause = min(_MAX_BACKOFF, 0.25 * 2**child.failures) if child.failures > 1 else 0.0
        logger.error("worker process %d %s; starting another in %gs", child.index, failure, pause)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), pause)

    async def _start(self, child: _Child) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
        """Start ``child``'s process (``child.proc``) with its stderr on a pipe of ours.

        The pipe is not the subprocess's own: a process the child starts inherits its stderr
        and may hold it open after the child died, and the child's exit must be seen then too.

        Returns:
            The reader of the child's stderr and the pipe's transport (to close).

        Raises:
            OSError: the process or the pipe cannot be made (no file descriptors left...); a
                process started whose pipe cannot be read is killed first.
        """
        read_fd, write_fd = os.pipe()
        pipe = os.fdopen(read_fd, "rb", buffering=0)  # (closing it closes read_fd)
        try:
            child.proc = await asyncio.create_subprocess_exec(
                *self._command(child),
                stdin=asyncio.subprocess.DEVNULL,
                stderr=write_fd,
                env={**os.environ, _PARENT_ENV: str(os.getpid())},
                start_new_session=True,
            )
        except BaseException:
            pipe.close()
            raise
        finally:
            os.close(write_fd)
        reader = asyncio.StreamReader(limit=_LINE_LIMIT)
        try:
            transport, _ = await asyncio.get_running_loop().connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), pipe
            )
        except BaseException:
            pipe.close()
            await self._discard(child.proc)
            raise
        return reader, transport

    def _exited(self, pid: int) -> None:
        """Call :attr:`on_exit` for ``pid``; what it raises is logged: the bookkeeping of a
        dead process (its metrics files) must not end the supervisor and its other children."""
        if self.on_exit is None:
            return
        try:
            self.on_exit(pid)
        except Exception:
            logger.exception("the exit hook failed for worker process pid %d", pid)

    async def _discard(self, proc: asyncio.subprocess.Process) -> None:
        """Kill and reap ``proc``, just started, whose log cannot be read: unwatched, it would
        run on beside its replacement (it has done nothing yet: SIGKILL loses nothing)."""
        _send(proc, signal.SIGKILL)
        await proc.wait()
        self._exited(proc.pid)

    async def _relay_until_exit(
        self, child: _Child, log: tuple[asyncio.StreamReader, asyncio.BaseTransport]
    ) -> int:
        """Relay ``child``'s log until its process exits; return its exit code.

        Its last lines are relayed before this returns, unless a process it started holds
        its stderr open: then what comes is relayed on in the background, while it does.
        """
        proc = child.proc
        assert proc is not None
        relay = asyncio.create_task(self._relay(child, proc, *log))
        try:
            code = await proc.wait()
        except BaseException:
            relay.cancel()
            log[1].close()  # (the relay's own close does not run if it never started)
            raise
        await asyncio.wait([relay], timeout=_DRAIN)
        if not relay.done():
            self._leftover_logs.add(relay)
            relay.add_done_callback(self._leftover_logs.discard)
        return code

    async def _relay(
        self,
        child: _Child,
        proc: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        pipe: asyncio.BaseTransport,
    ) -> None:
        """Copy ``proc``'s stderr to ours, line by line (a line longer than
        :data:`_LINE_LIMIT` bytes in pieces), noting (not copying) its :data:`_READY` line,
        until the end of the pipe; then close it."""
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as end:  # the pipe is closed
                    _write(end.partial)
                    return
                except asyncio.LimitOverrunError:
                    _write(await reader.read(_LINE_LIMIT))  # a piece of a very long line
                    continue
                if not child.ready.is_set() and line.endswith(_READY):
                    line = line[: -len(_READY)]  # (what came before it on the line, if any)
                    if child.proc is proc and proc.returncode is None:
                        child.ready.set()
                        child.up = True
                _write(line)
        finally:
            pipe.close()

    async def _announce_ready(self) -> None:
        await asyncio.gather(*(child.ready.wait() for child in self.children))
        pids = ", ".join(str(c.proc.pid) for c in self.children if c.proc is not None)
        # Scripts wait for a line with "ready", as with a single worker.
        logger.log(
            max(logging.INFO, logger.getEffectiveLevel()),
            "supervisor ready: all %d worker processes are ready (pids %s)",
            len(self.children),
            pids,
        )

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        live = [c.proc for c in self.children if c.proc is not None and c.proc.returncode is None]
        if self._signals == 1:
            logger.info("%s received: warm shutdown of %d worker processes", sig.name, len(live))
        else:
            logger.warning("second %s: stopping worker processes now", sig.name)
        self._stop_children()

    def _give_up(self, child: _Child, code: int, last: str) -> None:
        """Stop everything: ``child`` died before it was ready (or could not be started) too
        often in a row; the last time with ``code``, as ``last`` says."""
        logger.critical(
            "worker process %d failed to start %d times in a row (last: %s; its error "
            "is above): not starting it again; stopping the other worker processes",
            child.index,
            child.failed_starts,
            last,
        )
        self._gave_up = code if 0 < code < 256 else 1
        self._stop_children()

    def _stop_children(self) -> None:
        """Begin the shutdown: SIGTERM to every live child (once more on a second call)."""
        self._stopping.set()
        for c in self.children:
            if c.proc is not None and c.proc.returncode is None:
                _send(c.proc, signal.SIGTERM)

    async def _kill_late(self) -> None:
        await asyncio.sleep(self.shutdown_timeout + _KILL_GRACE)
        for child in self.children:
            if child.proc is not None and child.proc.returncode is None:
                logger.error(
                    "worker process %d (pid %d) did not stop: killing it",
                    child.index,
                    child.proc.pid,
                )
                _send(child.proc, signal.SIGKILL)


def _send(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)


def _write(data: bytes) -> None:
    """Write ``data`` to our stderr; a stderr that fails (closed, full disk) is ignored, so
    that the children's pipes are still read and they never block on a log line."""
    with contextlib.suppress(OSError, ValueError):
        out = sys.stderr.buffer
        out.write(data)
        out.flush()


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {-code}: {signal.Signals(-code).name}"
        return f"signal {-code}"
    return f"exit code {code}"


def _die_with_parent() -> None:
    """In a child: get SIGTERM when the supervisor dies (Linux), or stop now if it has."""
    parent = os.environ.pop(_PARENT_ENV, None)
    if parent is None:
        return
    from aqueue import signals
    from aqueue.worker.worker import mark_supervised

    mark_supervised()  # worker_max_*_per_child apply here
    signals.worker_ready.connect(_say_ready)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    if os.getppid() != int(parent):  # it died before the request above took effect
        sys.exit(0)


def _say_ready(**_: Any) -> None:
    """In a child, on ``worker_ready``: tell the supervisor (:data:`_READY` on stderr)."""
    with contextlib.suppress(OSError):  # (no supervisor left to tell)
        os.write(2, _READY)


if __name__ == "__main__":  # a child: ``python -m aqueue.worker.supervisor worker -A ...``
    _die_with_parent()
    from aqueue.cli import main

    main()
