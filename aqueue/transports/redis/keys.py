"""Every Redis key and channel name aqueue uses, in one place.

All names start with ``aqueue:`` so an aqueue deployment can share a Redis database with other
applications and ``SCAN aqueue:*`` finds everything it stored::

    aqueue:stream:<queue>:<priority>   stream of ready messages, one per queue and level 0..9
    aqueue:delayed                     sorted set of messages waiting for their eta (score: ms)
    aqueue:delayed-rejected            stream of malformed delayed members set aside (m, r, t)
    aqueue:dlq:<queue>                 stream of dead-lettered messages of <queue>
    aqueue:result:<task_id>            string: the task's result record
    aqueue:result-events:<task_id>     pub/sub channel: each new result record of the task
    aqueue:control:<channel>           pub/sub channel of remote control (.control)
    aqueue:table:<table>               hash: a control table (revoked, rate_limits, workers)
    aqueue:table-version:<table>       integer: bumped by every change of that table
    aqueue:bucket:<name>               hash: a global rate-limit token bucket (tokens, updated)
    aqueue:members:<key>               set: distinct members (ResultBackend.add_member, chords)
    aqueue:beat:<app>:entries          hash: beat entries stored at runtime, name -> JSON
    aqueue:beat:<app>:last             hash: each beat entry's last tick sent (epoch ms)
    aqueue:beat:<app>:claim:<entry>:<tick>  string: which beat sends that tick

The consumer group of every queue stream is named :data:`GROUP`. The priority is the last part
of a stream name and a single digit, so ``<queue>`` may itself contain colons without two
(queue, priority) pairs sharing a key.
"""

from __future__ import annotations

PREFIX = "aqueue:"
GROUP = "aqueue"  # the consumer group of every queue stream
PRIORITIES = range(10)  # stream levels of a queue; 9 is read first
STREAM_PREFIX = f"{PREFIX}stream:"  # every queue stream's name starts with this


def stream(queue: str, priority: int) -> str:
    """The stream holding ``queue``'s ready messages of ``priority`` (0..9)."""
    return f"{STREAM_PREFIX}{queue}:{priority}"


def delayed() -> str:
    """The sorted set of delayed messages of every queue, scored by eta in milliseconds."""
    return f"{PREFIX}delayed"


def delayed_rejected() -> str:
    """The stream where the fetch script sets aside malformed members of :func:`delayed`
    (fields ``m``: the member, ``r``: why, ``t``: when, epoch ms); capped near 10,000."""
    return f"{PREFIX}delayed-rejected"


class KeyFamily:
    """Keys ``aqueue:<kind>:<name>``, one per name: ``family(name) -> str``."""

    def __init__(self, kind: str, doc: str) -> None:
        self.prefix = f"{PREFIX}{kind}:"
        self.__doc__ = doc

    def __call__(self, name: str) -> str:
        return self.prefix + name

    def __repr__(self) -> str:
        return f"KeyFamily({self.prefix!r})"


dlq = KeyFamily("dlq", "The stream of a queue's dead-lettered messages.")
result = KeyFamily("result", "The string key holding a task id's result record.")
result_channel = KeyFamily(
    "result-events", "The pub/sub channel on which each new record of a task id is published."
)
reply_channel = KeyFamily(
    "reply", "The pub/sub channel of one client's replies (see :mod:`aqueue.results.mailbox`)."
)
control_channel = KeyFamily(
    "control", "The pub/sub channel of a control channel (commands, replies, events)."
)
control_table = KeyFamily(
    "table", "The hash holding a control table (field: key, value: ``<expiry ms>:<data>``)."
)
control_version = KeyFamily("table-version", "The version counter of a control table.")
rate_bucket = KeyFamily("bucket", "The hash of a global rate-limit token bucket.")
members = KeyFamily("members", "The set of a key's members (chord header members completed).")
lock = KeyFamily("lock", "A named lock's owner (unique tasks, idempotent sends), with its expiry.")
REPLY_PREFIX = reply_channel.prefix


def watched() -> str:
    """The sorted set of task ids watched on their own channel (score: until when, ms)."""
    return f"{PREFIX}watched"


def beat_entries(app: str) -> str:
    """The hash of app ``app``'s beat entries stored at runtime (name -> JSON)."""
    return f"{PREFIX}beat:{app}:entries"


def beat_last(app: str) -> str:
    """The hash of app ``app``'s last tick sent per beat entry (epoch milliseconds)."""
    return f"{PREFIX}beat:{app}:last"


def beat_claim(app: str, entry: str, tick: int) -> str:
    """The claim of beat entry ``entry``'s ``tick`` (epoch milliseconds) in app ``app``."""
    return f"{PREFIX}beat:{app}:claim:{entry}:{tick}"
