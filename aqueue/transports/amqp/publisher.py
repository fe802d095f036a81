"""Confirmed publishing, many messages per write: the AMQP broker's publishing path.

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
nack, ``basic.return``, the channel closing), and hands the frames to the connection's writer
as one write. What it relies on from ``aiormq.Channel``: ``lock``, ``delivery_tag``,
``confirmations``, ``message_id_delivery_tag``, ``write_queue``, ``number``,
``max_content_size`` and ``create_future``, the attributes its ``basic_publish`` uses (aiormq
6 and 7); ``tests/transports/test_amqp_publisher.py`` checks the frames against pamqp's
encoder and the outcomes against a real RabbitMQ.
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

__all__ = ["Publication", "encode", "publish"]

_FRAME = struct.Struct(">BHI")  # frame type, channel, payload size
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
        correlation_id: AMQP ``correlation_id`` (aqueue: the task id), or ``None``.
        priority: AMQP priority 0..9 (0 to 255 on the wire).
        headers: AMQP headers table, or ``None``.
        persistent: ``delivery_mode`` 2 (written to disk by RabbitMQ) rather than 1.
        mandatory: RabbitMQ returns the message (``basic.return``) when no queue is bound to
            receive it, and its confirm fails with ``aiormq.exceptions.PublishError``.
    """

    body: bytes
    exchange: str
    routing_key: str
    correlation_id: str | None = None
    priority: int = 0
    headers: Mapping[str, Any] | None = None
    persistent: bool = True
    mandatory: bool = True


def _short(text: str, what: str) -> bytes:
    """An AMQP ``shortstr``: one length octet, then at most 255 bytes of UTF-8.

    Raises:
        ValueError: longer than 255 bytes.
    """
    data = text.encode()
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


_ids = itertools.count()
_PREFIX = f"aqueue.{secrets.token_hex(4)}."


async def publish(
    channel: aiormq.Channel, messages: Sequence[Publication]
) -> list[asyncio.Future[Any]]:
    """Publish ``messages`` on ``channel`` (in confirm mode) in one write; return each one's
    confirm future, in order.

    A future's result is RabbitMQ's ``basic.ack`` frame; its exception is
    ``aiormq.exceptions.PublishError`` (a mandatory message was returned as unroutable),
    ``aiormq.exceptions.DeliveryError`` (nacked), or the error the channel or connection closed
    with (the message may or may not have reached RabbitMQ). The futures fail together with the
    channel, by aiormq's own bookkeeping; each retrieves its exception, so one nobody awaits is
    not reported as "never retrieved".

    Raises:
        aiormq.exceptions.ChannelInvalidStateError: the channel is closed; nothing was sent.
        ValueError: a name is too long (see :func:`encode`); nothing was sent.
    """
    frames: list[bytes] = []
    futures: list[asyncio.Future[Any]] = []
    number, max_body = channel.number, channel.max_content_size
    # Encoded before the lock: a bad message fails the call with nothing sent.
    ids = [f"{_PREFIX}{next(_ids)}" for _ in messages]
    encoded = [encode(p, i, number, max_body) for p, i in zip(messages, ids, strict=True)]
    async with channel.lock:
        # Tags are assigned in the order the frames reach the writer: under the channel's lock,
        # as basic_publish does, so the two can share a channel.
        returns = channel.message_id_delivery_tag
        for message_id, data in zip(ids, encoded, strict=True):
            channel.delivery_tag += 1
            tag = channel.delivery_tag
            future = channel.create_future()
            channel.confirmations[tag] = future
            returns[message_id] = tag
            future.add_done_callback(_forget(returns, message_id, tag))
            futures.append(future)
            frames.append(data)
        try:
            await _write(channel, ChannelFrame(payload=b"".join(frames), should_close=False))
        except BaseException:
            # Not written (cancelled while the write queue was full): RabbitMQ numbers only
            # what it receives, so the tags are handed back, as basic_publish does.
            channel.delivery_tag -= len(futures)
            for tag in range(channel.delivery_tag + 1, channel.delivery_tag + len(futures) + 1):
                channel.confirmations.pop(tag, None)
            for future in futures:
                future.cancel()
            raise
    return futures


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


def _forget(returns: dict[str, int], message_id: str, tag: int) -> Any:
    def done(_: asyncio.Future[Any]) -> None:
        if returns.get(message_id) == tag:
            del returns[message_id]

    return done
