"""Every Redis key and channel name aqueue uses, in one place.

All names start with ``aqueue:`` so an aqueue deployment can share a Redis database with other
applications and ``SCAN aqueue:*`` finds everything it stored::

    aqueue:stream:<queue>:<priority>   stream of ready messages, one per queue and level 0..9
    aqueue:delayed                     sorted set of messages waiting for their eta (score: ms)
    aqueue:dlq:<queue>                 stream of dead-lettered messages of <queue>
    aqueue:result:<task_id>            string: the task's result record
    aqueue:result-events:<task_id>     pub/sub channel: each new result record of the task
    aqueue:counter:<key>               integer: a chord counter

The consumer group of every queue stream is named :data:`GROUP`. The priority is the last part
of a stream name and a single digit, so ``<queue>`` may itself contain colons without two
(queue, priority) pairs sharing a key.
"""

from __future__ import annotations

PREFIX = "aqueue:"
GROUP = "aqueue"  # the consumer group of every queue stream
PRIORITIES = range(10)  # stream levels of a queue; 9 is read first


def stream(queue: str, priority: int) -> str:
    """The stream holding ``queue``'s ready messages of ``priority`` (0..9)."""
    return f"{PREFIX}stream:{queue}:{priority}"


def delayed() -> str:
    """The sorted set of delayed messages of every queue, scored by eta in milliseconds."""
    return f"{PREFIX}delayed"


def dlq(queue: str) -> str:
    """The stream of ``queue``'s dead-lettered messages."""
    return f"{PREFIX}dlq:{queue}"


def result(task_id: str) -> str:
    """The string key holding ``task_id``'s result record."""
    return f"{PREFIX}result:{task_id}"


def result_channel(task_id: str) -> str:
    """The pub/sub channel on which each new record of ``task_id`` is published."""
    return f"{PREFIX}result-events:{task_id}"


def counter(key: str) -> str:
    """The integer key of the counter ``key`` (chord header completions)."""
    return f"{PREFIX}counter:{key}"
