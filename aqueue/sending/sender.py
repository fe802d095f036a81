"""Sending task calls: options, routing and defaults resolved into messages, then published.

:class:`Sender` is the app's (``app.sender``); ``send_task``, ``delay``, ``apply_async``,
``delay_many`` and canvas all end here. Concurrent sends with the default retry policy share one
broker round trip (:class:`~aqueue.batching.Batcher`); a client's results come back on its reply
channel (:class:`~aqueue.transports.ReplyChannels`) when the result backend has one.

A send is bounded: it tries at most as often as its retry policy says, and gives up with
:class:`~aqueue.exceptions.BrokerConnectionError` once ``broker_connection_timeout`` seconds have
passed in all (README: "When a server is down").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar

from aqueue import signals
from aqueue.batching import Batcher, ItemErrors
from aqueue.canvas.primitives import Signature
from aqueue.eager import apply_eager
from aqueue.exceptions import (
    ArgumentsError,
    BrokerConnectionError,
    BrokerError,
    ConfigurationError,
    MessageTooLarge,
    PublishIncomplete,
    TaskNotRegistered,
)
from aqueue.message import Message, make_message, new_id
from aqueue.middleware import chain_publish
from aqueue.perloop import PerLoop
from aqueue.results.mailbox import Mailbox
from aqueue.results.result import AsyncResult
from aqueue.sending import routing
from aqueue.sending.guard import needs_guard, send_guarded, with_guards
from aqueue.sending.options import (
    AnyRetryPolicy,
    RetryPolicy,
    check_send_options,
    epoch_value,
    headers_value,
    priority_value,
    seconds_value,
    text_value,
    time_limit_value,
)
from aqueue.transports import Binding, Outgoing, ReplyChannels, ResultBackend, tls_hint

if TYPE_CHECKING:
    from aqueue.app import Aqueue
    from aqueue.task import Task

__all__ = ["DEFAULT_RETRY_POLICY", "Sender"]

logger = logging.getLogger("aqueue.app")

T = TypeVar("T")

#: Celery's default publish retry policy (seconds).
DEFAULT_RETRY_POLICY: RetryPolicy = {
    "max_retries": 3,
    "interval_start": 0.0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}
# Seconds sends go without a reply channel after the result backend could not be reached.
_REPLY_RETRY = 5.0
# Messages a bulk send may publish per broker_connection_timeout (the Redis broker sends up to
# this many per round trip; RabbitMQ confirms them in well under a second).
_ROUND = 1000


@dataclass
class _LoopState:
    """What sending keeps per event loop."""

    publisher: Batcher[Outgoing] | None = None
    # The earliest deadline (event-loop time) of the sends waiting for the next shared publish
    # that have one (they connected first), or None: that publish ends by then.
    flush_by: float | None = None
    # time.monotonic() before which sends skip the reply channel (the backend was unreachable).
    replies_paused_until: float = 0.0


class Sender:
    """Builds and publishes the messages of one app's task calls.

    Args:
        app: the app whose settings, routes, broker and result backend are used.
    """

    def __init__(self, app: Aqueue) -> None:
        self.app = app
        self._loops: PerLoop[_LoopState] = PerLoop(_LoopState)

    async def send(
        self,
        name: str,
        args: Iterable[Any] | None,
        kwargs: Mapping[str, Any] | None,
        task: Task[Any, Any] | None,
        options: Mapping[str, Any],
    ) -> AsyncResult[Any]:
        """Publish one call; see :meth:`aqueue.Aqueue.send_task` (same errors)."""
        _check_name(name)
        check_send_options(options)
        task = task or self.app.tasks.get(name)
        args_t = tuple(args or ())
        kwargs_d = dict(kwargs or {})
        if task is not None and task.typing:  # Celery's typing=True: before anything is sent
            task.check_arguments(args_t, kwargs_d)
        if self.app.conf.task_always_eager:
            if task is None:
                raise TaskNotRegistered(f"task {name!r} is not registered (task_always_eager)")
            return await apply_eager(self.app, task, args_t, kwargs_d, dict(options))
        retry, policy = options.get("retry", True), options.get("retry_policy")
        backend, reply_to, left = await self._prepare(1, retry, policy)
        message = self.build_message(name, args_t, kwargs_d, task, options, reply_to)
        if needs_guard(task, options):
            return await self._send_guarded(message, task, options, backend, retry, policy, left)
        # No closure and no coroutine of its own on this path, a web app's one call per
        # request: each would stay alive, for the garbage collector to scan, until the reply.
        result, publishing = self._publication(message, backend, retry, policy, left)
        await publishing
        return result

    def _publication(
        self,
        message: Message,
        backend: ResultBackend | None,
        retry: bool,
        policy: AnyRetryPolicy,
        left: float | None,
        outgoing: Outgoing | None = None,
    ) -> tuple[AsyncResult[Any], Awaitable[None]]:
        """The result handle of ``message`` (its mailbox, if any, exists before anything is
        sent) and the publish to await: through the middleware when there is some, else of
        ``outgoing``, ``message`` encoded (encoded now when not given).

        Raises:
            EncodeError: (``MessageTooLarge`` included) ``message`` cannot be encoded; nothing
                was published.
        """
        if self.wraps_publishing():
            return self._handle(message, backend), self._publish_wrapped(
                [message], retry, policy, left
            )
        if outgoing is None:
            outgoing = self.outgoing(message)  # EncodeError (MessageTooLarge) before sending
        return self._handle(message, backend), self.publish_outgoing(
            [outgoing], retry, policy, left
        )

    async def _send_guarded(
        self,
        message: Message,
        task: Task[Any, Any] | None,
        options: Mapping[str, Any],
        backend: ResultBackend | None,
        retry: bool,
        policy: AnyRetryPolicy,
        left: float | None,
    ) -> AsyncResult[Any]:
        """Publish ``message`` under its guards (unique or held calls; see
        :mod:`aqueue.sending.guard`)."""
        message = with_guards(message, task, options)
        encoded = self.outgoing(message)  # EncodeError (MessageTooLarge) before anything is taken

        async def publish(m: Message) -> AsyncResult[Any]:  # send_guarded publishes this message
            result, publishing = self._publication(m, backend, retry, policy, left, encoded)
            await publishing
            return result

        return await send_guarded(
            self.app,
            message,
            options.get("task_id") is not None,
            lambda m: self._handle(m, backend),
            publish,
        )

    async def send_many(
        self,
        name: str,
        arguments: Iterable[Iterable[Any]],
        task: Task[Any, Any] | None,
        options: Mapping[str, Any],
    ) -> list[AsyncResult[Any]]:
        """Publish one call per item in one round trip; see :meth:`aqueue.Aqueue.send_many`."""
        _check_name(name)
        check_send_options(options)
        if options.get("task_id") is not None:
            raise ConfigurationError("send_many() makes one task id per call: drop task_id=")
        task = task or self.app.tasks.get(name)
        calls = [tuple(a) for a in arguments]
        if task is not None and task.typing:
            for call in calls:
                task.check_arguments(call, {})
        if needs_guard(task, options):  # unique or held calls each consult the result backend
            if not self.app.conf.task_always_eager:
                # Each call is sent on its own: encode every one first, so that an item that
                # cannot be encoded fails the call before any of the others is published.
                for call in calls:
                    message = self.build_message(name, call, {}, task, options)
                    self.outgoing(with_guards(message, task, options))
            sends = [self.send(name, call, None, task, options) for call in calls]
            return list(await asyncio.gather(*sends))
        if self.app.conf.task_always_eager:
            return [await self.send(name, call, None, task, options) for call in calls]
        retry, policy = options.get("retry", True), options.get("retry_policy")
        backend, reply_to, left = await self._prepare(len(calls), retry, policy)
        messages = [self.build_message(name, call, {}, task, options, reply_to) for call in calls]
        if self.wraps_publishing():
            results = [self._handle(m, backend) for m in messages]
            await self._publish_wrapped(messages, retry, policy, left)
            return results
        outgoing = [self.outgoing(m) for m in messages]  # EncodeError before anything is sent
        results = [self._handle(m, backend) for m in messages]
        await self.publish_outgoing(outgoing, retry, policy, left)
        return results

    def _handle(self, message: Message, backend: ResultBackend | None) -> AsyncResult[Any]:
        """The result handle of ``message``, with its mailbox when it names a reply channel."""
        mailbox: Mailbox | None = None
        if message.reply_to and backend is not None and _has_replies(backend):
            mailbox = backend.expect(message.id)
        return AsyncResult(message.id, self.app, message.task, mailbox)

    async def _prepare(
        self, messages: int, retry: bool, retry_policy: AnyRetryPolicy
    ) -> tuple[ResultBackend | None, str | None, float | None]:
        """The result backend and reply channel for a send of ``messages`` (see
        :meth:`_reply_target`), and the seconds its publish has left (``None``: all of them).

        When this loop is not connected yet, the broker is connected first, per the retry
        policy, so that a broker that is down is reported as such and not as an unreachable
        result backend; the result backend then gets half of the time left.

        Raises:
            BrokerConnectionError: the broker cannot be reached in time (see :meth:`_deadline`).
        """
        if self.app.connected():  # no I/O to wait for: no timer
            return (*await self._reply_target(), None)
        loop = asyncio.get_running_loop()
        deadline = self._deadline(messages, retry, retry_policy)
        await self._retrying(self.app.broker, retry, retry_policy, deadline, 1)
        backend, reply_to = await self._reply_target((loop.time() + deadline) / 2)
        return backend, reply_to, deadline - loop.time()

    async def _reply_target(
        self, until: float | None = None
    ) -> tuple[ResultBackend | None, str | None]:
        """The result backend and this client's reply channel (``None`` where there is none).

        The reply channel (:class:`~aqueue.transports.ReplyChannels`) brings results back
        batched on one subscription; it is subscribed before this returns, so before any
        message naming it is published. A result backend that cannot be reached (by ``until``,
        event-loop time, when given) is logged, and sends go without a reply channel for a
        while: sending needs only the broker.
        """
        conns = self._loops.get()
        if not self.app.has_result_backend or (
            conns.replies_paused_until and time.monotonic() < conns.replies_paused_until
        ):
            return None, None
        try:
            if until is None:
                return await self._reply_channel()
            async with asyncio.timeout_at(until):
                return await self._reply_channel()
        except (BrokerError, TimeoutError) as exc:
            # The handle then watches the task's own channel when awaited.
            conns.replies_paused_until = time.monotonic() + _REPLY_RETRY
            url = _where(self.app.conf.resolved_backend_url() or "")
            logger.warning(
                "result backend %s unreachable (%s); the broker is not affected: sending "
                "without a reply channel for %gs",
                url,
                exc if isinstance(exc, BrokerError) else "no answer in time",
                _REPLY_RETRY,
            )
            return None, None

    async def _reply_channel(self) -> tuple[ResultBackend, str | None]:
        """The connected result backend and its reply channel, if it has reply channels.

        Raises:
            BrokerError: the result backend cannot be reached.
        """
        backend = await self.app.result_backend()
        replies = backend
        if not _has_replies(replies):
            return backend, None
        return backend, await replies.reply_channel()

    def build_message(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        task: Task[Any, Any] | None,
        options: Mapping[str, Any],
        reply_to: str | None = None,
    ) -> Message:
        """Resolve routing and defaults into the :class:`Message` to publish.

        ``reply_to`` (this client's reply channel) is kept unless the result is ignored.

        Precedence for each option: the call's own > ``task_routes`` > ``task_annotations`` >
        the task's decorator options > the app's settings.
        """
        conf = self.app.conf
        if kwargs and any(type(key) is not str for key in kwargs):  # no worker could read it
            raise ArgumentsError(
                f"keyword argument names of {name} must be strings, not "
                f"{next(k for k in kwargs if type(k) is not str)!r}"
            )
        route = routing.lookup(conf.task_routes, name, args, kwargs, options)
        annotated = self.app.task_options(name)
        sources = [s for s in (options, route, annotated) if s]

        def pick(key: str, default: Any = None) -> Any:
            for source in sources:
                if source.get(key) is not None:
                    return source[key]
            value = getattr(task, key, None)
            return default if value is None else value

        priority = priority_value(pick("priority", conf.task_default_priority))
        now = time.time()
        eta = options.get("eta")
        if eta is not None:
            eta = epoch_value(eta, "eta")
        if options.get("countdown") is not None:
            eta = now + seconds_value(options["countdown"], "countdown")
        expires = pick("expires")
        if isinstance(expires, int | float):
            expires = now + seconds_value(expires, "expires")
        elif expires is not None:
            expires = epoch_value(expires, "expires")
        ignore_result = pick("ignore_result", conf.task_ignore_result)
        queue = pick("queue", conf.task_default_queue)
        if type(queue) is not str or not queue:  # else a queue nobody reads, or a wrong one
            raise ConfigurationError(f"queue of {name} must be a non-empty string, not {queue!r}")
        ids = tuple(map(options.get, _IDS))  # task_id, parent_id, root_id, group_id
        if ids != _NO_IDS:
            for key, value in zip(_IDS, ids, strict=True):
                text_value(value, key)  # not a string: a worker would drop the message
        extra: dict[str, Any] = _extra_options(options.get("options"))
        if options.get("shadow") is not None:
            extra["shadow"] = options["shadow"]
        # Celery's routing: a queue listed in task_queues is reached through its exchange.
        declared = (conf.task_queues or {}).get(queue)
        if sources or declared:
            for key in ("exchange", "routing_key"):
                for source in (options, route, declared or {}):
                    if source.get(key) is not None:
                        extra[key] = source[key]
                        break
        link, link_error = options.get("link"), options.get("link_error")
        return make_message(
            ids[0] or new_id(),
            name,
            args,
            kwargs,
            queue,
            priority,
            eta,
            expires,
            0,  # retries
            headers_value(options.get("headers")),
            [] if link is None else _signatures(link, "link"),
            [] if link_error is None else _signatures(link_error, "link_error"),
            time_limit_value(options.get("time_limit")),
            bool(ignore_result),
            ids[1],
            ids[2],
            ids[3],
            extra,
            None if ignore_result else reply_to,
            pick("serializer", conf.task_serializer),
            pick("compression", conf.task_compression),
            now,  # sent_at
        )

    async def publish(
        self, messages: list[Message], retry: bool = True, retry_policy: AnyRetryPolicy = None
    ) -> None:
        """Encode and publish messages in one broker call, retrying per ``retry_policy``.
        Every message is encoded (and checked, see :meth:`outgoing`) before any is published.

        Raises:
            EncodeError: a message's arguments cannot be serialised.
            MessageTooLarge: a message is over ``task_max_message_size``; none was published.
            BrokerConnectionError: still failing after ``retry_policy['max_retries']`` retries.
        """
        if self.wraps_publishing():
            await self._publish_wrapped(messages, retry, retry_policy)
            return
        await self.publish_outgoing([self.outgoing(m) for m in messages], retry, retry_policy)

    def wraps_publishing(self) -> bool:
        """True when publishing goes through middleware or publish signals: messages are then
        published with :meth:`publish` (else encoded messages may go straight to
        :meth:`publish_outgoing`, at no cost)."""
        return bool(
            self.app.middleware
            or signals.before_task_publish.receivers
            or signals.after_task_publish.receivers
        )

    async def _publish_wrapped(
        self,
        messages: list[Message],
        retry: bool,
        retry_policy: AnyRetryPolicy,
        left: float | None = None,
    ) -> None:
        """Publish ``messages`` inside the app's middleware chain (which may change their
        headers), sending ``before_task_publish`` / ``after_task_publish`` around the publish.
        Every message is encoded before any is published, as on the direct path.

        Raises:
            As :meth:`publish`, or what a middleware raises.
        """

        async def publish(batch: list[Message]) -> None:
            for m in batch:
                await signals.before_task_publish.send(
                    m.task, body=m, exchange=m.options.get("exchange") or "", routing_key=m.queue,
                    headers=m.headers, properties={}, declare=[], retry_policy=retry_policy,
                )  # fmt: skip
            await self.publish_outgoing(
                [self.outgoing(m) for m in batch], retry, retry_policy, left
            )
            for m in batch:
                await signals.after_task_publish.send(
                    m.task, body=m, exchange=m.options.get("exchange") or "", routing_key=m.queue,
                    headers=m.headers,
                )  # fmt: skip

        await chain_publish(self.app.middleware, publish)(messages)

    def publish_outgoing(
        self,
        outgoing: list[Outgoing],
        retry: bool = True,
        retry_policy: AnyRetryPolicy = None,
        left: float | None = None,
    ) -> Awaitable[None]:
        """Publish messages encoded by :meth:`outgoing`, in one broker call, within ``left``
        seconds when the send has spent part of its time already (connecting), else within a
        deadline of its own (:meth:`_deadline`). Returns the publish to await (no coroutine
        layer of its own: one fewer object per waiting ``delay()``).

        Raises:
            BrokerConnectionError: (awaiting) the broker cannot be reached within the retry
                policy and the time.
        """
        deadline = None if left is None else asyncio.get_running_loop().time() + left
        if retry and retry_policy is None:
            # Concurrent sends with the default policy share one broker round trip, which is
            # bounded by its own deadline, opened now.
            conns = self._loops.get()
            if conns.publisher is None:
                conns.publisher = Batcher(self._publish_batch)
            # The shared publish itself ends by this send's deadline: were only this send to
            # stop waiting, its message could be stored after its caller got an error (and,
            # sent again, run twice).
            if deadline is not None and (conns.flush_by is None or deadline < conns.flush_by):
                conns.flush_by = deadline
            return conns.publisher.submit(outgoing)
        return self._publish_now(outgoing, retry, retry_policy, deadline)

    async def _publish_now(
        self,
        outgoing: list[Outgoing],
        retry: bool = True,
        retry_policy: AnyRetryPolicy = None,
        deadline: float | None = None,
    ) -> None:
        """Publish ``outgoing`` in one broker call, connecting first if needed, retried per
        ``retry_policy``, all by ``deadline`` (event-loop time; default: see
        :meth:`_deadline`).

        A try that stored only some messages (:class:`PublishIncomplete`) is followed by tries
        of the others only.

        Raises:
            PublishIncomplete: some messages were stored and the others still failed on the
                last try (or by the deadline); ``failed`` indexes ``outgoing``.
            BrokerConnectionError: the last try failed, or the deadline passed, and no
                message is known to be stored.
        """
        if deadline is None:
            deadline = self._deadline(len(outgoing), retry, retry_policy)
        left = list(range(len(outgoing)))  # the indexes of the messages not stored yet
        errors: dict[int, BrokerError] = {}  # the last try's error of each

        async def publish_once() -> None:
            nonlocal left, errors
            broker = await self.app.broker()
            try:
                await broker.publish(
                    outgoing if len(left) == len(outgoing) else [outgoing[i] for i in left]
                )
            except PublishIncomplete as exc:
                errors = {left[i]: e for i, e in exc.failed.items()}
                left = sorted(errors)
                raise
            except BrokerError as exc:
                errors = dict.fromkeys(left, exc)
                raise
            left = []

        try:
            await self._retrying(publish_once, retry, retry_policy, deadline, len(outgoing))
        except BrokerConnectionError as exc:
            if not left or len(left) == len(outgoing):
                raise
            raise PublishIncomplete(
                f"{len(left)} of {len(outgoing)} messages not stored: {exc}",
                {i: errors.get(i, exc) for i in left},
            ) from exc

    async def _publish_batch(self, outgoing: list[Outgoing]) -> ItemErrors:
        """The flush of the sends batched together (:class:`~aqueue.batching.Batcher`):
        :meth:`_publish_now`, where a batch stored only in part fails the sends of the messages
        not stored, and only those.

        It ends by its own deadline (:meth:`_deadline`), or by the earliest deadline of the
        sends it carries that have one (``_LoopState.flush_by``), if that is sooner.
        """
        conns = self._loops.get()
        deadline, conns.flush_by = conns.flush_by, None
        if deadline is not None:
            deadline = min(deadline, self._deadline(len(outgoing), True, None))
        try:
            await self._publish_now(outgoing, deadline=deadline)
        except PublishIncomplete as exc:
            return exc.failed
        return None

    async def _retrying(
        self,
        action: Callable[[], Awaitable[T]],
        retry: bool,
        retry_policy: AnyRetryPolicy,
        deadline: float,
        messages: int,
    ) -> T:
        """``action()``, tried again after a :class:`BrokerConnectionError` as ``retry_policy``
        says (at most ``1 + max_retries`` tries; one when ``retry`` is False); each try gets
        :meth:`_try_time` seconds at most, and all of them end by ``deadline`` (event-loop
        time).

        Raises:
            BrokerConnectionError: the last try's error, or no answer in time.
        """
        policy = _policy(retry_policy)
        tries = 1 + (policy["max_retries"] if retry else 0)
        loop = asyncio.get_running_loop()
        failed: BrokerConnectionError | None = None
        for attempt in range(tries):
            until = min(loop.time() + self._try_time(messages), deadline)
            try:
                return await self._within(until, action(), failed)
            except BrokerConnectionError as exc:
                failed = exc
                pause = _pause(policy, attempt)
                if attempt + 1 >= tries or loop.time() + pause >= deadline:
                    raise
                await asyncio.sleep(pause)
        raise AssertionError("unreachable: the last try returns or raises")

    async def _within(
        self, deadline: float, awaitable: Awaitable[T], failed: BrokerConnectionError | None
    ) -> T:
        """``await awaitable``, cancelled at ``deadline`` (event-loop time).

        Raises:
            BrokerConnectionError: the deadline passed: names the broker's URL (without its
                password) and the timeout, and ``failed``, an earlier try's error, if any.
        """
        bound = asyncio.timeout_at(deadline)
        try:
            async with bound:
                return await awaitable
        except TimeoutError as exc:
            if not bound.expired():
                raise
            raise BrokerConnectionError(self._no_answer(failed)) from exc

    def _no_answer(self, failed: BrokerConnectionError | None) -> str:
        """Why a send gave up: its broker did not answer in time."""
        url = self.app.conf.resolved_broker_url()
        text = (
            f"broker {_where(url)} did not answer within "
            f"{self.app.conf.broker_connection_timeout:g}s (broker_connection_timeout)"
            f"{tls_hint(url)}"
        )
        return f"{text}; the try before: {failed}" if failed is not None else text

    def _try_time(self, messages: int) -> float:
        """Seconds one try of a send of ``messages`` may take: ``broker_connection_timeout``
        for each round of up to 1000 messages (one round trip; a delay() makes one)."""
        rounds = max(1, -(-messages // _ROUND))
        return float(self.app.conf.broker_connection_timeout * rounds)

    def _deadline(self, messages: int, retry: bool, retry_policy: AnyRetryPolicy) -> float:
        """The event-loop time by which a send of ``messages`` ends: one try's time from now
        (:meth:`_try_time`), or the retry policy's pauses added up, if that is longer (a
        patient policy outlasts a broker restart)."""
        pauses = _pauses(_policy(retry_policy)) if retry else 0.0
        return asyncio.get_running_loop().time() + max(self._try_time(messages), pauses)

    def outgoing(self, m: Message) -> Outgoing:
        """``m`` encoded (see :meth:`encode`), with its AMQP exchange routing when it has an
        ``exchange``.

        The bindings to declare are the ``task_queues`` entries on that exchange, else ``m``'s
        own queue bound with the routing key, so that the message reaches at least its queue.

        Raises:
            EncodeError: the arguments cannot be serialised.
            MessageTooLarge: the message is over ``task_max_message_size``.
        """
        body = m.encode()
        conf = self.app.conf
        if conf.signing is not None or conf.task_max_message_size is not None:
            body = self._sealed(m, body)  # with neither setting, this check is all it costs
        exchange = m.options.get("exchange")
        if not exchange:
            return Outgoing(m.queue, body, m.id, m.priority, m.eta)
        routing_key = str(m.options.get("routing_key") or m.queue)
        bindings = tuple(
            Binding(
                queue,
                exchange,
                entry.get("exchange_type", "direct"),
                entry.get("routing_key", queue),
            )
            for queue, entry in (self.app.conf.task_queues or {}).items()
            if entry.get("exchange") == exchange
        ) or (Binding(m.queue, exchange, None, routing_key),)
        return Outgoing(m.queue, body, m.id, m.priority, m.eta, exchange, routing_key, bindings)

    def encode(self, m: Message) -> bytes:
        """The bytes published for ``m`` (see :meth:`outgoing`): its envelope, signed when
        ``task_signing_key`` is set (docs/signing.md), and no larger than
        ``task_max_message_size`` (bytes).

        Raises:
            EncodeError: the arguments cannot be serialised.
            MessageTooLarge: the message (signature included) is over
                ``task_max_message_size``; the caller publishes nothing of its call or batch.
        """
        return self.outgoing(m).body

    def _sealed(self, m: Message, body: bytes) -> bytes:
        """``body`` signed with ``task_signing_key`` if set, then checked against
        ``task_max_message_size``.

        Raises:
            MessageTooLarge: it is larger than ``task_max_message_size``.
        """
        conf = self.app.conf
        if conf.signing is not None:
            body = conf.signing.messages.sign(body)
        limit = conf.task_max_message_size
        if limit is not None and len(body) > limit:
            raise MessageTooLarge(m.task, len(body), limit)
        return body


#: The id options of a send, all strings (or None).
_IDS = ("task_id", "parent_id", "root_id", "group_id")
_NO_IDS = (None,) * len(_IDS)

_REPLY_KINDS: dict[type, bool] = {}


def _has_replies(backend: ResultBackend) -> TypeGuard[ReplyChannels]:
    """``isinstance(backend, ReplyChannels)``, remembered per class: a runtime Protocol check
    reads every member each time (about 10 µs), and a send makes two."""
    kind = type(backend)
    known = _REPLY_KINDS.get(kind)
    if known is None:
        known = _REPLY_KINDS[kind] = isinstance(backend, ReplyChannels)
    return known


def _where(url: str) -> str:
    """``url`` for a message: without its user, password and query."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2].partition('?')[0]}"


def _policy(retry_policy: AnyRetryPolicy) -> dict[str, Any]:
    """``retry_policy`` over :data:`DEFAULT_RETRY_POLICY`."""
    return {**DEFAULT_RETRY_POLICY, **(retry_policy or {})}


def _pause(policy: Mapping[str, Any], attempt: int) -> float:
    """Seconds to wait after try ``attempt`` (from 0) failed."""
    pause = policy["interval_start"] + attempt * policy["interval_step"]
    return float(min(pause, policy["interval_max"]))


def _pauses(policy: Mapping[str, Any]) -> float:
    """The seconds ``policy`` waits between tries, added up."""
    retries = int(policy["max_retries"])
    total = 0.0
    for attempt in range(retries):
        pause = _pause(policy, attempt)
        if pause >= policy["interval_max"] or policy["interval_step"] <= 0:
            return total + pause * (retries - attempt)  # the same from here on
        total += pause
    return total


def _check_name(name: Any) -> None:
    """Check that ``name`` can name a task.

    Raises:
        ConfigurationError: it is not a non-empty string (a worker could not run the message).
    """
    if type(name) is not str or not name:
        raise ConfigurationError(f"a task name must be a non-empty string, not {name!r}")


def _extra_options(value: Any) -> dict[str, Any]:
    """The ``options`` option as a new dict (``None``: empty).

    Raises:
        ConfigurationError: not a dict.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"options must be a dict, not {value!r}")
    return dict(value)


def _signatures(value: Any, option: str) -> list[dict[str, Any]]:
    """``option`` (``link``, ``link_error``): signatures, or their dicts, as a list of dicts.

    Raises:
        ConfigurationError: an item is neither, or a dict a worker could not read (its
            ``task`` not a string, its ``args`` not a list, its ``kwargs`` or ``options`` not
            dicts).
    """
    if value is None:
        return []
    items = value if isinstance(value, list | tuple) else [value]
    out: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, Signature):
            out.append(item.to_dict())
        elif isinstance(item, dict) and _readable(item):
            out.append(item)
        else:
            raise ConfigurationError(
                f"{option} takes signatures (task.s(...)) or their dicts, not {item!r}"
            )
    return out


def _readable(sig: dict[str, Any]) -> bool:
    """True when signature dict ``sig`` has the shape a worker reads (its fields' types)."""
    return (
        type(sig.get("task")) is str
        and isinstance(sig.get("args", ()), list | tuple)
        and isinstance(sig.get("kwargs") or {}, dict)
        and isinstance(sig.get("options") or {}, dict)
    )
