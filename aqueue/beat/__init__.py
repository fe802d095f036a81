"""Beat: periodic tasks, Celery's ``beat`` for asyncio - any number of beats, each tick sent once.

- :mod:`.schedules`: intervals and ``crontab``, with the daylight-saving rule;
- :mod:`.entry`: a checked periodic entry (``beat_schedule``, ``app.add_periodic_task``);
- :mod:`.scheduler`: :class:`Beat`, which claims and sends due ticks;
- what beats share (claims, last ticks, stored entries) is each transport's ``beat.py``, behind
  :class:`~aqueue.transports.base.BeatStore`;
- :mod:`.control`: ``app.beat``, entries added and removed at runtime;
- :mod:`.cli`: ``aqueue beat`` and ``aqueue worker -B``.

See ``docs/beat.md``.
"""

from __future__ import annotations

from aqueue.beat.control import BeatControl
from aqueue.beat.entry import Entry
from aqueue.beat.scheduler import Beat
from aqueue.beat.schedules import Interval, Schedule, crontab

__all__ = ["Beat", "BeatControl", "Entry", "Interval", "Schedule", "crontab"]
