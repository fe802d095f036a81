"""Hash every ``*.py`` file under a directory through aqueue workers, then report throughput.

Run from the repository root (both forms work)::

    python -m examples.filehash.producer --spawn-worker               # no server: embedded SQLite
    python -m examples.filehash.producer --spawn-worker --broker redis://127.0.0.1:6379/0
    python -m examples.filehash.producer --broker memory://           # worker inside this process
    python examples/filehash/producer.py --spawn-worker --limit 500

``--spawn-worker`` starts ``aqueue worker -A examples.filehash.tasks -c 50 -l warning`` as a
child process, waits for its ``ready`` line, and stops it with SIGTERM at the end (also on an
error or Ctrl-C). With no ``--broker`` and no ``$AQUEUE_BROKER_URL``, both sides then share a
SQLite file in a temporary directory that is removed afterwards. Without ``--spawn-worker``
(and not ``memory://``), a worker must already consume the same broker::

    aqueue worker -A examples.filehash.tasks -c 50

One task is sent per file, at most ``--in-flight`` awaiting their result at a time. The summary
(files, bytes, lines, elapsed seconds, tasks/s) goes to stdout; the exit status is 0 only if
every task succeeded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
import sysconfig
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if __package__ in (None, ""):  # run as a script: make `examples.filehash` importable
    sys.path.insert(0, str(REPO_ROOT))

WORKER_APP = "examples.filehash.tasks"
WORKER_CONCURRENCY = 50
READY_TIMEOUT = 30.0  # seconds for the spawned worker to log its `ready` line
READY = re.compile(r"\bready\b", re.IGNORECASE)  # "ready", not "already"
STOP_GRACE = 15.0  # seconds after SIGTERM before a second SIGTERM (stop now), then SIGKILL
BROKER_ENV = "AQUEUE_BROKER_URL"
BACKEND_ENV = "AQUEUE_RESULT_BACKEND"

# Every worker child started, so that main() can kill one that an interrupted cleanup left alive.
_children: list[asyncio.subprocess.Process] = []


class WorkerFailed(Exception):
    """The spawned worker exited, or never became ready."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.filehash.producer",
        description="Hash files with aqueue workers and print throughput.",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(sysconfig.get_paths()["stdlib"]),
        help="directory searched recursively for *.py files (default: this Python's stdlib, "
        "without site-packages)",
    )
    parser.add_argument("--limit", type=int, default=None, help="hash at most N files")
    parser.add_argument(
        "--broker",
        default=None,
        help="broker and result backend URL (default: $AQUEUE_BROKER_URL, else SQLite)",
    )
    parser.add_argument(
        "--spawn-worker",
        action="store_true",
        help=f"run `aqueue worker -A {WORKER_APP} -c {WORKER_CONCURRENCY}` for the duration",
    )
    parser.add_argument(
        "--worker-loglevel",
        default="warning",
        help="the spawned worker's -l (default warning; its output goes to stderr)",
    )
    parser.add_argument(
        "--in-flight",
        type=int,
        default=500,
        help="tasks sent but not yet finished, at most (default 500)",
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for each result (default 60)"
    )
    parser.add_argument(
        "--bulk",
        action="store_true",
        help="send every file in batches of --in-flight with hash_file.delay_many (the bulk "
        "path: one broker round trip per batch), then await the results",
    )
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    if args.in_flight < 1:
        parser.error("--in-flight must be at least 1")
    if not args.dir.is_dir():
        parser.error(f"--dir {args.dir} is not a directory")
    if args.spawn_worker and _is_memory(args.broker or os.environ.get(BROKER_ENV)):
        parser.error("memory:// lives in one process: drop --spawn-worker to use it")
    return args


def _is_memory(url: str | None) -> bool:
    return bool(url) and str(url).lower().startswith("memory:")


def find_files(root: Path, limit: int | None) -> list[Path]:
    """``*.py`` files under ``root``, sorted, skipping installed packages (``site-packages``)."""
    skip = {"site-packages", "dist-packages", "__pycache__"}
    found = sorted(
        p.resolve()
        for p in root.rglob("*.py")
        if p.is_file() and not skip.intersection(p.relative_to(root).parts)
    )
    return found[:limit] if limit is not None else found


@dataclass
class Totals:
    files: int = 0
    size: int = 0
    lines: int = 0
    errors: list[tuple[Path, BaseException]] = field(default_factory=list)


async def hash_all(paths: list[Path], in_flight: int, timeout: float, bulk: bool = False) -> Totals:
    """Send one ``hash_file`` per path and await every result, ``in_flight`` at a time.

    ``bulk``: each batch of ``in_flight`` files goes out in one ``delay_many`` call.
    """
    from examples.filehash.tasks import hash_file

    outcomes: list[Any] = []
    if bulk:
        for start in range(0, len(paths), in_flight):
            batch = paths[start : start + in_flight]
            results = await hash_file.delay_many((str(p),) for p in batch)
            outcomes += await asyncio.gather(
                *(r.get(timeout=timeout) for r in results), return_exceptions=True
            )
    else:
        slots = asyncio.Semaphore(in_flight)

        async def one(path: Path) -> dict[str, Any]:
            async with slots:
                result = await hash_file.delay(str(path))
                return await result.get(timeout=timeout)

        outcomes = await asyncio.gather(*(one(p) for p in paths), return_exceptions=True)
    totals = Totals()
    for path, outcome in zip(paths, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            if isinstance(outcome, asyncio.CancelledError | KeyboardInterrupt):
                raise outcome
            totals.errors.append((path, outcome))
            continue
        totals.files += 1
        totals.size += int(outcome["size"])
        totals.lines += int(outcome["lines"])
    return totals


# -- the spawned worker ------------------------------------------------------------------------


def _aqueue_command() -> str:
    beside = Path(sys.executable).with_name("aqueue")  # the same virtualenv as this Python
    if beside.exists():
        return str(beside)
    found = shutil.which("aqueue")
    if found is None:
        raise WorkerFailed("the `aqueue` command is not installed: run `pip install -e .` first")
    return found


async def _forward(stream: asyncio.StreamReader) -> None:
    # Keep reading after `ready`: a worker blocked on a full pipe would stop working.
    while line := await stream.readline():
        sys.stderr.write(f"worker: {line.decode(errors='replace')}")


@contextlib.asynccontextmanager
async def spawned_worker(
    env: dict[str, str],
    loglevel: str = "warning",
    app: str = WORKER_APP,
    concurrency: int = WORKER_CONCURRENCY,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run an ``aqueue worker -A app`` child until the block exits; yields once it logged
    ``ready``.

    The child gets its own session, so a Ctrl-C in the terminal reaches only this process,
    which then stops the worker in order (SIGTERM, a second SIGTERM, SIGKILL as a last resort).

    Raises:
        WorkerFailed: the worker exited, or did not log ``ready`` within ``READY_TIMEOUT``.
    """
    cmd = [
        _aqueue_command(),
        "worker",
        "-A",
        app,
        "-c",
        str(concurrency),
        "-l",
        loglevel,
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    _children.append(proc)
    forwarder: asyncio.Task[None] | None = None
    try:
        assert proc.stdout is not None
        await _wait_ready(proc, proc.stdout)
        forwarder = asyncio.create_task(_forward(proc.stdout))
        yield proc
    finally:
        await _stop(proc)
        if forwarder is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(forwarder, 5.0)


async def _wait_ready(proc: asyncio.subprocess.Process, stream: asyncio.StreamReader) -> None:
    seen: list[str] = []
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            while True:
                raw = await stream.readline()
                if not raw:
                    code = await proc.wait()
                    raise WorkerFailed(
                        f"the worker exited with status {code} before it was ready:\n"
                        + "".join(seen[-20:])
                    )
                line = raw.decode(errors="replace")
                seen.append(line)
                if READY.search(line):
                    return
    except TimeoutError:
        raise WorkerFailed(
            f"the worker logged no `ready` line within {READY_TIMEOUT:g}s:\n" + "".join(seen[-20:])
        ) from None


async def _stop(proc: asyncio.subprocess.Process) -> None:
    # SIGTERM is a warm shutdown; a second one tells the worker to stop now; SIGKILL if stuck.
    for sig, grace in ((signal.SIGTERM, STOP_GRACE), (signal.SIGTERM, 5.0), (signal.SIGKILL, None)):
        if proc.returncode is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            continue
    if proc.returncode not in (0, None, -signal.SIGTERM):
        print(f"warning: the worker exited with status {proc.returncode}", file=sys.stderr)


# -- main --------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, env: dict[str, str]) -> int:
    """Hash the files; return the exit status (0 when every task succeeded)."""
    from aqueue import Worker
    from examples.filehash.tasks import app

    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None

    def on_sigterm() -> None:  # clean up as for Ctrl-C; a second SIGTERM must not cut that short
        loop.remove_signal_handler(signal.SIGTERM)
        loop.add_signal_handler(signal.SIGTERM, lambda: None)
        main_task.cancel()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)

    paths = find_files(args.dir, args.limit)
    if not paths:
        print(f"no *.py files under {args.dir}", file=sys.stderr)
        return 1
    url = app.conf.resolved_broker_url()
    print(f"hashing {len(paths)} files from {args.dir} via {url}", file=sys.stderr)

    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(app.close)
        worker_exit: asyncio.Future[Any] | None = None
        if args.spawn_worker:
            proc = await stack.enter_async_context(spawned_worker(env, args.worker_loglevel))
            worker_exit = asyncio.ensure_future(proc.wait())
            stack.callback(worker_exit.cancel)
        elif _is_memory(url):
            await stack.enter_async_context(Worker(app, concurrency=WORKER_CONCURRENCY))
        await app.broker()  # connect before the clock starts
        await app.result_backend()

        started = time.perf_counter()
        work = asyncio.ensure_future(hash_all(paths, args.in_flight, args.timeout, args.bulk))
        if worker_exit is not None:
            await asyncio.wait([work, worker_exit], return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
                print(f"the worker exited early (status {worker_exit.result()})", file=sys.stderr)
                return 1
        totals = await work
        elapsed = time.perf_counter() - started

    for path, exc in totals.errors[:5]:
        print(f"failed: {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
    if len(totals.errors) > 5:
        print(f"... and {len(totals.errors) - 5} more failures", file=sys.stderr)
    rows = [
        ("files", f"{totals.files:,}"),
        ("failed", f"{len(totals.errors):,}"),
        ("total bytes", f"{totals.size:,}"),
        ("total lines", f"{totals.lines:,}"),
        ("elapsed", f"{elapsed:.2f} s"),
        ("tasks/s", f"{len(paths) / elapsed:,.1f}"),
    ]
    for label, value in rows:
        print(f"{label:<12} {value:>14}")
    return 0 if not totals.errors else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(args, args.broker, args.spawn_worker, "aqueue-filehash-", run)


def run_main(
    args: argparse.Namespace,
    broker: str | None,
    spawn: bool,
    prefix: str,
    runner: Callable[[argparse.Namespace, dict[str, str]], Coroutine[Any, Any, int]],
) -> int:
    """Set up the broker and result backend URLs, run ``runner``, and map stops to exit codes.

    With no broker given and ``spawn`` set, both sides use the embedded SQLite default in a
    temporary directory. RabbitMQ stores no results, so an ``amqp://`` broker keeps them in
    ``$AQUEUE_RESULT_BACKEND``, else in a SQLite file in a temporary directory.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    with contextlib.ExitStack() as stack:
        url = broker or env.get(BROKER_ENV)
        if url is None and spawn:
            # The embedded default, in a directory of our own that goes away afterwards.
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix))
            url = f"sqlite:///{tmp}/aqueue.db"
        if url is not None:
            env[BROKER_ENV] = url
            backend = env.get(BACKEND_ENV) if broker is None else None
            if url.startswith(("amqp://", "amqps://")):
                backend = env.get(BACKEND_ENV)
                if backend is None:
                    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix))
                    backend = f"sqlite:///{tmp}/results.db"
            env[BACKEND_ENV] = backend or url
            os.environ[BROKER_ENV] = env[BROKER_ENV]  # read by the app when it connects
            os.environ[BACKEND_ENV] = env[BACKEND_ENV]
        try:
            return asyncio.run(runner(args, env))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except asyncio.CancelledError:  # SIGTERM
            print("terminated", file=sys.stderr)
            return 143
        except WorkerFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            for proc in _children:
                if proc.returncode is None:  # a second Ctrl-C cut the orderly stop short
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
