"""Operating workers remotely: commands and replies, shared state, global rate-limit buckets.

- :mod:`.base`: the :class:`ControlTransport` Protocol (channels, tables, token buckets);
  :mod:`.memory`, :mod:`.sqlite`, :mod:`.redis` implement it, one file each.
- :mod:`.transport`: which transport an app uses (its broker's server; for AMQP, its result
  backend's), one connected instance per app and loop.
- :mod:`.protocol`: the command and reply wire format, channel and table names.
- :mod:`.client`: ``app.control`` - :class:`Control` and :class:`Inspect`.

The worker's side is :mod:`aqueue.worker.remote`.
"""

from aqueue.control.base import ControlTransport
from aqueue.control.client import Control, Inspect, by_worker
from aqueue.control.protocol import Reply
from aqueue.control.transport import close_control, control_transport

__all__ = [
    "Control",
    "ControlTransport",
    "Inspect",
    "Reply",
    "by_worker",
    "close_control",
    "control_transport",
]
