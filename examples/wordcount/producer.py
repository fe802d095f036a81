"""Count the words of every ``*.py`` file of the standard library with a map-reduce chord.

One ``count_words`` task per file (the chord's header), then ``top_words`` once with the list
of all the per-file counts (the body), sent by the worker that stores the last header result;
the producer only awaits the body's result and prints the 20 most frequent words and the time
taken. Run from the repository root::

    python -m examples.wordcount.producer                                  # embedded SQLite
    python -m examples.wordcount.producer --broker redis://127.0.0.1:6379/0
    python -m examples.wordcount.producer --broker memory://               # all in-process
    make demo-wordcount [BROKER=redis://127.0.0.1:6379/0]

A worker process (``aqueue worker -A examples.wordcount.tasks``) is started for the run and
stopped at the end (``examples/filehash/producer.py`` does the spawning); with no ``--broker``
and no ``$AQUEUE_BROKER_URL`` both share a SQLite file in a temporary directory. With
``--no-spawn`` a worker must already consume the same broker; with ``memory://`` the worker runs
inside this process. The exit status is 0 when the chord succeeded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if __package__ in (None, ""):  # run as a script: make `examples.wordcount` importable
    sys.path.insert(0, str(REPO_ROOT))

from examples.filehash.producer import (  # noqa: E402 - after the sys.path fix above
    find_files,
    run_main,
    spawned_worker,
)

WORKER_APP = "examples.wordcount.tasks"
WORKER_CONCURRENCY = 8  # CPU-bound tasks in threads: more would only wait on the GIL


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.wordcount.producer",
        description="Count words in *.py files with an aqueue chord and print the top ones.",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(sysconfig.get_paths()["stdlib"]),
        help="directory searched recursively for *.py files (default: this Python's stdlib)",
    )
    parser.add_argument("--limit", type=int, default=None, help="count at most N files")
    parser.add_argument("--top", type=int, default=20, help="how many words to print (20)")
    parser.add_argument(
        "--broker",
        default=None,
        help="broker and result backend URL (default: $AQUEUE_BROKER_URL, else SQLite)",
    )
    parser.add_argument(
        "--no-spawn",
        action="store_true",
        help="do not start a worker process: one must already consume the broker",
    )
    parser.add_argument(
        "--worker-loglevel", default="warning", help="the spawned worker's -l (default warning)"
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for the result (300)"
    )
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    if args.top < 1:
        parser.error("--top must be at least 1")
    if not args.dir.is_dir():
        parser.error(f"--dir {args.dir} is not a directory")
    return args


def _is_memory(url: str | None) -> bool:
    return bool(url) and str(url).lower().startswith("memory:")


async def run(args: argparse.Namespace, env: dict[str, str]) -> int:
    """Send the chord, wait for the top words, print them; return the exit status."""
    from aqueue import Worker, chord
    from examples.wordcount.tasks import app, count_words, top_words

    main_task = asyncio.current_task()
    assert main_task is not None
    # SIGTERM cleans up as Ctrl-C does: the spawned worker is stopped, not left behind.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)

    paths = find_files(args.dir, args.limit)
    if not paths:
        print(f"no *.py files under {args.dir}", file=sys.stderr)
        return 1
    url = app.conf.resolved_broker_url()
    print(f"counting words in {len(paths)} files from {args.dir} via {url}", file=sys.stderr)

    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(app.close)
        worker_exit: asyncio.Future[Any] | None = None
        if _is_memory(url):
            await stack.enter_async_context(Worker(app, concurrency=WORKER_CONCURRENCY))
        elif not args.no_spawn:
            proc = await stack.enter_async_context(
                spawned_worker(env, args.worker_loglevel, WORKER_APP, WORKER_CONCURRENCY)
            )
            worker_exit = asyncio.ensure_future(proc.wait())
            stack.callback(worker_exit.cancel)
        await app.broker()  # connect before the clock starts
        await app.result_backend()

        started = time.perf_counter()
        workflow = chord((count_words.s(str(p)) for p in paths), top_words.s(args.top))
        result = await workflow.delay()
        work = asyncio.ensure_future(result.get(timeout=args.timeout))
        if worker_exit is not None:
            await asyncio.wait([work, worker_exit], return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                work.cancel()
                print(f"the worker exited early (status {worker_exit.result()})", file=sys.stderr)
                return 1
        try:
            top = await work
        except Exception as exc:  # the chord failed: say why, as the task raised it
            print(f"failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        elapsed = time.perf_counter() - started

    width = max(len(word) for word, _ in top)
    for rank, (word, count) in enumerate(top, 1):
        print(f"{rank:>3}  {word:<{width}}  {count:>9,}")
    print(f"{len(paths):,} files, {len(paths) + 1:,} tasks, {elapsed:.2f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(args, args.broker, not args.no_spawn, "aqueue-wordcount-", run)


if __name__ == "__main__":
    sys.exit(main())
