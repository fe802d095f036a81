"""Sending task calls: options, routing and defaults resolved into messages, then published.

:class:`Sender` is the app's (``app.sender``); ``send_task``, ``delay``, ``apply_async``,
``delay_many`` and canvas all end here. Concurrent sends with the default retry policy share one
broker round trip (:class:`~aqueue.batching.Batcher`); a client's results come back on its reply
channel (:class:`~aqueue.transports.ReplyChannels`) when the result backend has one.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aqueue.batching import Batcher
from aqueue.canvas.primitives import Signature
from aqueue.eager import apply_eager
from aqueue.exceptions import (
    BrokerConnectionError,
    BrokerError,
    ConfigurationError,
    TaskNotRegistered,
)
from aqueue.message import Message, new_id
from aqueue.results.mailbox import Mailbox
from aqueue.results.result import AsyncResult
from aqueue.sending import routing
from aqueue.sending.options import RetryPolicy, check_send_options
from aqueue.transports import Binding, Outgoing, ReplyChannels, ResultBackend

if TYPE_CHECKING:
    from aqueue.app import Aqueue
    from aqueue.task import Task

__all__ = ["DEFAULT_RETRY_POLICY", "Sender"]

logger = logging.getLogger("aqueue.app")

#: Celery's default publish retry policy (seconds).
DEFAULT_RETRY_POLICY: RetryPolicy = {
    "max_retries": 3,
    "interval_start": 0.0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}
# Seconds sends go without a reply channel after the result backend could not be reached.
_REPLY_RETRY = 5.0


@dataclass
class _LoopState:
    """What sending keeps per event loop."""

    publisher: Batcher[Outgoing] | None = None
    # time.monotonic() before which sends skip the reply channel (the backend was unreachable).
    replies_paused_until: float = 0.0


class Sender:
    """Builds and publishes the messages of one app's task calls.

    Args:
        app: the app whose settings, routes, broker and result backend are used.
    """

    def __init__(self, app: Aqueue) -> None:
        self.app = app
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )

    def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = _LoopState()
        return state

    async def send(
        self,
        name: str,
        args: Iterable[Any] | None,
        kwargs: Mapping[str, Any] | None,
        task: Task[Any, Any] | None,
        options: Mapping[str, Any],
    ) -> AsyncResult[Any]:
        """Publish one call; see :meth:`aqueue.Aqueue.send_task` (same errors)."""

        check_send_options(options)
        task = task or self.app.tasks.get(name)
        args_t = tuple(args or ())
        kwargs_d = dict(kwargs or {})
        if self.app.conf.task_always_eager:
            if task is None:
                raise TaskNotRegistered(f"task {name!r} is not registered (task_always_eager)")
            return await apply_eager(self.app, task, args_t, kwargs_d, dict(options))
        backend, reply_to = await self._reply_target()
        message = self.build_message(name, args_t, kwargs_d, task, options, reply_to)
        result = self._handle(message, backend)  # its mailbox exists before the message is sent
        await self.publish([message], options.get("retry", True), options.get("retry_policy"))
        return result

    async def send_many(
        self,
        name: str,
        arguments: Iterable[Iterable[Any]],
        task: Task[Any, Any] | None,
        options: Mapping[str, Any],
    ) -> list[AsyncResult[Any]]:
        """Publish one call per item in one round trip; see :meth:`aqueue.Aqueue.send_many`."""
        check_send_options(options)
        if options.get("task_id") is not None:
            raise ConfigurationError("send_many() makes one task id per call: drop task_id=")
        task = task or self.app.tasks.get(name)
        calls = [tuple(a) for a in arguments]
        if task is not None:
            for call in calls:
                task.check_arguments(call, {})
        if self.app.conf.task_always_eager:
            return [await self.send(name, call, None, task, options) for call in calls]
        backend, reply_to = await self._reply_target()
        messages = [self.build_message(name, call, {}, task, options, reply_to) for call in calls]
        outgoing = [self.outgoing(m) for m in messages]  # EncodeError before anything is sent
        results = [self._handle(m, backend) for m in messages]
        await self._publish_outgoing(
            outgoing, options.get("retry", True), options.get("retry_policy")
        )
        return results

    def _handle(self, message: Message, backend: ResultBackend | None) -> AsyncResult[Any]:
        """The result handle of ``message``, with its mailbox when it names a reply channel."""
        mailbox: Mailbox | None = None
        if message.reply_to and backend is not None and isinstance(backend, ReplyChannels):
            mailbox = backend.expect(message.id)
        return AsyncResult(message.id, self.app, message.task, mailbox)

    async def _reply_target(self) -> tuple[ResultBackend | None, str | None]:
        """The result backend and this client's reply channel (``None`` where there is none).

        The reply channel (:class:`~aqueue.transports.ReplyChannels`) brings results back
        batched on one subscription; it is subscribed before this returns, so before any
        message naming it is published.
        """
        conns = self._loop_state()
        if not self.app.has_result_backend or (
            conns.replies_paused_until and time.monotonic() < conns.replies_paused_until
        ):
            return None, None
        try:
            backend = await self.app.result_backend()
            if not isinstance(backend, ReplyChannels):
                return backend, None
            return backend, await backend.reply_channel()
        except BrokerError as exc:
            # Sending needs only the broker: send without a reply channel (the handle then
            # watches the task's own channel when awaited) and try again in a while.
            conns.replies_paused_until = time.monotonic() + _REPLY_RETRY
            logger.warning(
                "result backend unreachable (%s): sending without a reply channel for %gs",
                exc,
                _REPLY_RETRY,
            )
            return None, None

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
        route = routing.lookup(conf.task_routes, name, args, kwargs, options)
        annotated = self.app.task_options(name)

        sources = [s for s in (options, route, annotated) if s]

        def pick(key: str, default: Any = None) -> Any:
            for source in sources:
                if source.get(key) is not None:
                    return source[key]
            value = getattr(task, key, None) if task is not None else None
            return default if value is None else value

        priority = pick("priority", conf.task_default_priority)
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
            raise ConfigurationError(f"priority must be a whole number 0..9, not {priority!r}")
        now = time.time()
        eta = _epoch(options.get("eta"), "eta")
        if options.get("countdown") is not None:
            eta = now + float(options["countdown"])
        expires = pick("expires")
        if isinstance(expires, int | float):
            expires = now + float(expires)
        else:
            expires = _epoch(expires, "expires")
        ignore_result = pick("ignore_result", conf.task_ignore_result)
        queue = pick("queue", conf.task_default_queue)
        extra: dict[str, Any] = dict(options.get("options") or {})
        if options.get("shadow") is not None:
            extra["shadow"] = options["shadow"]
        # Celery's routing: a queue listed in task_queues is reached through its exchange.
        declared = (conf.task_queues or {}).get(queue, {})
        for key in ("exchange", "routing_key"):
            for source in (options, route, declared):
                if source.get(key) is not None:
                    extra[key] = source[key]
                    break
        return Message(
            id=options.get("task_id") or new_id(),
            task=name,
            args=args,
            kwargs=kwargs,
            queue=queue,
            priority=priority,
            eta=eta,
            expires=expires,
            headers=dict(options.get("headers") or {}),
            link=_signatures(options.get("link")),
            link_error=_signatures(options.get("link_error")),
            time_limit=options.get("time_limit"),
            ignore_result=bool(ignore_result),
            parent_id=options.get("parent_id"),
            root_id=options.get("root_id"),
            group_id=options.get("group_id"),
            options=extra,
            reply_to=None if ignore_result else reply_to,
            content_type=pick("serializer", conf.task_serializer),
            compression=pick("compression", conf.task_compression),
        )

    async def publish(
        self,
        messages: list[Message],
        retry: bool = True,
        retry_policy: RetryPolicy | Mapping[str, Any] | None = None,
    ) -> None:
        """Encode and publish messages in one broker call, retrying per ``retry_policy``.

        Raises:
            EncodeError: a message's arguments cannot be serialised.
            BrokerConnectionError: still failing after ``retry_policy['max_retries']`` retries.
        """
        await self._publish_outgoing([self.outgoing(m) for m in messages], retry, retry_policy)

    async def _publish_outgoing(
        self,
        outgoing: list[Outgoing],
        retry: bool,
        retry_policy: RetryPolicy | Mapping[str, Any] | None,
    ) -> None:
        if retry and retry_policy is None:
            # Concurrent sends with the default policy share one broker round trip.
            conns = self._loop_state()
            if conns.publisher is None:
                conns.publisher = Batcher(self._publish_now)
            await conns.publisher.submit(outgoing)
        else:
            await self._publish_now(outgoing, retry, retry_policy)

    async def _publish_now(
        self,
        outgoing: list[Outgoing],
        retry: bool = True,
        retry_policy: RetryPolicy | Mapping[str, Any] | None = None,
    ) -> None:
        policy: dict[str, Any] = {**DEFAULT_RETRY_POLICY, **(retry_policy or {})}
        attempt = 0
        while True:
            try:
                broker = await self.app.broker()
                await broker.publish(outgoing)
                return
            except BrokerConnectionError:
                if not retry or attempt >= policy["max_retries"]:
                    raise
                delay = min(
                    policy["interval_start"] + attempt * policy["interval_step"],
                    policy["interval_max"],
                )
                attempt += 1
                await asyncio.sleep(delay)

    def outgoing(self, m: Message) -> Outgoing:
        """``m`` encoded, with its AMQP exchange routing when it has an ``exchange``.

        The bindings to declare are the ``task_queues`` entries on that exchange, else ``m``'s
        own queue bound with the routing key, so that the message reaches at least its queue.
        """
        exchange = m.options.get("exchange")
        if not exchange:
            return Outgoing(m.queue, m.encode(), m.id, m.priority, m.eta)
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
        return Outgoing(
            m.queue, m.encode(), m.id, m.priority, m.eta, exchange, routing_key, bindings
        )


def _epoch(value: Any, option: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return float(value.timestamp())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ConfigurationError(f"{option} must be a datetime, not {type(value).__name__}")


def _signatures(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    items = value if isinstance(value, list | tuple) else [value]
    out: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, Signature):
            out.append(item.to_dict())
        elif isinstance(item, dict) and "task" in item:
            out.append(item)
        else:
            raise ConfigurationError(f"link/link_error take signatures (task.s(...)), not {item!r}")
    return out
