"""What a worker does when a task that is part of a workflow finishes: chains and chords.

:class:`~aqueue.worker.execute.Executor` calls :class:`Workflow` after a task's outcome is
stored and before its message is acked, so a worker that dies in between gets the message
delivered again and this step is done again (at-least-once, like everything else):

- success with ``Message.options["chain"]``: send the next step, the result prepended to its
  arguments (:mod:`aqueue.canvas.dispatch`);
- success with ``Message.options["chord"]``: count the task as a completed header member; the
  worker that completes the header sends the body with the list of header results;
- failure (also a dead-lettered or expired message): the rest of the chain will not run, so its
  final result (each member's, if it ends in a group) is stored as FAILURE with the same
  exception: whoever awaits the chain gets it. A failed chord member fails the chord: the body's
  result becomes a :class:`~aqueue.exceptions.ChordError` naming the member, and the body's
  ``link_error`` callbacks run.

The chord trigger
-----------------
Header members may finish at the same moment on different workers, a member may run twice (a
redelivery after a crash), and the Redis client retries a command whose reply was lost. So
completions are a *set of task ids* in the result backend, never an increment:

1. ``n = add_member("chord:<group id>", task_id)``: the number of distinct members done; running
   a member again, or retrying the call, adds nothing.
2. If ``n == size``: claim with ``add_member("chord:<group id>:claim", <run token>) == 1``, where
   the token is fresh for every run. Of the runs that see a full set (the last member, and any
   member that ran again) only the first claimer wins - a second run of the claiming member too.
3. The winner reads the group's member ids and all header results in one ``get_many``, and sends
   the body. A failing member claims through the same set: a chord either runs its body or
   fails, never both.

One crash window remains, and it errs on the side of never running the body twice: a claimer
that dies after claiming but before the body is published leaves the claim taken, so its
redelivered message cannot send the body and the chord's result stays PENDING. A claimer that
dies after publishing is harmless: its redelivered run sees the claim taken and sends nothing.
So the claimer leaves nothing it claimed to a redelivery: reading the header's results,
sending the body and storing the chord's failure are each tried again when the broker or the
result backend fails them, until they go through (or the worker stops), and a body that cannot
be sent at all (too large, not encodable) fails the chord with a
:class:`~aqueue.exceptions.ChordError`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from aqueue import states
from aqueue.canvas.dispatch import Plan, final_tasks
from aqueue.canvas.primitives import Canvas, Signature, chain, chord, from_dict
from aqueue.exceptions import BrokerConnectionError, ChordError, DecodeError
from aqueue.results.group import load_ids
from aqueue.results.record import ResultRecord, describe_exception
from aqueue.task import Request

if TYPE_CHECKING:
    from aqueue.app import Aqueue
    from aqueue.message import Message
    from aqueue.transports import Records, ReplyTo, ResultBackend

logger = logging.getLogger("aqueue.worker")

_T = TypeVar("_T")

#: Seconds before a workflow step the broker or the result backend failed is tried again
#: (a chain's next step, a chord's count, claim, body or failure), doubling up to BODY_RETRY_MAX.
BODY_RETRY_FIRST = 0.5
BODY_RETRY_MAX = 10.0

#: Calls an errback signature with ``(request, exc, traceback)`` (the executor's own way).
Errback = Callable[[Signature, Request, BaseException, str], Awaitable[None]]


def members_key(group_id: str) -> str:
    """The set of a chord's header members that have succeeded."""
    return f"chord:{group_id}"


def claim_key(group_id: str) -> str:
    """The set whose first member decides a chord's outcome (body sent, or ChordError)."""
    return f"chord:{group_id}:claim"


class Workflow:
    """Continues chains and completes chords for one worker.

    Args:
        app: the worker's app.
        backend: the connected result backend, or ``None`` (chords then cannot complete).
        errback: how to call a ``link_error`` signature (the executor's: a registered task is
            called in-process with ``(request, exc, traceback)``, as in Celery).
    """

    def __init__(self, app: Aqueue, backend: ResultBackend | None, errback: Errback) -> None:
        self.app = app
        self.backend = backend
        self.errback = errback
        # Stores records and settles the tasks waiting for them (set by the executor when the
        # backend keeps waiter sets): a chain's or chord's failure reaches them too.
        self.on_waited: Callable[[Records, ReplyTo | None], Awaitable[None]] | None = None

    # -- entry points --------------------------------------------------------------------------

    async def succeeded(self, msg: Message, value: Any) -> None:
        """``msg``'s task returned ``value`` and its result is stored: take the next steps.

        A step the broker or the result backend fails for a moment is tried again here (see
        :meth:`persist`) rather than left to a redelivery of ``msg``, which may come only
        after a visibility timeout, or (AMQP) only once the worker's channel closes.
        """
        rest = msg.options.get("chain")
        if rest:

            async def send() -> None:
                nxt = from_dict(rest[0], self.app).clone((value,))
                plan = Plan(self.app)
                plan.add(nxt, rest[1:], _context(msg))
                await plan.run()

            subject = f"chain after {msg.task}[{msg.id}]"
            try:
                await self.persist(subject, "next step not sent", send)
            except Exception as exc:
                # Not transient (a bad option, an unencodable argument, the app's middleware
                # refusing it): it would fail again on every try, so the chain fails with it.
                logger.error("%s cannot continue: %s", subject, exc)
                await self._abandon(subject, rest, exc, None, msg.reply_to)
        chord_info = msg.options.get("chord")
        if chord_info:
            await self._member_succeeded(msg, chord_info)

    async def failed(self, msg: Message, exc: BaseException, tb: str | None) -> None:
        """``msg``'s task failed for good (or was dead-lettered or expired): end its workflow."""
        rest = msg.options.get("chain")
        if rest:
            await self._abandon(f"chain after {msg.task}[{msg.id}]", rest, exc, tb, msg.reply_to)
        chord_info = msg.options.get("chord")
        if chord_info:
            await self._chord_failed(chord_info, msg.id, msg.task, exc, tb)

    # -- chords --------------------------------------------------------------------------------

    async def _member_succeeded(self, msg: Message, info: dict[str, Any]) -> None:
        backend = self._backend(info)
        if backend is None:
            return
        group_id, size = str(info["id"]), int(info["size"])
        subject = f"chord {group_id}"
        expires = self.app.conf.result_expires

        def add(key: str, member: str) -> Callable[[], Awaitable[int]]:
            return lambda: backend.add_member(key, member, expires)

        # Both are sets, so asking again (a reply lost) counts nothing twice; the claim is
        # asked again with this run's own token, which finds it won if the lost call took it.
        done = await self.persist(subject, "member not counted", add(members_key(group_id), msg.id))
        if done < size:
            return
        token = _run_token(msg.id)
        if await self.persist(subject, "not claimed", add(claim_key(group_id), token)) != 1:
            return
        values = await self.persist(
            subject, "its header's results not read", lambda: self._header_values(backend, info)
        )
        if values is None:
            return
        body = from_dict(info["body"], self.app).clone((values,))
        await self._send_body(info, body, msg)

    async def _send_body(self, info: dict[str, Any], body: Canvas, msg: Message) -> None:
        """Send the body of the chord this run claimed (see :meth:`persist`: a send the
        broker fails is tried again until it goes through). A body that cannot be sent at all
        (it cannot be encoded, it is over ``task_max_message_size``, the app's middleware
        refuses it) fails the chord instead.
        """
        group_id = str(info["id"])

        async def send() -> None:
            plan = Plan(self.app)
            plan.add(body, (), _context(msg))
            await plan.run()

        subject = f"chord {group_id}"
        try:
            await self.persist(subject, "its body not sent", send)
        except Exception as exc:  # lasting: too large, not encodable, refused by middleware
            err = ChordError(f"chord {group_id}: body not sent: {exc}")
            await self.persist(
                subject, "its failure not stored", lambda: self._fail_body(info, err)
            )
            return
        logger.info("chord %s complete: body %r sent", group_id, body)

    async def persist(self, subject: str, what: str, step: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``step``, a step of ``subject``'s workflow, until the broker and the result
        backend let it through.

        A step they fail (:class:`BrokerConnectionError`, once their own retry policy is spent)
        is run again after a pause growing from :data:`BODY_RETRY_FIRST` to
        :data:`BODY_RETRY_MAX` seconds; only this worker stopping ends it (the crash window in
        the module docstring). A redelivery of the message could not do it for a chord this
        run claimed (it cannot take the claim again), and would come late anyway.

        Args:
            subject: what the step is for, for the log ("chord <id>").
            what: what failed, for the log ("its body not sent").
            step: the step, called again for each try: it must be safe to repeat.

        Returns:
            What ``step`` returned.

        Raises:
            Exception: any error of ``step`` but :class:`BrokerConnectionError`.
        """
        pause = BODY_RETRY_FIRST
        while True:
            try:
                return await step()
            except BrokerConnectionError as exc:
                logger.warning("%s: %s (%s); trying again in %gs", subject, what, exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, BODY_RETRY_MAX)

    async def _header_values(
        self, backend: ResultBackend, info: dict[str, Any]
    ) -> list[Any] | None:
        """Every header result in order, read in one round trip; ``None`` after failing the
        chord when one is missing (expired) or not a success."""
        group_id = str(info["id"])
        signing = self.app.conf.signing
        try:
            ids = await load_ids(backend, group_id, signing)
        except DecodeError as exc:  # SecurityError too: forged member ids are never used
            ids, gone = None, f"unreadable ({exc})"
        else:
            gone = "gone"
        if ids is None:
            await self._fail_body(info, ChordError(f"chord {group_id}: its group record is {gone}"))
            return None
        values: list[Any] = []
        for task_id, raw in zip(ids, await backend.get_many(ids), strict=True):
            unreadable = None
            try:
                rec = (
                    ResultRecord.decode(raw, self.app.accept_results, signing, task_id)
                    if raw
                    else None
                )
            except DecodeError as exc:  # SecurityError too: a forged value is never passed on
                rec, unreadable = None, f"unreadable ({exc})"
            if rec is None or rec.status != states.SUCCESS:
                state = rec.status if rec else unreadable or "missing (expired?)"
                err = ChordError(f"Dependency {task_id} has no result to pass on: {state}")
                await self._fail_body(info, err)
                return None
            values.append(rec.result)
        return values

    async def _chord_failed(
        self,
        info: dict[str, Any],
        member_id: str,
        member_task: str,
        exc: BaseException,
        tb: str | None,
    ) -> None:
        backend = self._backend(info)
        if backend is None:
            return
        group_id = str(info["id"])
        subject, token = f"chord {group_id}", _run_token(member_id)
        expires = self.app.conf.result_expires
        claim = await self.persist(  # asked again with the same token: see _member_succeeded
            subject, "not claimed", lambda: backend.add_member(claim_key(group_id), token, expires)
        )
        if claim != 1:
            return  # the body was sent, or another member's failure was reported
        err = ChordError(f"Dependency {member_id} ({member_task}) raised {exc!r}")
        await self.persist(
            subject, "its failure not stored", lambda: self._fail_body(info, err, tb)
        )

    async def _fail_body(
        self, info: dict[str, Any], err: ChordError, tb: str | None = None
    ) -> None:
        """Store ``err`` as the result of the chord's body and run the body's errbacks."""
        body = from_dict(info["body"], self.app)
        logger.error("chord %s failed: %s", info["id"], err)
        finals = await self._store_failure(body, err, tb)
        for errback in _errbacks(body):
            for task in finals:
                request = Request(
                    id=task.id, task=task.task, args=task.args, kwargs=task.kwargs,
                    group_id=str(info["id"]), called_directly=False,
                )  # fmt: skip
                await self.errback(errback, request, err, tb or "")
        await self._report_upwards(finals, err, tb)

    # -- chains --------------------------------------------------------------------------------

    async def _abandon(
        self,
        subject: str,
        rest: list[dict[str, Any]],
        exc: BaseException,
        tb: str | None,
        reply_to: str | None = None,
    ) -> None:
        """The chain steps ``rest`` will never run: fail what stands for their result (also on
        ``reply_to``, the caller's reply channel, which ``rpc://`` results need), storing it
        until the result backend takes it (:meth:`persist`; ``subject`` names the chain)."""
        final = from_dict(rest[-1], self.app)
        finals = await self.persist(
            subject, "its failure not stored", lambda: self._store_failure(final, exc, tb, reply_to)
        )
        await self._report_upwards(finals, exc, tb)

    async def _store_failure(
        self, sig: Canvas, exc: BaseException, tb: str | None, reply_to: str | None = None
    ) -> list[Signature]:
        finals = [t for t in final_tasks(sig) if t.id is not None]
        if self.backend is not None and finals:
            now = time.time()
            records = [
                (
                    t.id,
                    ResultRecord(t.id, states.FAILURE, describe_exception(exc), tb, now, 0, t.task),
                )
                for t in finals
                if t.id is not None
            ]
            serializer, signing = self.app.conf.result_serializer, self.app.conf.signing
            encoded = [(task_id, rec.encode(serializer, signing)) for task_id, rec in records]
            replies = {task_id: reply_to for task_id, _ in records} if reply_to else None
            if self.on_waited is None:
                await self.backend.store(encoded, self.app.conf.result_expires, replies)
            else:  # tasks sent after= these may wait: they fail too (aqueue.dependencies)
                await self.on_waited(encoded, replies)
        return finals

    async def _report_upwards(
        self, finals: list[Signature], exc: BaseException, tb: str | None
    ) -> None:
        # A failed chain or chord body that is itself a member of an outer chord fails that one.
        for task in finals:
            outer = task.options.get("chord")
            if outer and task.id is not None:
                await self._chord_failed(outer, task.id, task.task, exc, tb)

    def _backend(self, info: dict[str, Any]) -> ResultBackend | None:
        if self.backend is None:
            logger.error("chord %s cannot complete: this worker has no result backend", info["id"])
        return self.backend


def _context(msg: Message) -> dict[str, Any]:
    context = {"parent_id": msg.id, "root_id": msg.root_id or msg.id}
    if msg.reply_to:  # the next steps' states go to the caller too (rpc:// needs it)
        context["reply_to"] = msg.reply_to
    return context


def _errbacks(sig: Canvas) -> list[Signature]:
    """The ``link_error`` callbacks that apply to ``sig`` as a whole (deduplicated)."""
    found: list[dict[str, Any]] = []
    pending: list[Canvas] = [sig]
    while pending:
        current = pending.pop()
        for item in current.options.get("link_error") or []:
            data = item.to_dict() if isinstance(item, Canvas) else item
            if data not in found:
                found.append(data)
        if isinstance(current, chain) and current.tasks:
            pending.append(current.tasks[-1])
        elif isinstance(current, chord) and current.body is not None:
            pending.append(current.body)
    return [Signature.from_dict(data, sig.app) for data in found]


def _run_token(task_id: str) -> str:
    """A claim member unique to this run of ``task_id``: a second run never shares a claim."""
    return f"{task_id}:{uuid.uuid4().hex}"
