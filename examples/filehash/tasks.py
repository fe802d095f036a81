"""The filehash app: one task that hashes a file.

Start a worker for it from the repository root::

    aqueue worker -A examples.filehash.tasks -c 50 -l info

The broker and result backend come from ``$AQUEUE_BROKER_URL`` / ``$AQUEUE_RESULT_BACKEND``,
else the embedded default, ``aqueue.db`` beside this file (whatever the working directory), so a
worker and ``producer.py`` on one machine need no server.
"""

from __future__ import annotations

import hashlib

from aqueue import Aqueue

app = Aqueue("filehash")

CHUNK_SIZE = 1 << 20  # bytes read at a time: a large file never sits in memory whole


# A plain function, not `async def`: the work is blocking file reads and hashing, and the worker
# runs plain functions in its thread pool (one thread per concurrency slot), so the event loop
# never blocks. hashlib releases the GIL while it hashes a buffer, so the threads hash in parallel.
# An async version would only wrap the same reads in `asyncio.to_thread`.
@app.task(name="filehash.hash_file")
def hash_file(path: str) -> dict[str, int | str]:
    """The SHA-256 (hex), size in bytes and number of lines (count of ``b"\\n"``) of a file.

    Args:
        path: an absolute path, readable by the worker.

    Raises:
        OSError: the file cannot be read; the task fails with it.
    """
    digest = hashlib.sha256()
    size = 0
    lines = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
            lines += chunk.count(b"\n")
    return {"path": path, "sha256": digest.hexdigest(), "size": size, "lines": lines}
