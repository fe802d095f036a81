"""The control wire format: channel and table names, commands and replies (JSON, orjson).

A command, published on :data:`CONTROL_CHANNEL` to every worker::

    {"id": "…", "command": "rate_limit", "arguments": {"task": "proj.add", "rate": "10/m"},
     "destination": null, "reply_to": "reply.…"}

``destination`` lists the hostnames that should act (``null``: all; one name alone is a list of
one). A message that does not fit this shape is skipped by the worker. A worker answers on the
``reply_to`` channel (none: no answer is wanted)::

    {"id": "…", "hostname": "aqueue@host", "pid": 123, "node": "…", "reply": {...}}

or with ``"error": "message"`` instead of ``"reply"`` when the command failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from aqueue.exceptions import DecodeError

__all__ = [
    "CONTROL_CHANNEL",
    "EVENTS_CHANNEL",
    "Command",
    "Reply",
    "Table",
    "dumps",
]

#: Every worker listens here for commands.
CONTROL_CHANNEL = "control"
#: Task and worker events (``-E``), read by ``aqueue events``.
EVENTS_CHANNEL = "events"


class Table(StrEnum):
    """The control tables (see :class:`~aqueue.transports.base.ControlTransport`)."""

    #: Revoked task ids -> ``{"terminate": bool, "time": epoch}``; entries expire.
    REVOKED = "revoked"
    #: Task name -> rate set at runtime (``aqueue control rate_limit``), overriding the code's.
    RATE_LIMITS = "rate_limits"
    #: Worker node id -> its last heartbeat (see :class:`aqueue.worker.remote.Remote`).
    WORKERS = "workers"
    #: Worker node id -> its last heartbeat, kept much longer (``WORKER_LOST_TTL``): a node here
    #: and no longer in ``WORKERS`` stopped beating without shutting down - it is *lost*.
    SEEN = "seen"


def dumps(value: Any) -> bytes:
    """JSON for the control plane: anything not JSON-native is sent as its ``repr``."""
    return orjson.dumps(value, default=repr, option=orjson.OPT_NON_STR_KEYS)


def _loads(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"{what} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise DecodeError(f"{what} is not a JSON object")
    return value


def heartbeats(entries: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    """The heartbeats of a ``WORKERS`` or ``SEEN`` table read (node id -> raw entry), decoded:
    node id -> beat object. An entry that is not a JSON object is skipped, so one bad write to
    the table cannot stop ``status``, ``inspect`` or the dashboard."""
    beats = {}
    for node, raw in entries.items():
        try:
            beats[node] = _loads(raw, "heartbeat")
        except DecodeError:
            continue
    return beats


def _destination(value: Any) -> tuple[str, ...] | None:
    """A command's ``destination``: ``None`` (every worker), one hostname, or a list of them.

    Raises:
        DecodeError: anything else.
    """
    if value is None:
        return None
    if isinstance(value, str):  # one name, not its characters
        return (value,)
    if isinstance(value, list) and all(isinstance(name, str) for name in value):
        return tuple(value)
    raise DecodeError("control command's destination is not a list of hostnames")


@dataclass(frozen=True, slots=True)
class Command:
    """A control command for workers.

    Attributes:
        id: unique per command; replies carry it.
        command: the command's name, e.g. ``"ping"``, ``"active"``, ``"revoke"``.
        arguments: its arguments.
        destination: hostnames that should act, or ``None`` for every worker.
        reply_to: the channel for replies, or ``None`` when none is wanted.
    """

    id: str
    command: str
    arguments: dict[str, Any] = field(default_factory=dict)
    destination: tuple[str, ...] | None = None
    reply_to: str | None = None

    def encode(self) -> bytes:
        return dumps(
            {
                "id": self.id,
                "command": self.command,
                "arguments": self.arguments,
                "destination": list(self.destination) if self.destination is not None else None,
                "reply_to": self.reply_to,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> Command:
        """Raises: DecodeError: not a command, or a field of the wrong type (``arguments`` not
        an object, ``destination`` not a list of names, ``reply_to`` not a channel name): a
        listener skips it rather than fail on it."""
        data = _loads(raw, "control command")
        if not isinstance(data.get("id"), str) or not isinstance(data.get("command"), str):
            raise DecodeError("control command has no id or command name")
        arguments = data.get("arguments") or {}
        if not isinstance(arguments, dict):
            raise DecodeError("control command's arguments are not a JSON object")
        reply_to = data.get("reply_to")
        if reply_to is not None and not isinstance(reply_to, str):
            raise DecodeError("control command's reply_to is not a channel name")
        return cls(
            id=data["id"],
            command=data["command"],
            arguments=arguments,
            destination=_destination(data.get("destination")),
            reply_to=reply_to,
        )

    def for_worker(self, hostname: str) -> bool:
        """True when the worker named ``hostname`` should act on it."""
        return self.destination is None or hostname in self.destination


@dataclass(frozen=True, slots=True)
class Reply:
    """One worker's answer to a command.

    Attributes:
        hostname: the worker's name (``-n``), e.g. ``"aqueue@host"``.
        pid: its process id.
        node: a name unique to that worker run (hostname, pid and a random part).
        value: what the command returned (JSON data), or ``None`` on error.
        error: why the command failed in that worker, or ``None``.
    """

    hostname: str
    pid: int
    node: str
    value: Any = None
    error: str | None = None

    def encode(self, command_id: str) -> bytes:
        data: dict[str, Any] = {
            "id": command_id,
            "hostname": self.hostname,
            "pid": self.pid,
            "node": self.node,
        }
        if self.error is not None:
            data["error"] = self.error
        else:
            data["reply"] = self.value
        return dumps(data)

    @classmethod
    def decode(cls, raw: bytes) -> tuple[str, Reply]:
        """The command id answered, and the reply. Raises: DecodeError: not a reply."""
        data = _loads(raw, "control reply")
        try:
            reply = cls(
                hostname=str(data["hostname"]),
                pid=int(data["pid"]),
                node=str(data["node"]),
                value=data.get("reply"),
                error=data.get("error"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DecodeError(f"control reply is malformed: {exc}") from exc
        return str(data.get("id")), reply
