"""Operating workers remotely: commands and replies, shared state, global rate-limit buckets.

- :mod:`.protocol`: the command and reply wire format, channel and table names.
- :mod:`.client`: ``app.control`` - :class:`Control` and :class:`Inspect`.
- :mod:`.events`: task and worker events (``aqueue worker -E``, ``aqueue events``).
- :mod:`.queues`: queue depths, purge and dead letters (``aqueue status``, ``purge``, ``dlq``).

The :class:`~aqueue.transports.ControlTransport` Protocol (channels, tables, token buckets) is
in :mod:`aqueue.transports.base`; each transport folder implements it, and
:meth:`aqueue.Aqueue.control_transport` picks the server (the broker's; for AMQP, the result
backend's), one connected instance per app and loop.

The worker's side is :mod:`aqueue.worker.remote`.
"""

from aqueue.control.client import Control, Inspect, by_worker
from aqueue.control.protocol import Reply
from aqueue.transports.base import ControlTransport

__all__ = [
    "Control",
    "ControlTransport",
    "Inspect",
    "Reply",
    "by_worker",
]
