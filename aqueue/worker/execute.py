"""Executing one delivered message: decode, check, run, then store the outcome and ack.

The order is the at-least-once guarantee: a message is acked only after its outcome (result,
retry message, dead letter) is safely stored, so a worker dying at any point means the message
is delivered again, never lost. Bad input never escapes :meth:`Executor.handle`: a malformed
broker record (:attr:`Delivery.defect`), an undecodable message or a field of the wrong type
(:func:`aqueue.message.decode` checks every one), an unknown task name, arguments that don't fit,
an unserialisable result and a poison message each get one log line and go to the dead-letter
queue with the reason. With ``task_signing_key`` set, a message that is unsigned or wrongly
signed is dead-lettered the same way before anything of it is read, and no result is stored for
the id it claims (docs/signing.md). Anything else that goes wrong while handling one message (a
bug) is logged with its traceback and dead-letters that message too: no message can stop a
runner.

Poison accounting (see :class:`~aqueue.transports.base.RunTracking`): on a broker that tracks
runs, a message is marked as running just before its task runs, so that only a worker's death
*while running it* counts against it; :attr:`Delivery.strikes` are the deaths while it ran as
its worker's isolated suspect, and ``task_max_deliveries`` caps them. The mark costs no round
trip of its own in the common case: a runner finishing one message takes its next one
(:class:`NextRun`) and the :class:`~aqueue.worker.completer.Completer` marks it with the ack.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Container
from concurrent.futures import Executor as ThreadExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aqueue import message as wire
from aqueue import signals, states
from aqueue.canvas.primitives import Signature
from aqueue.dependencies import Dependencies
from aqueue.exceptions import (
    AqueueError,
    BrokerError,
    ConfigurationError,
    DecodeError,
    EncodeError,
    Retry,
    SecurityError,
    SerializationError,
    TaskNotRegistered,
    TaskRevokedError,
    WorkerLostError,
)
from aqueue.message import Message
from aqueue.middleware import chain_run
from aqueue.results.record import ResultRecord, describe_exception, outcome
from aqueue.task import Request, Task, current_request
from aqueue.transports import Broker, Delivery
from aqueue.worker.batch import Batches
from aqueue.worker.completer import Completer, NotStored
from aqueue.worker.invoke import call_hook, cancelling, invoke, is_task_failure
from aqueue.worker.locks import RunLocks
from aqueue.worker.revoke import Terminable, Terminated, revocation_record
from aqueue.worker.stream import Emit, StreamWriter
from aqueue.worker.workflow import Workflow

if TYPE_CHECKING:
    from aqueue.app import Aqueue
    from aqueue.transports import ResultBackend

logger = logging.getLogger("aqueue.worker")


class Executor:
    """Runs messages for one worker; :meth:`handle` never raises except on cancellation.

    Args:
        app: the app whose tasks are run.
        broker: the connected broker the messages came from.
        backend: the connected result backend, or ``None`` when results are not stored.
        hostname: the worker's name, e.g. ``"aqueue@host"``, given to ``self.request``.
        threads: the pool that runs plain (non-async) task functions.
    """

    def __init__(
        self,
        app: Aqueue,
        broker: Broker,
        backend: ResultBackend | None,
        hostname: str,
        threads: ThreadExecutor | None = None,
    ) -> None:
        self.app = app
        self.broker = broker
        self.backend = backend
        self.hostname = hostname
        self.threads = threads
        self.accept = frozenset(app.conf.accept_content)
        # task_signing_key: messages are verified, records signed (None: no key, no cost).
        self.signing = app.conf.signing
        # result_extended: records carry the task's name, args, kwargs, worker and queue.
        self.extended = app.conf.result_extended
        self.active: dict[str, Request] = {}
        self.done = 0
        self._acked_early: set[int] = set()
        # Operations (aqueue.worker.revoke, aqueue.control.events): ids not to run, bodies revoke
        # can cancel, and the event hook - None unless the worker sends events, so no event is
        # ever built.
        self.revoked: Container[str] = frozenset()
        self.terminable = Terminable()
        self.on_event: Callable[[str, Message, dict[str, Any]], None] | None = None
        # Chains and chords: what follows a task, done after its outcome is stored, before the ack.
        self.workflow = Workflow(app, backend, self._apply_errback)
        # Every store and ack goes through here: runners finishing together share round trips.
        self.completer = Completer(broker, backend, app.conf.result_expires)
        # On a broker that blames only what was running (RunTracking), runs are marked.
        self.tracks_runs = self.completer.tracker is not None
        # Unique tasks' locks follow the lease while they run (aqueue.worker.locks); tasks sent
        # after= this one are released or failed when its outcome is stored (aqueue.dependencies).
        lease = float(app.conf.broker_transport_options.get("visibility_timeout", 30.0))
        self.locks = RunLocks(backend, lease)
        self.dependencies = Dependencies.of(app, backend)
        if self.dependencies is not None:
            self.workflow.on_waited = self.dependencies.store
            self.completer.dependencies = self.dependencies
        # Batch tasks: their calls wait here for a full batch (aqueue.worker.batch).
        self.batches = Batches(self)

    # -- entry point -------------------------------------------------------------------------

    async def handle(
        self,
        delivery: Delivery,
        isolated: bool = False,
        premarked: bool = False,
        after: NextRun | None = None,
    ) -> bool:
        """Process one delivery to the end: run it, store the outcome, ack or dead-letter it.

        A call of a batch task is handed to its batch instead (:mod:`aqueue.worker.batch`),
        which finishes it later.

        Args:
            delivery: what the broker handed out.
            isolated: it runs as this worker's one suspect (see :class:`RunTracking`): a death
                of the worker while it runs is a strike against it.
            premarked: its run was marked already (with the ack of the runner's last one).
            after: where the runner's next delivery is taken from when this one ends in a
                plain success, to be marked with its ack (``after.taken`` then holds it).

        Returns:
            True once the delivery is done with; False when it waits in a batch.

        Raises:
            asyncio.CancelledError: only that, and only when the runner's cancellation was
                requested (the worker is stopping); a ``CancelledError`` raised by the task's
                own code is its failure. KeyboardInterrupt and SystemExit pass through too.
        """
        batched = False
        # The runner's cancelling() now: a CancelledError with no cancellation requested
        # beyond it is not a shutdown (see is_task_failure).
        entered = cancelling()
        try:
            if self.signing is not None:
                try:
                    self.signing.messages.verify(delivery.body)
                except SecurityError as exc:
                    await self._refuse(delivery, exc)
                    return True
            try:
                if delivery.defect is not None:
                    raise DecodeError(delivery.defect)
                msg = wire.decode(delivery.body, self.accept)
            except (SerializationError, ConfigurationError) as exc:
                # ConfigurationError: a content type this process cannot read (msgpack missing).
                await self._reject_undecodable(delivery, exc)
                return True
            logger.info("Task %s[%s] received", msg.task, msg.id)
            if self.on_event is not None:
                self.on_event("task-received", msg, _received(msg))
            if signals.task_received.receivers:
                request = self._request(delivery, msg, msg.time_limit)
                await signals.task_received.send(self.hostname, request=request)
            task = await self._admit(delivery, msg)
            if task is None:
                await self.locks.discard(msg)
                return True
            if task.batch_size is not None:
                self.batches.add(task, delivery, msg, isolated, premarked)
                batched = True
                return False
            await self._run(delivery, msg, task, isolated, premarked, after)
        except BrokerError as exc:
            # The broker or backend failed while storing an outcome: leave the message leased,
            # so it is delivered again after the visibility timeout (nothing is lost).
            logger.error("could not finish message from %s: %s", delivery.queue, exc)
        except BaseException as exc:
            # Not only Exception: a stray CancelledError or GeneratorExit from a signal
            # receiver or the like must not end the runner with this message still leased.
            if not is_task_failure(exc, entered):
                raise  # a shutdown (or KeyboardInterrupt): the message is handed back
            await self._give_up(delivery, exc)
        finally:
            if not batched:
                self.done += 1
                self._acked_early.discard(id(delivery))
                self.locks.drop(delivery)
        return True

    async def _give_up(self, delivery: Delivery, exc: BaseException) -> None:
        """An unexpected error while handling ``delivery`` (a bug, not bad input): log it with
        its traceback and dead-letter the message, so that it cannot stall the worker."""
        reason = f"the worker failed while handling it: {type(exc).__name__}: {exc}"
        logger.exception(
            "message from queue %s sent to its dead-letter queue: %s", delivery.queue, reason
        )
        try:
            await self.broker.dead_letter(delivery, reason)
        except Exception as again:
            # Left leased: delivered again after the visibility timeout.
            logger.error("could not dead-letter it either: %s", again)
            return
        await self._dead_lettered(delivery, reason)

    # -- before running ----------------------------------------------------------------------

    async def _refuse(self, delivery: Delivery, exc: SecurityError) -> None:
        """A message that is not signed with the key: dead-lettered unread, with one log line.
        No result is stored: the id it claims is not to be trusted."""
        reason = str(exc)
        logger.error(
            "refused a message from queue %s, sent to its dead-letter queue: %s",
            delivery.queue,
            reason,
        )
        await self.broker.dead_letter(delivery, reason)
        if signals.task_rejected.receivers:
            await signals.task_rejected.send(self.hostname, message=delivery, exc=exc)
        await self._dead_lettered(delivery, reason)

    async def _reject_undecodable(self, delivery: Delivery, exc: AqueueError) -> None:
        what = "malformed broker record" if delivery.defect is not None else "undecodable message"
        reason = f"{what}: {exc}"
        logger.error(
            "discarded a message from queue %s to its dead-letter queue: %s", delivery.queue, reason
        )
        try:
            env = wire.decode_envelope(delivery.body)
        except SerializationError:
            env = None
        if env is not None:
            failure = ResultRecord(
                env["id"],
                states.FAILURE,
                describe_exception(exc),
                None,
                time.time(),
                0,
                env["task"],
            )
            reply = env.get("reply_to")
            await self._store(failure, reply_to=reply if isinstance(reply, str) else None)
        await self.broker.dead_letter(delivery, reason)
        if signals.task_rejected.receivers:
            await signals.task_rejected.send(self.hostname, message=delivery, exc=exc)
        name = env["task"] if env is not None else None
        await self._dead_lettered(delivery, reason, env["id"] if env is not None else None, name)

    async def _admit(self, delivery: Delivery, msg: Message) -> Task[Any, Any] | None:
        """Return the task to run, or ``None`` after dealing with a message that must not run."""
        cap = self.app.conf.task_max_deliveries
        if delivery.strikes + 1 > cap:
            reason = (
                f"delivered {delivery.strikes + 1} times counted against it, more than "
                f"task_max_deliveries={cap}: a poison message ({delivery.strikes} worker(s) "
                f"died while running it)"
            )
            await self._dead_letter(delivery, msg, reason, AqueueError(reason))
            return None
        if msg.id in self.revoked:
            await self._revoke(delivery, msg, "revoked")
            return None
        if msg.expires is not None and msg.expires < time.time():
            reason = f"expired at {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(msg.expires))}Z"
            await self._revoke(delivery, msg, reason, expired=True)
            return None
        task = self.app.tasks.get(msg.task)
        if task is None:
            reason = (
                f"unknown task {msg.task!r}: it is not registered in this worker's app "
                f"(check the name and the worker's -A)"
            )
            unknown = TaskNotRegistered(reason)
            await self._dead_letter(delivery, msg, reason, unknown)
            if signals.task_unknown.receivers:
                await signals.task_unknown.send(
                    self.hostname, name=msg.task, id=msg.id, message=msg, exc=unknown
                )
            return None
        try:
            task.check_arguments(msg.args, msg.kwargs)
        except TypeError as exc:
            reason = f"arguments do not fit {msg.task}: {exc}"
            await self._dead_letter(delivery, msg, reason, TypeError(reason))
            return None
        if (
            delivery.delivery_count > 1
            and self.tracks_runs
            and not _rejects_on_lost(task, self.app)
        ):
            await self._worker_lost(delivery, msg)
            return None
        return task

    async def _worker_lost(self, delivery: Delivery, msg: Message) -> None:
        """``task_reject_on_worker_lost=False`` (Celery's meaning): a message that was running
        when its worker died is not run again; its result is a ``WorkerLostError`` FAILURE,
        and it is acked. Only on a broker that marks runs (RunTracking), where
        ``delivery_count > 1`` means exactly that (docs/poison.md).

        A run that finished before its worker died (its outcome stored, the message not acked
        yet) is not lost: its stored outcome stands, the workflow steps after it are taken
        (again: at least once, as for any redelivery), and the message is acked."""
        finished = await self._finished(msg)
        if finished is not None:
            logger.warning(
                "Task %s[%s] finished (%s) before its worker died: acked, not run again",
                msg.task,
                msg.id,
                finished.status,
            )
            if finished.status == states.SUCCESS:
                await self.workflow.succeeded(msg, finished.result)
            else:
                done = outcome(finished)
                if not isinstance(done, BaseException):
                    done = WorkerLostError(f"{msg.task}[{msg.id}] ended {finished.status}")
                await self.workflow.failed(msg, done, finished.traceback)
            await self._ack(delivery)
            return
        deaths = delivery.delivery_count - 1
        reason = (
            f"Worker exited prematurely: {deaths} worker(s) died while running "
            f"{msg.task}[{msg.id}], and task_reject_on_worker_lost is False"
        )
        logger.error("Task %s[%s] not run again: %s", msg.task, msg.id, reason)
        exc = WorkerLostError(reason)
        await self._fail(msg, exc)
        await self._ack(delivery)

    async def _finished(self, msg: Message) -> ResultRecord | None:
        """``msg``'s stored record if it is ready (SUCCESS, FAILURE, REVOKED), else ``None``
        (also with no result backend, an ignored result, or a record that cannot be read)."""
        if self.backend is None or msg.ignore_result:
            return None
        [raw] = await self.backend.get_many([msg.id])
        if raw is None:
            return None
        try:
            record = ResultRecord.decode(raw, self.app.accept_results, self.signing, msg.id)
        except DecodeError:
            return None
        return record if record.ready else None

    async def _revoke(
        self,
        delivery: Delivery,
        msg: Message,
        reason: str,
        *,
        expired: bool = False,
        terminated: bool = False,
    ) -> None:
        """Store REVOKED for a message that must not run (or was terminated), then ack it."""
        logger.info("Task %s[%s] revoked: %s", msg.task, msg.id, reason)
        await self._store(revocation_record(msg.id, reason, msg.retries, msg.task), msg)
        await self.workflow.failed(msg, TaskRevokedError(reason), None)
        await self._ack(delivery)
        if self.on_event is not None:
            fields = {"reason": reason, "expired": expired, "terminated": terminated}
            self.on_event("task-revoked", msg, fields)
        if signals.task_revoked.receivers:
            await signals.task_revoked.send(
                self.app.tasks.get(msg.task) or msg.task,
                request=self._request(delivery, msg, msg.time_limit),
                terminated=terminated,
                signum=None,
                expired=expired,
            )

    async def _fail(self, msg: Message, exc: BaseException) -> None:
        """Store FAILURE with ``exc`` for ``msg`` and tell its workflow (link_error, chord)."""
        record = ResultRecord(
            msg.id,
            states.FAILURE,
            describe_exception(exc),
            None,
            time.time(),
            msg.retries,
            msg.task,
        )
        await self._store(record, msg)
        await self.workflow.failed(msg, exc, None)

    async def _dead_letter(
        self, delivery: Delivery, msg: Message, reason: str, exc: BaseException
    ) -> None:
        logger.error("Task %s[%s] sent to the dead-letter queue: %s", msg.task, msg.id, reason)
        await self._fail(msg, exc)
        await self.broker.dead_letter(delivery, reason)
        await self._dead_lettered(delivery, reason, msg.id, msg.task)

    async def _dead_lettered(
        self,
        delivery: Delivery,
        reason: str,
        task_id: str | None = None,
        name: str | None = None,
    ) -> None:
        """Send ``task_dead_lettered`` (when anything listens) for a message just dead-lettered."""
        if signals.task_dead_lettered.receivers:
            await signals.task_dead_lettered.send(
                self.hostname, task_id=task_id, name=name, queue=delivery.queue, reason=reason
            )

    # -- running -----------------------------------------------------------------------------

    def _request(self, delivery: Delivery, msg: Message, time_limit: float | None) -> Request:
        return Request(
            id=msg.id,
            task=msg.task,
            args=msg.args,
            kwargs=msg.kwargs,
            retries=msg.retries,
            queue=msg.queue,
            priority=msg.priority,
            eta=msg.eta,
            expires=msg.expires,
            headers=msg.headers,
            delivery_count=delivery.delivery_count,
            hostname=self.hostname,
            parent_id=msg.parent_id,
            root_id=msg.root_id,
            group_id=msg.group_id,
            time_limit=time_limit,
            is_eager=False,
            called_directly=False,
            reply_to=msg.reply_to,
            sent_at=msg.sent_at,
        )

    async def _run(
        self,
        delivery: Delivery,
        msg: Message,
        task: Task[Any, Any],
        isolated: bool,
        premarked: bool,
        after: NextRun | None,
    ) -> None:
        conf = self.app.conf
        time_limit = msg.time_limit or task.time_limit or conf.task_time_limit
        soft_limit = getattr(task, "soft_time_limit", None) or conf.task_soft_time_limit
        request = self._request(delivery, msg, time_limit)
        acks_late = task.acks_late if task.acks_late is not None else conf.task_acks_late
        if not acks_late:
            await self.completer.finish((), (delivery,))
            self._acked_early.add(id(delivery))
        elif self.tracks_runs and not premarked and not await self._start(delivery, isolated):
            logger.warning(
                "Task %s[%s] not started: its lease ran out and another worker has it",
                msg.task,
                msg.id,
            )
            return
        if "unique" in msg.options:
            await self.locks.start(delivery, msg)
        track = task.track_started if task.track_started is not None else conf.task_track_started
        if track:
            await self._store(
                ResultRecord(
                    msg.id,
                    states.STARTED,
                    {"hostname": self.hostname},
                    None,
                    time.time(),
                    msg.retries,
                    msg.task,
                ),
                msg,
            )
        logger.info("Task %s[%s] started", msg.task, msg.id)
        if self.on_event is not None:
            self.on_event("task-started", msg, {})
        self.active[msg.id] = request
        # Set for all that follows the run too: what its outcome sends (chain steps, retries,
        # callbacks) is sent from this task's context (tracing middleware reads it).
        token = current_request.set(request)
        if signals.task_prerun.receivers:
            await signals.task_prerun.send(
                task, task_id=msg.id, task=task, args=msg.args, kwargs=msg.kwargs, request=request
            )
        started = time.monotonic()
        state: str = states.FAILURE
        retval: Any = None
        emit = self._stream_writer(msg) if task.is_stream else None
        entered = cancelling()  # see is_task_failure: what a shutdown would raise above
        try:
            if "after" in msg.options and self.dependencies is not None:
                request.dependencies = await self.dependencies.results(msg)
            # terminable.run: revoke(terminate=True) cancels the body and raises Terminated here.
            body = self._body(task, request, time_limit, soft_limit, emit)
            value = await self.terminable.run(msg.id, body)
        except Terminated:
            state = states.REVOKED
            await self._revoke(delivery, msg, "terminated", terminated=True)
        except Retry as retry:
            state, retval = states.RETRY, retry
            await self._retried(delivery, msg, task, request, retry, traceback.format_exc())
        except BaseException as exc:
            # A CancelledError the task let out while no cancellation of this runner was
            # requested (a helper it cancelled and awaited), a GeneratorExit...: the task's
            # failure like any exception. A shutdown's cancellation goes on to the runner.
            if not is_task_failure(exc, entered):
                raise
            tb, retval = traceback.format_exc(), exc
            if task.autoretry_for and isinstance(exc, task.autoretry_for):
                limit = (task.retry_kwargs or {}).get("max_retries", task.effective_max_retries())
                if limit is None or msg.retries < limit:
                    delay = task.backoff_delay(msg.retries)
                    state = states.RETRY
                    again = Retry(exc=exc, when=delay)
                    await self._retried(delivery, msg, task, request, again, tb)
            if state != states.RETRY:
                runtime = time.monotonic() - started
                await self._failure(delivery, msg, task, request, exc, tb, runtime)
        else:
            retval = value
            runtime = time.monotonic() - started
            if await self._success(delivery, msg, task, value, runtime, after):
                state = states.SUCCESS
                if signals.task_success.receivers:
                    await signals.task_success.send(task, result=value, request=request)
        finally:
            # Its own entry only: its retry, published above, may run already on another runner.
            if self.active.get(msg.id) is request:
                del self.active[msg.id]
            current_request.reset(token)
        if "unique" in msg.options:
            await self.locks.finish(delivery, msg, state)
        if signals.task_postrun.receivers:
            await signals.task_postrun.send(
                task, task_id=msg.id, task=task, args=msg.args, kwargs=msg.kwargs,
                retval=retval, state=state, request=request,
            )  # fmt: skip

    def _body(
        self,
        task: Task[Any, Any],
        request: Request,
        time_limit: float | None,
        soft_limit: float | None,
        emit: Emit | None = None,
    ) -> Awaitable[Any]:
        """The invocation of ``task`` for ``request`` (:func:`invoke`), inside the app's
        middleware when it has any (which sees ``request``)."""
        if not self.app.middleware:
            return invoke(task, request, time_limit, self.threads, soft_limit, emit)
        return chain_run(
            self.app.middleware,
            task,
            request,
            lambda: invoke(task, request, time_limit, self.threads, soft_limit, emit),
        )

    async def _retried(
        self,
        delivery: Delivery,
        msg: Message,
        task: Task[Any, Any],
        request: Request,
        retry: Retry,
        tb: str,
    ) -> None:
        """:meth:`_retry`, then the ``task_retry`` signal."""
        await self._retry(delivery, msg, task, retry, tb)
        if signals.task_retry.receivers:
            reason = retry.exc if retry.exc is not None else retry
            await signals.task_retry.send(task, request=request, reason=reason, einfo=tb)

    async def _success(
        self,
        delivery: Delivery,
        msg: Message,
        task: Task[Any, Any],
        value: Any,
        runtime: float,
        after: NextRun | None = None,
    ) -> bool:
        """Store and ack a success; False when its result could not be stored (dead-lettered)."""
        record = ResultRecord(
            msg.id, states.SUCCESS, value, None, time.time(), msg.retries, msg.task
        )
        if task.is_stream:  # value: the list of the items it yielded
            record = dataclasses.replace(record, streamed=len(value))
        if self.extended:
            record = self._extend(record, msg)
        try:
            data = record.encode(self.app.conf.result_serializer, self.signing)
        except EncodeError as exc:
            reason = f"result is not serialisable: {exc}"
            await self._dead_letter(delivery, msg, reason, EncodeError(reason))
            return False
        records = [] if msg.ignore_result or self.backend is None else [(msg.id, data)]
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "Task %s[%s] succeeded in %.4fs: %s", msg.task, msg.id, runtime, _short(value)
            )
        if self.on_event is not None:
            self.on_event("task-succeeded", msg, {"result": _short(value), "runtime": runtime})
        if not msg.link and not msg.options and _plain_success(task):
            # Nothing runs between storing and acking: both in the runners' shared round trips,
            # with the start of this runner's next run when one is waiting.
            nxt = after.take() if after is not None else None
            start = (nxt.delivery, nxt.isolated) if nxt is not None else None
            acks = self._unacked(delivery)
            try:
                ours = await self.completer.finish(records, acks, msg.reply_to, start)
            except NotStored as exc:
                return await self._not_stored(delivery, msg, records, acks, exc)
            if nxt is not None:
                nxt.marked = ours
            return True
        try:
            await self.completer.finish(records, (), msg.reply_to)
        except NotStored as exc:
            if not await self._not_stored(delivery, msg, records, (), exc):
                return False
        for link in msg.link:
            await self._apply_link(Signature.from_dict(link, self.app), (value,), msg)
        await self.workflow.succeeded(msg, value)
        await call_hook(task.on_success, value, msg.id, msg.args, msg.kwargs)
        await call_hook(
            task.after_return, states.SUCCESS, value, msg.id, msg.args, msg.kwargs, None
        )
        await self._ack(delivery)
        return True

    async def _not_stored(
        self,
        delivery: Delivery,
        msg: Message,
        records: list[tuple[str, bytes]],
        acks: tuple[Delivery, ...],
        exc: NotStored,
    ) -> bool:
        """The result of ``msg`` (``records``, to be stored before ``acks``) was not stored
        (``exc``). It is tried once more, alone: a backend away for a moment (a restart, a
        dropped connection) takes it now. Failing again while a FAILURE record saying so can
        be stored, the backend refuses this result itself (too large for it, or not storable
        there): that FAILURE stands and the message is dead-lettered, rather than run again
        each visibility timeout for ever with its caller never answered.

        Returns:
            True if the result was stored (and ``acks`` acked) on the second try; False if the
            message was dead-lettered.

        Raises:
            BrokerConnectionError: the FAILURE could not be stored either: the backend is
                down, so the message stays leased and is delivered again after the visibility
                timeout. Any other error of the backend's storing it likewise.
        """
        logger.warning("Task %s[%s]: %s; trying once more", msg.task, msg.id, exc)
        try:
            await self.completer.finish(records, acks, msg.reply_to)
        except NotStored as again:
            size = sum(len(data) for _, data in records)
            reason = (
                f"its result ({size} bytes encoded) could not be stored in the result "
                f"backend: {again.reason}"
            )
            await self._dead_letter(delivery, msg, reason, BrokerError(reason))
            return False
        return True

    async def _failure(
        self,
        delivery: Delivery,
        msg: Message,
        task: Task[Any, Any],
        request: Request,
        exc: BaseException,
        tb: str,
        runtime: float,
    ) -> None:
        logger.error("Task %s[%s] failed in %.4fs: %r\n%s", msg.task, msg.id, runtime, exc, tb)
        if self.on_event is not None:
            fields = {"exception": repr(exc), "traceback": tb, "runtime": runtime}
            self.on_event("task-failed", msg, fields)
        await self._store_exception(msg, states.FAILURE, exc, tb)
        if signals.task_failure.receivers:
            await signals.task_failure.send(
                task, task_id=msg.id, exception=exc, args=msg.args, kwargs=msg.kwargs,
                traceback=tb, einfo=tb, request=request,
            )  # fmt: skip
        for errback in msg.link_error:
            await self._apply_errback(Signature.from_dict(errback, self.app), request, exc, tb)
        await self.workflow.failed(msg, exc, tb)
        await call_hook(task.on_failure, exc, msg.id, msg.args, msg.kwargs, tb)
        await call_hook(task.after_return, states.FAILURE, exc, msg.id, msg.args, msg.kwargs, tb)
        await self._ack(delivery)

    async def _store_exception(self, msg: Message, state: str, exc: BaseException, tb: str) -> None:
        """Store ``state`` (FAILURE or RETRY) with ``exc`` and its traceback ``tb``."""
        record = ResultRecord(
            msg.id, state, describe_exception(exc), tb, time.time(), msg.retries, msg.task
        )
        await self._store(record, msg)

    async def _retry(
        self, delivery: Delivery, msg: Message, task: Task[Any, Any], retry: Retry, tb: str
    ) -> None:
        when = retry.when
        if when is None:
            eta = time.time() + task.effective_retry_delay()
        elif isinstance(when, int | float):
            eta = time.time() + float(when)
        else:
            eta = when.timestamp()
        again = msg.replace(retries=msg.retries + 1, eta=eta)
        await self.app.publish([again])
        exc = retry.exc if retry.exc is not None else retry
        logger.info(
            "Task %s[%s] retry %d in %.2fs: %r",
            msg.task,
            msg.id,
            again.retries,
            max(eta - time.time(), 0.0),
            exc,
        )
        if self.on_event is not None:
            self.on_event("task-retried", msg, {"exception": repr(exc), "traceback": tb})
        await self._store_exception(msg, states.RETRY, exc, tb)
        await call_hook(task.on_retry, exc, msg.id, msg.args, msg.kwargs, tb)
        await call_hook(task.after_return, states.RETRY, exc, msg.id, msg.args, msg.kwargs, tb)
        await self._ack(delivery)

    # -- links and hooks ---------------------------------------------------------------------

    async def _apply_link(self, sig: Signature, args: tuple[Any, ...], parent: Message) -> None:
        """Send ``sig`` with ``args``: a broker away for a moment is tried again until it takes
        it (:meth:`Workflow.persist`), as a chain's next step is; a link that cannot be sent at
        all (refused, not encodable) is logged, and the parent's outcome stands."""

        async def send() -> None:
            await sig.apply_async(args, parent_id=parent.id, root_id=parent.root_id or parent.id)

        try:
            await self.workflow.persist(
                f"link {sig!r} of {parent.task}[{parent.id}]", "not sent", send
            )
        except AqueueError as exc:
            logger.error(
                "link %r of %s[%s] could not be sent: %s", sig, parent.task, parent.id, exc
            )

    async def _apply_errback(
        self, sig: Signature, request: Request, exc: BaseException, tb: str
    ) -> None:
        # As in Celery: an errback registered here is called in this worker with the live
        # (request, exc, traceback); any other is sent as a task with the failed task's id.
        errback = self.app.tasks.get(sig.task)
        if errback is not None:
            try:
                call_request = Request(
                    id=request.id,
                    task=sig.task,
                    args=(request, exc, tb),
                    kwargs=sig.kwargs,
                    hostname=self.hostname,
                )
                await invoke(errback, call_request, None, self.threads)
            except Exception:
                logger.exception("errback %r of %s[%s] failed", sig, request.task, request.id)
            return
        await self._apply_link(sig, (request.id,), _parent_of(request))

    async def _start(self, delivery: Delivery, isolated: bool) -> bool:
        """Mark ``delivery`` as running (batched with other runners' marks and acks); False if
        its lease is lost."""
        return await self.completer.finish((), (), None, (delivery, isolated))

    def _unacked(self, delivery: Delivery) -> tuple[Delivery, ...]:
        """``(delivery,)``, or ``()`` when it was acked before running (``acks_late=False``)."""
        if id(delivery) in self._acked_early:
            self._acked_early.discard(id(delivery))
            return ()
        return (delivery,)

    async def _ack(self, delivery: Delivery) -> None:
        acks = self._unacked(delivery)
        if acks:
            await self.completer.finish((), acks)

    # -- storing -----------------------------------------------------------------------------

    def _stream_writer(self, msg: Message) -> StreamWriter | None:
        """What stores the items of a streamed task's run; ``None`` when nothing is stored."""
        if self.backend is None or msg.ignore_result:
            return None
        conf = self.app.conf
        return StreamWriter(
            self.backend, msg, conf.result_serializer, self.signing, conf.result_expires,
            timeout=self.completer.timeout,
        )  # fmt: skip

    async def _store(
        self, record: ResultRecord, msg: Message | None = None, reply_to: str | None = None
    ) -> None:
        if self.backend is None or (msg is not None and msg.ignore_result):
            return
        if self.extended and msg is not None:
            record = self._extend(record, msg)
        # Only outcome records (failure, retry, revoked, started) come here: their result is an
        # exception description or plain meta, always serialisable.
        data = record.encode(self.app.conf.result_serializer, self.signing)
        reply = msg.reply_to if msg is not None else reply_to
        try:
            await self.completer.finish([(record.task_id, data)], (), reply)
        except NotStored as exc:
            raise exc.reason from exc  # the backend's own error, as the callers expect

    def _extend(self, record: ResultRecord, msg: Message) -> ResultRecord:
        """``record`` with ``result_extended``'s fields (Celery's): args, kwargs, the worker
        that ran it and its queue (the name is in every record)."""
        return dataclasses.replace(
            record, args=msg.args, kwargs=msg.kwargs, worker=self.hostname, queue=msg.queue
        )


@dataclass(slots=True)
class Handoff:
    """A runner's next delivery, taken while its current one finished.

    Attributes:
        delivery, isolated: the run (``isolated``: as the worker's one suspect).
        marked: True once marked as running with the current one's ack; False if its lease
            was found lost (it must not run here); ``None`` if not marked (the ack failed).
    """

    delivery: Delivery
    isolated: bool
    marked: bool | None = None


class NextRun:
    """How a runner hands the executor its next delivery, to be marked with the current ack.

    Args:
        take: returns the next ready ``(delivery, isolated)`` without waiting, or ``None``.
    """

    __slots__ = ("_take", "taken")

    def __init__(self, take: Callable[[], tuple[Delivery, bool] | None]) -> None:
        self._take = take
        self.taken: Handoff | None = None  # what take() took during the last handle()

    def take(self) -> Handoff | None:
        found = self._take()
        self.taken = None if found is None else Handoff(*found)
        return self.taken


def _rejects_on_lost(task: Task[Any, Any], app: Aqueue) -> bool:
    """The task's ``reject_on_worker_lost`` option, else ``task_reject_on_worker_lost``."""
    own = getattr(task, "reject_on_worker_lost", None)
    return bool(app.conf.task_reject_on_worker_lost if own is None else own)


def _plain_success(task: Task[Any, Any]) -> bool:
    """True if ``task`` keeps the base class's no-op ``on_success`` and ``after_return``."""
    on_success = getattr(task.on_success, "__func__", None)
    return on_success is Task.on_success and (
        getattr(task.after_return, "__func__", None) is Task.after_return
    )


def _parent_of(request: Request) -> Message:
    return Message(id=request.id or "", task=request.task or "", root_id=request.root_id)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _received(msg: Message) -> dict[str, Any]:
    """The fields of a ``task-received`` event (see :mod:`aqueue.control.events`)."""
    return {
        "args": _short(msg.args, 200),
        "kwargs": _short(msg.kwargs, 200),
        "retries": msg.retries,
        "eta": msg.eta,
        "expires": msg.expires,
        "queue": msg.queue,
        "parent_id": msg.parent_id,
        "root_id": msg.root_id,
        "group_id": msg.group_id,
    }
