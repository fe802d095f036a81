"""Confirmed publishing, many messages per write: the AMQP broker's publishing path (and its
acks, many per write too).

RabbitMQ's publisher confirms (an AMQP 0-9-1 extension, ``confirm.select``) number the
messages published on a channel 1, 2, 3...; the broker answers each with ``basic.ack`` once it
has taken responsibility for it (for a persistent message on a durable queue: written to disk;
on a quorum queue: committed by a majority of its replicas), or ``basic.nack`` when it could not
(an internal error, a queue over ``x-max-length`` with ``overflow=reject-publish``). One ack may
cover every message up to its tag (``multiple``). A channel may have any number of messages
published and not yet confirmed, so confirms cost no round trip per message: publish many,
then wait for their confirms together.

aiormq's ``Channel.basic_publish`` does the bookkeeping for one message per call (a lock, a
timeout scope, a write-queue entry and a socket write each); here one call takes a whole batch:
:func:`publish` encodes every message's frames (:func:`encode`), registers each message's
confirm future in the channel's own tables, so that aiormq's frame handlers resolve it (ack,
nack, ``basic.return``), and hands the frames to the connection's writer as one write;
:meth:`Confirms.outcomes` then waits for them, watching the channel close once for the whole
batch. What it relies on from ``aiormq.Channel``: ``lock``, ``delivery_tag``,
``confirmations``, ``message_id_delivery_tag``, ``write_queue``, ``number``,
``max_content_size`` and ``closing`` (an observer of the channel's closing, since aiormq 7.2),
the attributes its ``basic_publish`` uses; pyproject.toml pins aiormq 7.2.4 up to 8, and
``tests/transports/test_amqp_publisher.py`` checks the frames against pamqp's encoder and the
outcomes against a real RabbitMQ.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiormq
import aiormq.exceptions
from aiormq.abc import ChannelFrame
from pamqp.encode import field_table

__all__ = ["Confirms", "Publication", "ack_frames", "acknowledge", "encode", "publish"]

_FRAME = struct.Struct(">BHI")  # frame type, channel, payload size
_ACK = struct.Struct(">HHQB")  # class basic, method ack, delivery tag, flags (multiple: 1)
_FRAME_END = b"\xce"
_METHOD, _HEADER, _BODY = 1, 2, 3
_PUBLISH = struct.pack(">HHH", 60, 40, 0)  # class basic, method publish, reserved ticket
_CONTENT = struct.Struct(">HHQH")  # class basic, weight 0, body size, property flags
# Basic property flags (AMQP 0-9-1, 4.2.6.1): the bit of each property this module sets.
_HEADERS = 1 << 13
_DELIVERY_MODE = 1 << 12
_PRIORITY = 1 << 11
_CORRELATION_ID = 1 << 10
_MESSAGE_ID = 1 << 7


@dataclass(frozen=True, slots=True)
class Publication:
    """One message to publish with a confirm.

    Attributes:
        body: the message bytes.
        exchange: the exchange (``""``: the default exchange, which routes to the queue named by
            the routing key).
        routing_key: the routing key (at most 255 bytes).
        correlation_id: AMQP ``correlation_id`` (aqueue: the task id), or ``None``; ``bytes``
            when it was received so (not UTF-8).
        priority: AMQP priority 0..9 (0 to 255 on the wire).
        headers: AMQP headers table, or ``None``.
        persistent: ``delivery_mode`` 2 (written to disk by RabbitMQ) rather than 1.
        mandatory: RabbitMQ returns the message (``basic.return``) when no queue is bound to
            receive it, and its confirm fails with ``aiormq.exceptions.PublishError``.
    """

    body: bytes
    exchange: str
    routing_key: str
    correlation_id: str | bytes | None = None
    priority: int = 0
    headers: Mapping[str, Any] | None = None
    persistent: bool = True
    mandatory: bool = True


def _short(text: str | bytes, what: str) -> bytes:
    """An AMQP ``shortstr``: one length octet, then at most 255 bytes: ``text`` in UTF-8, or
    as it is when it is ``bytes`` (a property received that was not UTF-8, published again
    unchanged).

    Raises:
        ValueError: longer than 255 bytes.
    """
    data = text if isinstance(text, bytes) else text.encode()
    if len(data) > 255:
        raise ValueError(f"AMQP {what} {text[:40]!r}... is longer than 255 bytes")
    return bytes((len(data),)) + data


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _FRAME.pack(kind, channel, len(payload)) + payload + _FRAME_END


def encode(p: Publication, message_id: str, channel: int, max_body: int) -> bytes:
    """The frames of one ``basic.publish``: method, content header, body frames.

    Args:
        p: the message.
        message_id: AMQP ``message_id``: how aiormq matches a ``basic.return`` to its confirm.
        channel: the channel number.
        max_body: the largest body frame payload (the connection's ``frame_max`` less 8).

    Raises:
        ValueError: the exchange, routing key, correlation id or message id is longer than
            255 bytes, or the priority is outside 0..255.
    """
    method = (
        _PUBLISH
        + _short(p.exchange, "exchange name")
        + _short(p.routing_key, "routing key")
        + (b"\x01" if p.mandatory else b"\x00")
    )
    flags = _DELIVERY_MODE | _PRIORITY | _MESSAGE_ID
    properties = [b""]
    if p.headers:
        flags |= _HEADERS
        properties.append(field_table(dict(p.headers)))
    properties.append(bytes((2 if p.persistent else 1, p.priority)))
    if p.correlation_id:
        flags |= _CORRELATION_ID
        properties.append(_short(p.correlation_id, "correlation id"))
    properties.append(_short(message_id, "message id"))
    properties[0] = _CONTENT.pack(60, 0, len(p.body), flags)
    parts = [_frame(_METHOD, channel, method), _frame(_HEADER, channel, b"".join(properties))]
    body = p.body
    for start in range(0, len(body), max_body):
        parts.append(_frame(_BODY, channel, body[start : start + max_body]))
    return b"".join(parts)


def ack_frames(channel: int, tags: Sequence[int], upto: int = 0) -> bytes:
    """The frames, on ``channel``, of one ``basic.ack`` with ``multiple`` set for ``upto``
    (every delivery up to and including it; none when 0), then one ``basic.ack`` per delivery
    tag of ``tags``."""
    frames = [_frame(_METHOD, channel, _ACK.pack(60, 80, upto, 1))] if upto else []
    frames.extend(_frame(_METHOD, channel, _ACK.pack(60, 80, tag, 0)) for tag in tags)
    return b"".join(frames)


async def acknowledge(channel: aiormq.Channel, tags: Sequence[int], upto: int = 0) -> None:
    """``basic.ack`` on ``channel``: every delivery up to ``upto`` with one ``multiple`` ack
    (0: none), then each of ``tags``, all in one write (an ack has no reply; aiormq's
    ``basic_ack`` writes each on its own).

    Raises:
        aiormq.exceptions.ChannelInvalidStateError: the channel is closed: RabbitMQ has put the
            deliveries back (nothing was acked).
    """
    if channel.is_closed:
        raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
    if tags or upto:
        frames = ack_frames(channel.number, tags, upto)
        await _write(channel, ChannelFrame(payload=frames, should_close=False))


_ids = itertools.count()
_PREFIX = f"aqueue.{secrets.token_hex(4)}."


async def publish(channel: aiormq.Channel, messages: Sequence[Publication]) -> Confirms:
    """Publish ``messages`` on ``channel`` (in confirm mode) in one write; return their
    :class:`Confirms`, to wait for.

    Raises:
        aiormq.exceptions.ChannelInvalidStateError: the channel is closed; nothing was sent.
        ValueError: a name is too long (see :func:`encode`); nothing was sent.
    """
    loop = asyncio.get_running_loop()
    number, max_body = channel.number, channel.max_content_size
    # Encoded before the lock: a bad message fails the call with nothing sent.
    ids = [f"{_PREFIX}{next(_ids)}" for _ in messages]
    payload = b"".join(encode(p, i, number, max_body) for p, i in zip(messages, ids, strict=True))
    # Plain futures, not the channel's (which it fails when it closes, through two callbacks
    # each): Confirms.outcomes watches the channel closing once for the whole batch.
    futures: list[asyncio.Future[Any]] = [loop.create_future() for _ in messages]
    async with channel.lock:
        # Tags are assigned in the order the frames reach the writer: under the channel's lock,
        # as basic_publish does, so the two can share a channel.
        first = channel.delivery_tag + 1
        confirmations, returns = channel.confirmations, channel.message_id_delivery_tag
        for tag, message_id, future in zip(itertools.count(first), ids, futures):
            confirmations[tag] = future
            returns[message_id] = tag
        channel.delivery_tag += len(futures)
        try:
            await _write(channel, ChannelFrame(payload=payload, should_close=False))
        except BaseException:
            # Not written (cancelled while the write queue was full): RabbitMQ numbers only
            # what it receives, so the tags are handed back, as basic_publish does.
            channel.delivery_tag -= len(futures)
            for tag, message_id in zip(itertools.count(first), ids):
                confirmations.pop(tag, None)
                returns.pop(message_id, None)
            raise
    return Confirms(channel, first, ids, futures)


class Confirms:
    """The confirms of one batch published by :func:`publish`.

    Args:
        channel: the channel it was published on.
        first: the delivery tag of its first message (the others follow).
        ids: each message's AMQP ``message_id``.
        futures: each message's confirm, as aiormq resolves it.
    """

    def __init__(
        self,
        channel: aiormq.Channel,
        first: int,
        ids: Sequence[str],
        futures: Sequence[asyncio.Future[Any]],
    ) -> None:
        self._channel = channel
        self._first = first
        self._ids = ids
        self.futures = futures
        self._failed: dict[int, BaseException] = {}  # index -> why its wait ended unconfirmed

    async def outcomes(self, timeout: float) -> list[BaseException | None]:
        """Wait for every confirm; return each message's outcome, in order.

        ``None``: RabbitMQ confirmed it (``basic.ack``). Otherwise the error:
        ``aiormq.exceptions.PublishError`` (a mandatory message returned as unroutable),
        ``aiormq.exceptions.DeliveryError`` (nacked), the error the channel or connection closed
        with, or a ``TimeoutError`` when no confirm came within ``timeout`` seconds (the last
        two: the message may or may not have been stored). Waiting never cancels a confirm.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        closing = self._channel.closing
        try:
            # In order: the confirms come in order, many at once, so this wakes about once per
            # ack frame, not once per message.
            for future in self.futures:
                if not future.done():
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    await asyncio.wait([future, closing], timeout=left, return_when=_FIRST)
                    if closing.done():
                        break
        finally:
            closing.cancel()  # an observer of this call only (aiormq's Base.closing)
            self._settle(closing, timeout)
        failed = self._failed
        return [
            failed[i] if i in failed else f.exception() if not f.cancelled() else _closed()
            for i, f in enumerate(self.futures)
        ]

    def _settle(self, closing: asyncio.Future[Any], timeout: float) -> None:
        """Fail the confirms still pending (the channel closed, or the time is up: recorded
        as their outcome, their futures cancelled), and forget every message of the batch in
        the channel's table of returns."""
        reason: BaseException = TimeoutError(f"no confirm from RabbitMQ within {timeout:g}s")
        if closing.done() and not closing.cancelled():
            reason = closing.exception() or _closed()
        returns = self._channel.message_id_delivery_tag
        batch = zip(itertools.count(self._first), self._ids, self.futures)
        for i, (tag, message_id, future) in enumerate(batch):
            if returns.get(message_id) == tag:
                del returns[message_id]
            if not future.done():
                # Cancelled, not taken out of the channel's table: RabbitMQ confirms many tags
                # in one frame (multiple=true), and aiormq drops a whole frame whose last tag
                # it does not know, which would leave other batches on this channel waiting
                # for confirms of messages that were stored. A late confirm of this one is
                # then ignored (aiormq logs it at debug level).
                future.cancel()
                self._failed[i] = reason
            if not future.cancelled():
                # Retrieved, nacked ones too: a caller cancelled while it waited (its send's
                # deadline) leaves no "Future exception was never retrieved" in the log.
                future.exception()


def nacked(outcome: BaseException | None) -> bool:
    """Whether an outcome of :meth:`Confirms.outcomes` is RabbitMQ's ``basic.nack`` (not a
    return, a timeout or a closed channel)."""
    return isinstance(outcome, aiormq.exceptions.DeliveryError) and not isinstance(
        outcome, aiormq.exceptions.PublishError
    )


_FIRST = asyncio.FIRST_COMPLETED


def _closed() -> BaseException:
    return aiormq.exceptions.ChannelInvalidStateError("the publishing channel closed")


async def _write(channel: aiormq.Channel, frame: ChannelFrame) -> None:
    """Hand ``frame`` to the connection's writer.

    Its queue is bounded: when it is full, wait for room or for the channel to close (a
    connection that dropped has no writer left to empty it).

    Raises:
        aiormq.exceptions.ChannelInvalidStateError: the channel closed first.
    """
    queue = channel.write_queue
    if not queue.full():
        queue.put_nowait(frame)
        return
    put = asyncio.ensure_future(queue.put(frame))
    closing = channel.closing
    try:
        await asyncio.wait([put, closing], return_when=asyncio.FIRST_COMPLETED)
    finally:
        closing.cancel()  # an observer of this call only (aiormq's Base.closing)
        if not put.done():
            put.cancel()
    if not put.done() or put.cancelled():
        raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
