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
    aqueue:waited                      sorted set of task ids others wait for (score: until, ms)
    aqueue:beat:<app>:entries          hash: beat entries stored at runtime, name -> JSON
    aqueue:beat:<app>:last             hash: each beat entry's last tick sent (epoch ms)
    aqueue:beat:<app>:claim:<entry>:<tick>  string: which beat sends that tick

These are the names on one server (or a primary with replicas, with or without Sentinel).
The roles name keys through a :class:`Layout`: :data:`SINGLE` gives the names above,
:data:`CLUSTER` (Redis Cluster, ``redis+cluster://``) the hash-tagged ones of
:class:`ClusterLayout`.

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


def waited() -> str:
    """The sorted set of task ids that tasks sent with ``after=`` wait for (score: until when,
    ms): the store script reads it once per batch instead of one waiter set per record."""
    return f"{PREFIX}waited"


def beat_entries(app: str) -> str:
    """The hash of app ``app``'s beat entries stored at runtime (name -> JSON)."""
    return f"{PREFIX}beat:{app}:entries"


def beat_last(app: str) -> str:
    """The hash of app ``app``'s last tick sent per beat entry (epoch milliseconds)."""
    return f"{PREFIX}beat:{app}:last"


def beat_claim(app: str, entry: str, tick: int) -> str:
    """The claim of beat entry ``entry``'s ``tick`` (epoch milliseconds) in app ``app``."""
    return f"{PREFIX}beat:{app}:claim:{entry}:{tick}"


def hash_tag(key: str) -> str:
    """The part of ``key`` Redis Cluster hashes to pick its slot: the text between the first
    ``{`` and the first ``}`` after it when that is not empty, else the whole key (Redis
    Cluster's hash tag rule)."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


class Layout:
    """Where aqueue's keys live on one Redis server (or a primary with replicas, with or without
    Sentinel): the names in this module's docstring, unchanged.

    The roles name their keys through a layout (``SharedClient.layout``), so that
    :class:`ClusterLayout` can tag them for Redis Cluster. Keys of one :meth:`shard` may be
    used together by one script or ``MULTI``; here every key is in the one shard ``""``.
    """

    #: True when keys spread over a cluster's slots (scripts run per :meth:`shard`).
    cluster = False

    def shard(self, key: str) -> str:
        """What ``key``'s slot depends on: keys with equal shards may share a script run."""
        return ""

    def stream(self, queue: str, priority: int) -> str:
        """The stream holding ``queue``'s ready messages of ``priority`` (0..9)."""
        return stream(queue, priority)

    def stream_prefix(self, queue: str) -> str:
        """What every stream of ``queue`` starts with (the fetch script checks delayed members
        against it)."""
        return STREAM_PREFIX

    def delayed(self, queue: str) -> str:
        """The sorted set where ``queue``'s delayed messages wait (scored by eta, ms)."""
        return delayed()

    def delayed_rejected(self, queue: str) -> str:
        """The stream where malformed members of :meth:`delayed` are set aside."""
        return delayed_rejected()

    def dlq(self, queue: str) -> str:
        """The stream of ``queue``'s dead-lettered messages."""
        return dlq(queue)

    def result(self, task_id: str) -> str:
        """The string key holding ``task_id``'s result record."""
        return result(task_id)

    def result_channel(self, task_id: str) -> str:
        """The channel each new record of ``task_id`` is published on (to its watchers)."""
        return result_channel(task_id)

    def control_table(self, table: str) -> str:
        """The hash holding control table ``table``."""
        return control_table(table)

    def control_version(self, table: str) -> str:
        """The version counter of control table ``table``."""
        return control_version(table)

    def beat_entries(self, app: str) -> str:
        """The hash of app ``app``'s beat entries stored at runtime."""
        return beat_entries(app)

    def beat_last(self, app: str) -> str:
        """The hash of app ``app``'s last tick sent per beat entry."""
        return beat_last(app)

    def beat_claim(self, app: str, entry: str, tick: int) -> str:
        """The claim of beat entry ``entry``'s ``tick`` in app ``app``."""
        return beat_claim(app, entry, tick)


class ClusterLayout(Layout):
    """Where aqueue's keys live on Redis Cluster: every key a script or ``MULTI`` uses together
    carries one hash tag (``{...}``), so it lands in one slot, and different queues, task ids,
    tables and apps spread over the slots (and so over the primaries)::

        aqueue:{<queue>}:stream:<priority>     a queue's streams, delayed set, set-aside stream
        aqueue:{<queue>}:delayed               and dead-letter stream: one slot per queue
        aqueue:{<queue>}:delayed-rejected
        aqueue:{<queue>}:dlq
        aqueue:{<task_id>}:result              a task's record, its watch mark and its channel
        aqueue:{<task_id>}:watched             (sharded pub/sub): one slot per task id
        aqueue:{<task_id>}:result-events
        aqueue:table:{<table>}                 a control table and its version counter
        aqueue:table-version:{<table>}
        aqueue:beat:{<app>}:entries            an app's beat hashes and claims
        aqueue:beat:{<app>}:last
        aqueue:beat:{<app>}:claim:<entry>:<tick>

    Channels (``aqueue:control:<channel>``, ``aqueue:reply:<token>``), token buckets and member
    sets keep their names: each is one key or channel used alone. A name holding ``}`` still
    keeps its keys together (all of them share the text up to it).
    """

    cluster = True

    def shard(self, key: str) -> str:
        return hash_tag(key)

    def stream(self, queue: str, priority: int) -> str:
        return f"{PREFIX}{{{queue}}}:stream:{priority}"

    def stream_prefix(self, queue: str) -> str:
        return f"{PREFIX}{{{queue}}}:stream:"

    def delayed(self, queue: str) -> str:
        return f"{PREFIX}{{{queue}}}:delayed"

    def delayed_rejected(self, queue: str) -> str:
        return f"{PREFIX}{{{queue}}}:delayed-rejected"

    def dlq(self, queue: str) -> str:
        return f"{PREFIX}{{{queue}}}:dlq"

    def result(self, task_id: str) -> str:
        return f"{PREFIX}{{{task_id}}}:result"

    def watched(self, task_id: str) -> str:
        """The mark that ``task_id`` is watched on its own channel (expires, PX)."""
        return f"{PREFIX}{{{task_id}}}:watched"

    def result_channel(self, task_id: str) -> str:
        return f"{PREFIX}{{{task_id}}}:result-events"

    def control_table(self, table: str) -> str:
        return f"{control_table.prefix}{{{table}}}"

    def control_version(self, table: str) -> str:
        return f"{control_version.prefix}{{{table}}}"

    def beat_entries(self, app: str) -> str:
        return f"{PREFIX}beat:{{{app}}}:entries"

    def beat_last(self, app: str) -> str:
        return f"{PREFIX}beat:{{{app}}}:last"

    def beat_claim(self, app: str, entry: str, tick: int) -> str:
        return f"{PREFIX}beat:{{{app}}}:claim:{entry}:{tick}"


#: The layout of a single server, a primary with replicas, or Sentinel.
SINGLE = Layout()
#: The layout of Redis Cluster (``redis+cluster://``).
CLUSTER = ClusterLayout()
