"""Dependencies: a task sent with ``after=[r1, r2]`` is held until r1 and r2 succeed.

Nothing polls. The state lives in the result backend (it must serve
:class:`~aqueue.transports.base.Waiters`; Redis, SQLite and memory do), in the keys the chord
uses for its header, one set of each per held task ``D``:

- ``held:<D>``: D's message, stored by the send instead of being published (a record, signed
  as results are);
- ``waiters:<A>`` (:func:`~aqueue.transports.base.waiters_key`): the tasks waiting for ``A``.
  The send adds D to the set of each dependency, then reads their records;
- ``after:<D>``: the dependencies of D that succeeded, a set (a dependency run twice, or a
  call retried, counts once);
- ``after:<D>:claim``: a lock (:class:`~aqueue.transports.base.Locks`) whose first taker
  decides D's fate, once: published, or failed. A release whose publish fails on the broker
  frees it again, so the next try (the dependency's message delivered again, or the send
  retried with its ``task_id``) releases D; a publish refused otherwise (the app's middleware
  raised, the message cannot be encoded) never succeeds, so D fails with that error - or, at
  send time, the sender gets it.

A worker stores outcomes with :meth:`~aqueue.transports.base.Waiters.store_waited`, which says
which of the stored ids have waiters (on Redis in the same round trip; nothing else is read for
a task nobody waits for). For each such id with a final state (:func:`Dependencies.settle`):

- SUCCESS: add it to ``after:<D>``; the addition that completes the set claims D and publishes
  its message - on whichever worker (or sending client) got there;
- FAILURE or REVOKED: claim D and store D's result as a
  :class:`~aqueue.exceptions.DependencyFailed` naming the dependency (``name[id]``) and its
  error; D's own waiters then fail the same way, down the graph.

The send and the worker each write before they read (the send: waiter, then record; the
worker: record, then waiters), so a dependency finishing while D is sent is seen by at least
one of them. This runs after the outcome is stored and before the message is acked, so a worker
that dies in between runs it again on redelivery. As with chords, one crash window errs on the
side of never running D twice: a claimer that dies between claiming and publishing leaves D
held until its records expire (``result_expires``).

When D runs, the worker reads its dependencies' results (one ``get_many``) into
``self.request.dependencies``, in the order of ``after``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aqueue import message as wire
from aqueue import states
from aqueue.exceptions import BrokerError, ConfigurationError, DecodeError, DependencyFailed
from aqueue.results.record import ResultRecord, describe_exception, rebuild_exception
from aqueue.transports import (
    Locks,
    Records,
    ReplyTo,
    ResultBackend,
    Waiters,
    has_locks,
    has_waiters,
    scheme,
    waiters_key,
)

if TYPE_CHECKING:
    from aqueue.app import Aqueue
    from aqueue.message import Message

__all__ = ["Dependencies", "after_ids", "held_key"]

logger = logging.getLogger("aqueue.dependencies")

#: Seconds a claim lasts when records never expire (``result_expires=None``): ten years.
_CLAIM_FOREVER = 10 * 365 * 86400.0


def held_key(task_id: str) -> str:
    """The record id under which a held task's message waits."""
    return f"held:{task_id}"


def _done_key(task_id: str) -> str:
    return f"after:{task_id}"


def _claim_key(task_id: str) -> str:
    return f"after:{task_id}:claim"


def after_ids(value: Any) -> list[str]:
    """The task ids of ``after=``: result handles (anything with a string ``id``) or ids, in
    order, each once.

    Raises:
        ConfigurationError: ``after`` is not a list or tuple of those, or is empty.
    """
    if not isinstance(value, list | tuple) or not value:
        raise ConfigurationError(
            f"after= takes a non-empty list of results (or task ids), not {value!r}"
        )
    ids: list[str] = []
    for item in value:
        task_id = item if isinstance(item, str) else getattr(item, "id", None)
        if not isinstance(task_id, str) or not task_id:
            raise ConfigurationError(f"after= takes results or task ids, not {item!r}")
        ids.append(task_id)
    return list(dict.fromkeys(ids))


class Dependencies:
    """Holds, releases and fails the tasks sent with ``after=`` (see the module doc).

    Args:
        app: the app whose settings (serializers, signing, ``result_expires``) and broker
            are used.
        backend: the connected result backend.

    Raises:
        ConfigurationError: the backend keeps no waiter sets (``rpc://``).
    """

    def __init__(self, app: Aqueue, backend: ResultBackend) -> None:
        waiters: object = backend
        if not has_waiters(waiters):
            raise ConfigurationError(
                f"after= needs a result backend that keeps waiter sets (redis://, sqlite://, "
                f"memory://), not {scheme(backend.url)}://"
            )
        self.app = app
        self.backend = backend
        self.waiters: Waiters = waiters
        # Claims are locks where the backend keeps them (Redis, SQLite, memory), so a release
        # that could not be published is claimed again; else (a third-party backend) sets.
        self.locks: Locks | None = backend if has_locks(backend) else None

    @classmethod
    def of(cls, app: Aqueue, backend: ResultBackend | None) -> Dependencies | None:
        """The dependencies of ``app`` on ``backend``, or ``None`` if it keeps no waiter sets."""
        probe: object = backend
        return cls(app, backend) if backend is not None and has_waiters(probe) else None

    # -- sending ---------------------------------------------------------------------------------

    async def hold(self, msg: Message) -> None:
        """Store ``msg`` as held, register it with each of its dependencies, then settle the
        dependencies already finished (which may publish or fail it at once).

        Raises:
            BrokerConnectionError: the result backend (or, publishing, the broker) cannot be
                reached.
        """
        expires = self.app.conf.result_expires
        body = base64.b64encode(msg.encode()).decode()
        held = ResultRecord(held_key(msg.id), states.PENDING, {"message": body}, name=msg.task)
        await self.backend.store([(held.task_id, self._encode(held))], expires)
        deps = list(msg.options["after"])
        # Concurrent: one round trip of latency whatever the number of dependencies.
        await asyncio.gather(*(self.waiters.add_waiter(dep, msg.id, expires) for dep in deps))
        found = await self.backend.get_many(deps)
        ready = {dep: raw for dep, raw in zip(deps, found, strict=True) if raw}
        await self.settle_stored(ready, sending=True)

    # -- finishing ---------------------------------------------------------------------------------

    async def settle_stored(self, records: Mapping[str, bytes], sending: bool = False) -> None:
        """For each ``task id -> record`` just stored (or read) that tasks wait for, settle its
        waiters if the record is final (SUCCESS, FAILURE, REVOKED).

        Args:
            sending: called by the send of a held task (see :meth:`settle`).

        Raises:
            BrokerConnectionError: the result backend or the broker cannot be reached; the
                caller leaves its message unacked, so this is done again.
        """
        for task_id, raw in records.items():
            rec = self._decode(raw, task_id)
            if rec is not None and rec.ready:
                waiting = await self.waiters.members(waiters_key(task_id))
                await self.settle(task_id, rec, waiting, sending)

    async def store(self, items: Records, reply_to: ReplyTo | None = None) -> None:
        """Store records (``result_expires``) as a worker does, then settle the tasks waiting
        for them (a chain's or chord's failure, written for its final task).

        Raises:
            BrokerConnectionError: the result backend or the broker cannot be reached.
        """
        waited = await self.store_waited(items, reply_to)
        if waited:
            await self.settle_waited(items, waited)

    async def store_waited(self, items: Records, reply_to: ReplyTo | None = None) -> list[str]:
        """The first half of :meth:`store`: store the records (``result_expires``) and return
        the ids among them that tasks wait for (one round trip). Safe to cut and do again:
        storing a record twice leaves it as once.

        Raises:
            BrokerConnectionError: the result backend cannot be reached.
        """
        return await self.waiters.store_waited(items, self.app.conf.result_expires, reply_to)

    async def settle_waited(self, items: Records, waited: Sequence[str]) -> None:
        """The second half of :meth:`store`: settle the tasks waiting for ``waited``, ids of
        ``items`` just stored. Not to be cut short: cut between a claim and its publish, a
        waiting task would stay held (see the module doc).

        Raises:
            BrokerConnectionError: the result backend or the broker cannot be reached.
        """
        stored = dict(items)
        await self.settle_stored({task_id: stored[task_id] for task_id in waited})

    async def settle(
        self, dep: str, rec: ResultRecord, waiting: Iterable[str], sending: bool = False
    ) -> None:
        """Dependency ``dep`` finished with ``rec``: count it for each task in ``waiting``,
        publishing those it completes, or fail them all if it did not succeed.

        Args:
            sending: called by the send of a held task: a publish refused for another reason
                than the broker is raised to the sender instead of failing the task.

        Raises:
            BrokerConnectionError: the result backend or the broker cannot be reached (the
                claim of a task whose publish failed is freed first: the next try releases it).
        """
        expires = self.app.conf.result_expires
        for task_id in waiting:
            held = await self._held(task_id)
            if held is None:
                continue  # released or failed already, or expired
            if rec.status == states.SUCCESS:
                done = await self.backend.add_member(_done_key(task_id), dep, expires)
                if done >= len(held.options.get("after") or ()):
                    await self._release(held, sending)
            elif await self._claim(task_id) is not None:
                await self._fail(held, dep, rec)

    async def _release(self, held: Message, sending: bool) -> None:
        """Claim ``held`` and publish it; see :meth:`settle`."""
        token = await self._claim(held.id)
        if token is None:
            return  # another worker (or the send) released or failed it
        try:
            await self.app.publish([held])
        except BrokerError:
            await self._unclaim(held.id, token)
            raise
        except Exception as exc:
            if sending:
                await self._unclaim(held.id, token)
                raise
            # Refused (middleware, encoding): it would be refused again on every try.
            logger.error("Task %s[%s] could not be released: %s", held.task, held.id, exc)
            await self._store_failure(held, exc)
            return
        logger.info("Task %s[%s] released: its dependencies succeeded", held.task, held.id)

    async def _fail(self, held: Message, dep: str, rec: ResultRecord) -> None:
        """Store ``held``'s result as a DependencyFailed naming ``dep``; its own waiters follow."""
        if rec.status == states.REVOKED:
            why = f"was revoked: {rebuild_exception(rec.result)}"
        else:
            exc = rebuild_exception(rec.result)
            why = f"failed: {type(exc).__name__}: {exc}"
        err = DependencyFailed(f"dependency {rec.name or 'task'}[{dep}] {why}")
        logger.error("Task %s[%s] not run: %s", held.task, held.id, err)
        await self._store_failure(held, err)

    async def _store_failure(self, held: Message, err: BaseException) -> None:
        """Store ``held``'s result as a FAILURE with ``err``; its own waiters follow."""
        record = ResultRecord(
            held.id, states.FAILURE, describe_exception(err), None, time.time(), 0, held.task
        )
        reply = {held.id: held.reply_to} if held.reply_to else None
        await self.store([(held.id, self._encode(record))], reply)

    async def _claim(self, task_id: str) -> str | None:
        """Take the claim of ``task_id``: its token, or ``None`` when it was taken before."""
        token = f"{task_id}:{uuid.uuid4().hex}"
        expires = self.app.conf.result_expires
        if self.locks is not None:
            ttl = expires if expires is not None else _CLAIM_FOREVER
            return (
                token if await self.locks.lock(_claim_key(task_id), token, ttl) == token else None
            )
        claimed = await self.backend.add_member(_claim_key(task_id), token, expires)
        return token if claimed == 1 else None

    async def _unclaim(self, task_id: str, token: str) -> None:
        """Free the claim ``token`` of ``task_id`` after a failed release, so that the next try
        can release it (kept where claims are sets: the task then stays held)."""
        if self.locks is None:
            logger.error("Task %s stays held: its release failed (no locks to retry)", task_id)
            return
        try:
            await self.locks.unlock(_claim_key(task_id), token)
        except BrokerError as exc:
            # Left claimed: the task stays held until its records expire, as after a crash.
            logger.error("the claim of held task %s could not be freed: %s", task_id, exc)

    async def _held(self, task_id: str) -> Message | None:
        """The held message of ``task_id``, or ``None`` when none is stored (or it is unreadable,
        which is logged)."""
        [raw] = await self.backend.get_many([held_key(task_id)])
        rec = self._decode(raw, held_key(task_id)) if raw is not None else None
        if rec is None or not isinstance(rec.result, dict):
            return None
        try:
            body = base64.b64decode(str(rec.result.get("message")))
            return wire.decode(body, frozenset(self.app.conf.accept_content))
        except (DecodeError, ValueError) as exc:
            logger.error("the held message of task %s is unreadable: %s", task_id, exc)
            return None

    # -- running -----------------------------------------------------------------------------------

    async def results(self, msg: Message) -> list[Any]:
        """The results of ``msg``'s dependencies, in the order of its ``after``.

        Raises:
            DependencyFailed: one is missing (expired) or not a success.
            BrokerConnectionError: the result backend cannot be reached.
        """
        deps: Sequence[str] = list(msg.options.get("after") or ())
        values: list[Any] = []
        for dep, raw in zip(deps, await self.backend.get_many(deps), strict=True):
            rec = self._decode(raw, dep) if raw is not None else None
            if rec is None or rec.status != states.SUCCESS:
                state = rec.status if rec is not None else "missing (expired?)"
                raise DependencyFailed(f"dependency {dep} has no result to pass on: {state}")
            values.append(rec.result)
        return values

    # -- records -----------------------------------------------------------------------------------

    def _encode(self, rec: ResultRecord) -> bytes:
        return rec.encode(self.app.conf.result_serializer, self.app.conf.signing)

    def _decode(self, raw: bytes, task_id: str) -> ResultRecord | None:
        try:
            return ResultRecord.decode(raw, self.app.accept_results, self.app.conf.signing, task_id)
        except DecodeError as exc:  # SecurityError too: a forged record never releases a task
            logger.error("the record of %s is unreadable: %s", task_id, exc)
            return None
