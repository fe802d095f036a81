"""The stored result record of a task, and how exceptions cross processes.

A record is a JSON object (orjson)::

    {"task_id": "…", "status": "SUCCESS", "result": 4, "traceback": null,
     "date_done": 1732252800.5, "retries": 0, "name": "proj.add"}

For a ``FAILURE`` or ``RETRY``, ``result`` describes the exception:
``{"exc_type": "ValueError", "exc_module": "builtins", "exc_message": "bad", "exc_args": ["bad"]}``.
For a custom state (``update_state(state="PROGRESS", meta={...})``) ``result`` is the meta, as in
Celery. With a ``result_serializer`` other than json, ``result`` is replaced by ``"body"``: base64
of the serialised value, and ``"ct"`` names the content type.

With ``task_signing_key`` set, a record is signed (:mod:`aqueue.signing`: ``{"hmac": ...`` in
front) by whoever stores it, and checked by whoever reads it with a key.

With ``result_extended`` (Celery's setting) a record also has ``"args"``, ``"kwargs"`` (faithful
JSON, as a message's), ``"worker"`` (the hostname that ran it) and ``"queue"``; arguments the
JSON form cannot hold (a ``msgpack``/``pickle`` only value) are left out, the rest is kept.
"""

from __future__ import annotations

import base64
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from aqueue import serialization, states
from aqueue.exceptions import (
    DecodeError,
    EncodeError,
    SecurityError,
    TaskError,
    TaskRevokedError,
)

if TYPE_CHECKING:
    from aqueue.signing import Signing


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """What the result backend holds for one task id.

    Attributes:
        task_id: the task's id.
        status: one of :mod:`aqueue.states` or a custom state name.
        result: the return value (SUCCESS), the exception description (FAILURE/RETRY/REVOKED),
            or the meta dict (custom states).
        traceback: the formatted traceback of a failure, or ``None``.
        date_done: when this record was written, epoch seconds.
        retries: how many retries the task had used.
        name: the task name, when known.
        args, kwargs: the task's arguments (``result_extended``), else ``None``.
        worker: the hostname of the worker that wrote it (``result_extended``), else ``None``.
        queue: the queue its message came from (``result_extended``), else ``None``.
        streamed: for an async-generator task, the items it had yielded when this record was
            written (a ``STREAMING`` record: its own item is number ``streamed``, and its
            ``result``); ``None`` for any other task (:mod:`aqueue.results.stream`).
    """

    task_id: str
    status: str
    result: Any = None
    traceback: str | None = None
    date_done: float = 0.0
    retries: int = 0
    name: str | None = None
    args: tuple[Any, ...] | None = None
    kwargs: dict[str, Any] | None = None
    worker: str | None = None
    queue: str | None = None
    streamed: int | None = None

    @property
    def ready(self) -> bool:
        """True for SUCCESS, FAILURE and REVOKED."""
        return self.status in states.READY_STATES

    def encode(self, serializer: str = "json", signing: Signing | None = None) -> bytes:
        """Serialise to bytes for the result backend, signed with ``signing`` (the app's
        ``conf.signing``, from ``task_signing_key``) when given.

        Raises:
            EncodeError: the result is not serialisable with ``serializer``.
        """
        rec: dict[str, Any] = {
            "task_id": self.task_id,
            "status": self.status,
            "traceback": self.traceback,
            "date_done": self.date_done or time.time(),
            "retries": self.retries,
            "name": self.name,
        }
        if self.streamed is not None:
            rec["streamed"] = self.streamed
        if self.worker is not None:  # result_extended
            raw = self._encode_extended(rec, serializer)
        elif serializer == "json" or self.status in states.EXCEPTION_STATES:
            rec["result"] = self.result
            raw = serialization.dumps_record(rec)  # typed values kept (datetime, UUID...)
        else:
            rec["ct"] = serializer
            what = f"the result of {self.name}" if self.name else "the result"
            body = serialization.dumps(self.result, serializer, what=what)
            rec["body"] = base64.b64encode(body).decode()
            raw = orjson.dumps(rec)
        return raw if signing is None else signing.results.sign(raw)

    def _encode_extended(self, rec: dict[str, Any], serializer: str) -> bytes:
        """``rec`` with the ``result_extended`` fields, every data value faithful JSON."""
        rec["worker"], rec["queue"] = self.worker, self.queue
        if serializer == "json" or self.status in states.EXCEPTION_STATES:
            rec["result"] = self.result
        else:
            rec["ct"] = serializer
            what = f"the result of {self.name}" if self.name else "the result"
            body = serialization.dumps(self.result, serializer, what=what)
            rec["body"] = base64.b64encode(body).decode()
        try:
            with_args = {**rec, "args": list(self.args or ()), "kwargs": self.kwargs or {}}
            return serialization._dumps_fields(with_args)
        except EncodeError:
            # Arguments JSON cannot hold are left out; a result that fails raises as before.
            return serialization._dumps_fields(rec)

    @classmethod
    def decode(
        cls,
        raw: bytes,
        accept: frozenset[str] | tuple[str, ...] = ("json",),
        signing: Signing | None = None,
        task_id: str | None = None,
    ) -> ResultRecord:
        """Parse a stored record; with ``signing`` (the app's ``conf.signing``), only a record
        signed with one of its keys, and (given ``task_id``, the id it was read for) only one
        written for that task.

        Raises:
            DecodeError: ``raw`` is not a valid record.
            ContentDisallowed: its content type is not in ``accept``.
            SecurityError: with ``signing``, the record is unsigned or its signature is bad (it
                was changed, or written by a process with another key), or it is another
                task's record copied under ``task_id``: nothing of it is used.
        """
        if signing is not None:
            signing.results.verify(raw)
        try:
            rec = serialization.loads_document(raw)
            _check_shape(rec)
            if "body" in rec:
                serialization.check_accepted(rec["ct"], accept)
                result = serialization.loads(base64.b64decode(rec["body"]), rec["ct"])
            else:
                result = rec.get("result")
            if signing is not None and task_id is not None and rec["task_id"] != task_id:
                raise SecurityError(
                    f"the result record read for task {task_id} was written for task "
                    f"{str(rec['task_id'])[:100]}: copied there, not to be trusted"
                )
            return cls(
                task_id=rec["task_id"],
                status=rec["status"],
                result=result,
                traceback=rec.get("traceback"),
                date_done=float(rec.get("date_done") or 0.0),
                retries=int(rec.get("retries") or 0),
                name=rec.get("name"),
                args=tuple(rec["args"]) if isinstance(rec.get("args"), list) else None,
                kwargs=rec["kwargs"] if isinstance(rec.get("kwargs"), dict) else None,
                worker=rec["worker"] if isinstance(rec.get("worker"), str) else None,
                queue=rec["queue"] if isinstance(rec.get("queue"), str) else None,
                streamed=_count(rec.get("streamed")),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DecodeError(f"malformed result record: {exc}") from exc


def _check_shape(rec: Any) -> None:
    """Check that a parsed record is an object naming its task and state as strings: anything
    else under a task id (another program's value, a row written by hand) would otherwise fail
    later and elsewhere (an ``AttributeError`` in a waiter, a null state that never finishes).

    Raises:
        ValueError: it is not.
    """
    if type(rec) is not dict:
        raise ValueError(f"a JSON {type(rec).__name__}, not an object")
    for key in ("task_id", "status"):
        if not isinstance(rec.get(key), str):
            raise ValueError(f"{key!r} is {str(rec.get(key))[:100]!r}, not a string")


def _count(value: Any) -> int | None:
    """A record's ``streamed`` count: a non-negative int, else ``None``."""
    return value if type(value) is int and value >= 0 else None


def describe_exception(exc: BaseException) -> dict[str, Any]:
    """Describe ``exc`` as JSON-safe data that :func:`rebuild_exception` can turn back."""
    cls = type(exc)
    args: list[Any] = []
    for arg in exc.args:
        try:
            orjson.dumps(arg)
        except TypeError:
            args = [str(exc)]
            break
        args.append(arg)
    return {
        "exc_type": cls.__qualname__,
        "exc_module": cls.__module__,
        "exc_message": str(exc),
        "exc_args": args,
    }


def rebuild_exception(info: Any, traceback: str | None = None) -> BaseException:
    """Turn an exception description back into an exception instance.

    The original type is used when its module is already imported in this process, it is an
    :class:`Exception`, and calling it with the stored args works; otherwise a
    :class:`TaskError` carries the type name, message and traceback. Modules are never
    imported on the strength of stored data. A task that failed with a ``BaseException`` that
    is no ``Exception`` (an ``asyncio.CancelledError`` it let out, a ``GeneratorExit``) gives
    a ``TaskError`` too: raised in the caller, the original would read as the caller's own
    cancellation or exit.
    """
    if not isinstance(info, dict):
        return TaskError("Exception", str(info), traceback)
    qualname = str(info.get("exc_type", "Exception"))
    module_name = str(info.get("exc_module", "builtins"))
    message = str(info.get("exc_message", ""))
    full = qualname if module_name == "builtins" else f"{module_name}.{qualname}"
    obj: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if isinstance(obj, type) and issubclass(obj, Exception):
        try:
            exc = obj(*info.get("exc_args", [message]))
        except Exception:
            return TaskError(full, message, traceback)
        exc.__notes__ = [f"remote traceback:\n{traceback}"] if traceback else []
        return exc
    return TaskError(full, message, traceback)


def outcome(rec: ResultRecord) -> Any:
    """What a finished (or current) record stands for: the value of a SUCCESS, the rebuilt
    exception of a FAILURE or RETRY, a :class:`~aqueue.exceptions.TaskRevokedError` for
    REVOKED, else the record's ``result`` as stored (a state's meta)."""
    if rec.status == states.SUCCESS:
        return rec.result
    if rec.status == states.REVOKED:
        reason = rec.result.get("exc_message") if isinstance(rec.result, dict) else None
        return TaskRevokedError(reason or f"task {rec.task_id} was revoked")
    if rec.status in states.EXCEPTION_STATES:
        return rebuild_exception(rec.result, rec.traceback)
    return rec.result
