"""The task message: what a producer publishes and a worker runs.

On the wire a message is one JSON object (the *envelope*), encoded with orjson::

    {"v": 1, "id": "…", "task": "proj.add", "ct": "json", "args": [2, 2], "kwargs": {},
     "queue": "default", "priority": 0, "eta": null, "expires": null, "retries": 0, ...}

With ``ct`` other than ``json``, or with compression, ``args`` and ``kwargs`` are replaced by
``"body"``: base64 of the serialised ``[args, kwargs]`` (and ``"enc": "zlib"``). The envelope itself
is always JSON, so a worker can read the id and task name of any message it can parse at all.
Times (``eta``, ``expires``, ``sent``) are seconds since the Unix epoch as floats.
"""

from __future__ import annotations

import base64
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import orjson

from aqueue import serialization
from aqueue.exceptions import DecodeError, EncodeError

PROTOCOL_VERSION = 1

_ENVELOPE_KEYS = (
    "id",
    "task",
    "queue",
    "priority",
    "eta",
    "expires",
    "retries",
    "headers",
    "link",
    "link_error",
    "time_limit",
    "ignore_result",
    "parent_id",
    "root_id",
    "group_id",
    "options",
    "reply_to",
)


def new_id() -> str:
    """A fresh task id: a random (version 4) UUID as ``str(uuid.uuid4())`` gives, made faster."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True, slots=True)
class Message:
    """One task invocation.

    Attributes:
        id: the task id (a uuid4 string unless the caller chose one); the result is stored under it.
        task: the registered task name, e.g. ``"proj.tasks.add"``.
        args, kwargs: the call's arguments.
        queue: the queue the message was published to.
        priority: 0..9; 9 runs first.
        eta: do not run before this time (epoch seconds), or ``None``.
        expires: do not run after this time (epoch seconds); an expired message is REVOKED.
        retries: how many times this task has been retried so far (0 on the first run).
        headers: the caller's own headers, passed through untouched.
        link, link_error: signatures (as dicts) applied on success / on failure.
        time_limit: seconds the task may run before it is cancelled, or ``None`` for the task's own.
        ignore_result: do not store the outcome.
        parent_id, root_id, group_id: the task's place in a workflow (canvas), or ``None``.
        options: other per-call options the canvas carries (chain, chord), as a dict.
        reply_to: the sending client's reply channel (as AMQP's ``reply_to`` property): the
            worker also publishes the task's records there, batched, so the sender awaits
            results on one subscription. ``None``: records go to the per-task channel only.
        content_type: the serializer of args and kwargs.
        compression: ``"zlib"`` or ``None``.
    """

    id: str
    task: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str = "default"
    priority: int = 0
    eta: float | None = None
    expires: float | None = None
    retries: int = 0
    headers: dict[str, Any] = field(default_factory=dict)
    link: list[dict[str, Any]] = field(default_factory=list)
    link_error: list[dict[str, Any]] = field(default_factory=list)
    time_limit: float | None = None
    ignore_result: bool = False
    parent_id: str | None = None
    root_id: str | None = None
    group_id: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    reply_to: str | None = None
    content_type: str = "json"
    compression: str | None = None

    def replace(self, **changes: Any) -> Message:
        """Return a copy with ``changes`` applied (e.g. ``retries=m.retries + 1``)."""
        return dataclasses.replace(self, **changes)

    def encode(self) -> bytes:
        """Serialise to the wire envelope.

        Raises:
            EncodeError: the arguments are not serialisable with ``content_type``.
        """
        env: dict[str, Any] = {"v": PROTOCOL_VERSION, "ct": self.content_type}
        for key in _ENVELOPE_KEYS:
            env[key] = getattr(self, key)
        if self.content_type == "json" and self.compression is None:
            env["args"] = self.args
            env["kwargs"] = self.kwargs
        else:
            body = serialization.dumps_call(
                self.args, self.kwargs, self.content_type, self.compression, task=self.task
            )
            env["body"] = base64.b64encode(body).decode("ascii")
            if self.compression:
                env["enc"] = self.compression
        try:
            return serialization.dumps_message(env)  # typed values kept (datetime, UUID...)
        except TypeError as exc:
            raise EncodeError(f"message {self.id} options are not serialisable: {exc}") from exc


def decode_envelope(raw: bytes) -> dict[str, Any]:
    """Parse the JSON envelope of a message without decoding its arguments.

    Raises:
        DecodeError: ``raw`` is not a JSON object with an ``id`` and a ``task``.
    """
    try:
        env = serialization.loads_document(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"message is not valid JSON: {exc}") from exc
    if not isinstance(env, dict) or not isinstance(env.get("id"), str):
        raise DecodeError("message is not an aqueue envelope (no 'id')")
    if not isinstance(env.get("task"), str):
        raise DecodeError(f"message {env['id']} has no task name")
    return env


def decode(raw: bytes, accept: frozenset[str] | tuple[str, ...] = ("json",)) -> Message:
    """Decode a wire envelope into a :class:`Message`.

    Args:
        raw: the bytes as published.
        accept: content types this process accepts (the ``accept_content`` setting).

    Raises:
        DecodeError: the envelope or body is malformed.
        ContentDisallowed: the content type is not in ``accept``.
    """
    return from_envelope(decode_envelope(raw), accept)


def from_envelope(env: dict[str, Any], accept: frozenset[str] | tuple[str, ...]) -> Message:
    """Build a :class:`Message` from a parsed envelope (see :func:`decode`)."""
    ct = env.get("ct", "json")
    serialization.check_accepted(ct, accept)
    compression = env.get("enc")
    if "body" in env:
        try:
            body = base64.b64decode(env["body"], validate=True)
        except (ValueError, TypeError) as exc:
            raise DecodeError(f"message {env['id']} has a body that is not base64") from exc
        decoded = serialization.loads(body, ct, compression)
        if not (isinstance(decoded, list | tuple) and len(decoded) == 2):
            raise DecodeError(f"message {env['id']} body is not [args, kwargs]")
        args, kwargs = decoded
    else:
        args, kwargs = env.get("args", ()), env.get("kwargs", {})
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        raise DecodeError(f"message {env['id']}: args must be a list and kwargs an object")
    try:
        return Message(
            id=env["id"],
            task=env["task"],
            args=tuple(args),
            kwargs=kwargs,
            queue=env.get("queue") or "default",
            priority=int(env.get("priority") or 0),
            eta=env.get("eta"),
            expires=env.get("expires"),
            retries=int(env.get("retries") or 0),
            headers=env.get("headers") or {},
            link=env.get("link") or [],
            link_error=env.get("link_error") or [],
            time_limit=env.get("time_limit"),
            ignore_result=bool(env.get("ignore_result")),
            parent_id=env.get("parent_id"),
            root_id=env.get("root_id"),
            group_id=env.get("group_id"),
            options=env.get("options") or {},
            reply_to=env.get("reply_to"),
            content_type=ct,
            compression=compression,
        )
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"message {env['id']} has a malformed field: {exc}") from exc
