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
import math
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
    "sent_at",
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
        sent_at: when the producer built it (epoch seconds), for queue-wait figures; ``None``
            from producers that do not say (retries keep the first send's).
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
    sent_at: float | None = None

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
    """Parse the JSON envelope of a message without checking more than its id and task name.

    Raises:
        DecodeError: ``raw`` is not a JSON object with a string ``id`` and ``task``.
    """
    try:
        env = serialization.loads_document(raw)
    except DecodeError:
        raise
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"message is not valid JSON: {exc}") from exc
    except Exception as exc:  # a malformed typed value: whatever its decoder raised
        raise DecodeError(f"message holds a malformed typed value: {exc!r:.200}") from exc
    if not isinstance(env, dict) or type(env.get("id")) is not str:
        raise DecodeError("message is not an aqueue envelope (field 'id' is not a string)")
    if type(env.get("task")) is not str:
        raise DecodeError(f"message {env['id']}: field 'task' is not a string")
    return env


def decode(raw: bytes, accept: frozenset[str] | tuple[str, ...] = ("json",)) -> Message:
    """Decode a wire envelope into a :class:`Message`, every field checked (the worker's wall).

    Args:
        raw: the bytes as published.
        accept: content types this process accepts (the ``accept_content`` setting).

    Raises:
        DecodeError: the envelope or body is malformed; the message names the field.
        ContentDisallowed: the content type is not in ``accept``.
    """
    return from_envelope(decode_envelope(raw), accept)


def from_envelope(env: dict[str, Any], accept: frozenset[str] | tuple[str, ...]) -> Message:
    """Build a :class:`Message` from a parsed envelope (see :func:`decode`).

    Each field is checked for its type (and range) once, here: a message that passes cannot
    make the worker fail later on a field of the wrong kind. On the hot path this is one pass
    over :data:`_TYPES`, the few ranges, and nested data only where there is some.

    Raises:
        DecodeError: a field has the wrong type or value; the message names it.
        ContentDisallowed: the content type is not in ``accept``.
    """
    get = env.get
    for key, allowed in _TYPES:
        value = get(key)
        if value is not None and type(value) not in allowed:
            raise _Fields(env).bad(key, _FIELDS[key][1], value)
    ct = get("ct") or "json"
    serialization.check_accepted(ct, accept)
    compression = get("enc")
    args, kwargs = _arguments(env, ct, compression)
    priority, retries, version = get("priority") or 0, get("retries") or 0, get("v")
    eta, expires, time_limit = get("eta"), get("expires"), get("time_limit")
    sent_at = get("sent_at")
    link, link_error, options = get("link") or [], get("link_error") or [], get("options") or {}
    if not (
        0 <= priority <= 255
        and 0 <= retries <= 2**31
        and (version is None or 1 <= version <= 2**31)
        and (eta is None or math.isfinite(eta))
        and (expires is None or math.isfinite(expires))
        and (time_limit is None or 0 < time_limit < math.inf)
        and (sent_at is None or math.isfinite(sent_at))
    ) or (link or link_error or options):
        _Fields(env).nested()  # finds what is wrong (naming it), or checks the nested data
    return make_message(
        env["id"],
        env["task"],
        args,
        kwargs,
        get("queue") or "default",
        priority,
        None if eta is None else float(eta),
        None if expires is None else float(expires),
        retries,
        get("headers") or {},
        link,
        link_error,
        None if time_limit is None else float(time_limit),
        bool(get("ignore_result")),
        get("parent_id"),
        get("root_id"),
        get("group_id"),
        options,
        get("reply_to"),
        ct,
        compression,
        None if sent_at is None else float(sent_at),
    )


# The decoder and the sender fill a Message's slots directly, in field order: a frozen
# dataclass's __init__ costs one object.__setattr__ call per field (23), about twice the time of
# the whole build.
_SETTERS = tuple(getattr(Message, f.name).__set__ for f in dataclasses.fields(Message))


def make_message(*values: Any) -> Message:
    """A :class:`Message` of every field's value, in field order (values checked already):
    ``Message(...)`` with every field given, at about half the cost. The decoder's path, and the
    sender's (one message per ``delay()``)."""
    msg = object.__new__(Message)
    for set_slot, value in zip(_SETTERS, values, strict=True):
        set_slot(msg, value)
    return msg


_TEXT = (str,)
_NUMBER = (int, float)
# Every optional envelope field: the types it may have (null: absent, its default), and what
# an error says it must be. "v" is the protocol version: checked, not used yet.
_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "v": ((int,), "a whole number from 1 to 2147483648"),
    "ct": (_TEXT, "a string or null"),
    "enc": (_TEXT, "a string or null"),
    "queue": (_TEXT, "a string or null"),
    "priority": ((int,), "a whole number from 0 to 255"),
    "eta": (_NUMBER, "a number of epoch seconds or null"),
    "expires": (_NUMBER, "a number of epoch seconds or null"),
    "retries": ((int,), "a whole number from 0 to 2147483648"),
    "headers": ((dict,), "an object or null"),
    "link": ((list,), "a list of signatures or null"),
    "link_error": ((list,), "a list of signatures or null"),
    "time_limit": (_NUMBER, "a number of seconds > 0 or null"),
    "ignore_result": ((bool,), "true, false or null"),
    "parent_id": (_TEXT, "a string or null"),
    "root_id": (_TEXT, "a string or null"),
    "group_id": (_TEXT, "a string or null"),
    "options": ((dict,), "an object or null"),
    "reply_to": (_TEXT, "a string or null"),
    "sent_at": (_NUMBER, "a number of epoch seconds or null"),
}
_TYPES = tuple((key, types) for key, (types, _) in _FIELDS.items())


def _arguments(
    env: dict[str, Any], ct: str, compression: str | None
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call's ``(args, kwargs)``: from the envelope, or decoded from its ``body``."""
    if "body" in env:
        f = _Fields(env)
        body = env["body"]
        if type(body) is not str:
            raise f.bad("body", "a base64 string", body)
        try:
            data = base64.b64decode(body, validate=True)
        except ValueError as exc:
            raise f.bad("body", "a base64 string", body) from exc
        try:
            decoded = serialization.loads(data, ct, compression)
        except DecodeError as exc:
            raise DecodeError(f"message {f.id}: field 'body' cannot be decoded: {exc}") from exc
        if not (isinstance(decoded, list | tuple) and len(decoded) == 2):
            raise f.bad("body", "a serialised [args, kwargs] pair", decoded)
        args, kwargs = decoded
    else:
        args, kwargs = env.get("args", ()), env.get("kwargs", {})
    if not isinstance(args, list | tuple):
        raise _Fields(env).bad("args", "a list", args)
    if not isinstance(kwargs, dict) or (kwargs and not all(type(k) is str for k in kwargs)):
        raise _Fields(env).bad("kwargs", "an object with string keys", kwargs)
    return tuple(args), kwargs


# How deep a canvas (chains of chords of groups...) carried in a message may nest.
_MAX_CANVAS_DEPTH = 64


class _Fields:
    """Typed reads of an envelope's fields; each raises :class:`DecodeError` naming the field.

    A missing field and an explicit ``null`` both give the field's default.
    """

    __slots__ = ("env", "id")

    def __init__(self, env: dict[str, Any]) -> None:
        self.env = env
        self.id: str = env["id"]

    def bad(self, key: str, expected: str, value: Any) -> DecodeError:
        """The error for field ``key`` holding ``value`` instead of ``expected``."""
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return DecodeError(f"message {self.id}: field {key!r} must be {expected}, not {shown}")

    def nested(self) -> None:
        """The checks beyond types: ranges and finiteness, then ``link``, ``link_error`` and
        the canvas in ``options``. Raises the :class:`DecodeError` of the first one failing."""
        get = self.env.get
        for key, low, high in (("priority", 0, 255), ("retries", 0, 2**31), ("v", 1, 2**31)):
            value = get(key)
            if value is not None and not low <= value <= high:
                raise self.bad(key, _FIELDS[key][1], value)
        for key in ("eta", "expires", "time_limit", "sent_at"):
            value = get(key)
            if value is not None and not (
                math.isfinite(value) and (value > 0 or key != "time_limit")
            ):
                raise self.bad(key, _FIELDS[key][1], value)
        for key in ("link", "link_error"):
            if get(key):
                self.signatures(key)
        if get("options"):
            self.options()

    def signatures(self, key: str) -> None:
        """Check a list of signature dicts (``link``, ``link_error``; the list type is)."""
        for item in self.env[key]:
            self._signature(key, item, 0, plain=True)

    def options(self) -> None:
        """Check the canvas options: ``chain`` (the steps still to run) and ``chord``."""
        options: dict[str, Any] = self.env["options"]
        chain = options.get("chain")
        if chain is not None:
            if type(chain) is not list:
                raise self.bad("options.chain", "a list of signatures", chain)
            for step in chain:
                self._signature("options.chain", step, 0)
        chord = options.get("chord")
        if chord is not None:
            self._chord_info(chord, 0)

    def _chord_info(self, info: Any, depth: int) -> None:
        key = "options.chord"
        if type(info) is not dict:
            raise self.bad(key, "an object", info)
        if type(info.get("id")) is not str:
            raise self.bad(key + ".id", "a string", info.get("id"))
        size = info.get("size")
        if type(size) is not int or size < 0:
            raise self.bad(key + ".size", "a whole number >= 0", size)
        self._signature(key + ".body", info.get("body"), depth + 1)

    def _signature(self, key: str, value: Any, depth: int, *, plain: bool = False) -> None:
        """Check a canvas dict (a signature, or with ``plain=False`` a chain, group or chord)."""
        if depth > _MAX_CANVAS_DEPTH:
            raise self.bad(key, f"a canvas nested at most {_MAX_CANVAS_DEPTH} deep", "...")
        if type(value) is not dict:
            raise self.bad(key, "a signature object", value)
        kind = value.get("subtask_type")
        if kind is None or plain:
            self._task_signature(key, value, depth)
        elif kind in ("chain", "group"):
            tasks = value.get("tasks")
            if type(tasks) is not list:
                raise self.bad(key + ".tasks", "a list of signatures", tasks)
            for task in tasks:
                self._signature(key + ".tasks", task, depth + 1)
        elif kind == "chord":
            self._signature(key + ".header", value.get("header"), depth + 1)
            if value.get("body") is not None:
                self._signature(key + ".body", value.get("body"), depth + 1)
        else:
            raise self.bad(key + ".subtask_type", "chain, group, chord or null", kind)
        sig_options = value.get("options")
        if sig_options is not None and type(sig_options) is not dict:
            raise self.bad(key + ".options", "an object or null", sig_options)
        if sig_options and sig_options.get("chord") is not None:
            self._chord_info(sig_options["chord"], depth + 1)

    def _task_signature(self, key: str, value: dict[str, Any], depth: int) -> None:
        if type(value.get("task")) is not str:
            raise self.bad(key + ".task", "a task name", value.get("task"))
        if type(value.get("args", [])) is not list:
            raise self.bad(key + ".args", "a list", value.get("args"))
        kwargs = value.get("kwargs")
        if kwargs is not None and type(kwargs) is not dict:
            raise self.bad(key + ".kwargs", "an object or null", kwargs)
