"""The beat scheduler: sends each periodic entry's ticks, once, however many beats run.

Every beat process does the same work: it reads the entries (``beat_schedule`` and the stored
ones) and the entries' last ticks from the store, finds the ticks that are due, and for each one
*claims* it in the store (:mod:`aqueue.transports.base`). The beat that wins the claim publishes the
task - with a task id derived from (entry, tick), the same in every process - then confirms the
claim; the others see the claim and move on. There is no leader: if one beat dies, the others
were already doing the same work, so no tick is skipped.

A tick is sent exactly once, except in two crash windows, both a few milliseconds long:

- a beat that dies after claiming a tick and before publishing leaves a pending claim; another
  beat sends the tick when the claim's lease (``lease``, 10 s) runs out - late, but once;
- a beat that dies after publishing and before confirming does the same, so that tick is sent
  twice - with the same task id.

A publish still in flight when the lease runs out (``broker_connection_timeout`` or a
``retry_policy`` of 10 s or more; 4 s by default) likewise lets another beat send the same tick,
with the same task id (docs/beat.md). A store row beat did not write is skipped and logged once
(:mod:`aqueue.transports.beat_rows`); an entry whose last tick cannot be read starts from now.

Catching up (Celery's beat would send nothing, or a burst): each entry's last tick is kept in
the store, so after a downtime the ticks missed are handled by the entry's ``catch_up``:
``"once"`` sends the latest missed tick once, ``"all"`` every missed tick oldest first, ``"none"``
none of them. An entry first seen with no last tick starts from that moment (a stored entry:
from when it was added). A tick whose message would already have expired (``options.expires``,
counted from the tick) is dropped rather than sent.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from aqueue import signals
from aqueue.beat.entry import ON_TIME, Entry, decode_entry, static_entries, tick_ms, tick_task_id
from aqueue.exceptions import AqueueError, BrokerError, ConfigurationError, SecurityError
from aqueue.transports.base import BeatStore, Claim

if TYPE_CHECKING:
    from aqueue.app import Aqueue

__all__ = ["CLAIM_KEEP", "CLAIM_LEASE", "Beat"]

logger = logging.getLogger("aqueue.beat")

#: Seconds a claim stays pending before another beat may take the tick over (a dead claimant).
#: Longer than a publish with its retries takes; a live beat confirms within milliseconds.
CLAIM_LEASE = 10.0

#: Seconds a confirmed claim is kept: far longer than a pass, during which a beat that read the
#: last tick just before the confirmation may still try the same tick.
CLAIM_KEEP = 600.0

#: Seconds between attempts while the store cannot be read.
RETRY_DELAY = 1.0


@dataclass(slots=True)
class _State:
    """This beat's progress on one entry."""

    # Ticks at or before `cursor` are taken up: sent, seen sent, dropped, or in `open`.
    cursor: float | None = None
    # Ticks taken up but not settled (a claim pending elsewhere, a send that failed):
    # tick -> published by this beat (then only the confirmation is missing).
    open: dict[float, bool] = field(default_factory=dict)


class Beat:
    """Send the periodic tasks of ``app`` (Celery's ``beat``), alongside any number of others.

    Args:
        app: the app whose ``beat_schedule`` and stored entries to run.
        max_interval: at most this many seconds between two reads of the store (default 1): how
            soon an entry added, changed or removed at runtime takes effect.
        clock: the time in epoch seconds (default :func:`time.time`); injectable for tests.
        store: where claims, last ticks and stored entries live (default: by the result backend
            URL, see :meth:`aqueue.Aqueue.beat_store`).
        lease: seconds a claim of a beat that has not confirmed it blocks the others.

    Raises:
        ConfigurationError: a ``beat_schedule`` entry is invalid, or there is no result backend.

    Use ``await beat.run()`` (until :meth:`stop`), or ``async with Beat(app):`` to run it in the
    background of the current loop; or drive it pass by pass with :meth:`tick`.
    """

    def __init__(
        self,
        app: Aqueue,
        *,
        max_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        store: BeatStore | None = None,
        lease: float = CLAIM_LEASE,
    ) -> None:
        self.app = app
        self.tz = ZoneInfo(app.conf.timezone)
        self.max_interval = max_interval
        self.clock = clock
        self.lease = lease
        self.static = static_entries(app)
        if store is None:
            app._backend_url("keep beat's claims and entries")  # fail now, not at start
        self._given_store = store
        self._store: BeatStore | None = None
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        #: Ticks this beat has sent, per entry name.
        self.sent: collections.Counter[str] = collections.Counter()
        self._states: dict[str, _State] = {}
        self._decoded: dict[str, tuple[bytes, Entry | None]] = {}
        self._stopping = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._passes_started = 0
        self._passes_done = 0
        self._pass_done = asyncio.Condition()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to the store and the broker, then run passes in the background.

        Raises:
            BrokerConnectionError: the store or the broker cannot be reached.
        """
        await signals.beat_init.send(self)
        await self._connect_store()
        await self.app.broker()
        self._loop_task = asyncio.create_task(self._loop())
        names = ", ".join(sorted(self.static)) or "none in beat_schedule"
        logger.info(
            "beat started: entries %s (and any stored), timezone %s, pid %d",
            names,
            self.tz.key,
            os.getpid(),
        )

    async def run(self, install_signal_handlers: bool = False) -> None:
        """Start, then run until :meth:`stop` (or SIGTERM/SIGINT if ``install_signal_handlers``).

        Raises:
            BrokerConnectionError: the store or the broker cannot be reached at start.
        """
        if install_signal_handlers:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
        await self.start()
        assert self._loop_task is not None
        await self._loop_task

    def _on_signal(self, sig: signal.Signals) -> None:
        logger.info("%s received: beat stopping", sig.name)
        self._stopping.set()

    async def stop(self) -> None:
        """Stop after the pass in progress (a tick being sent is finished, not cut off)."""
        self._stopping.set()
        if self._loop_task is not None:
            await self._loop_task

    async def __aenter__(self) -> Beat:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _loop(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    delay = await self.tick()
                except BrokerError as exc:
                    logger.warning("beat: cannot read the store (%s); retrying", exc)
                    delay = RETRY_DELAY
                except Exception:
                    # A beat that stops quietly is worse than one that logs and keeps trying.
                    logger.exception("beat: pass failed; retrying")
                    delay = RETRY_DELAY
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
        finally:
            await self.store.close()
            logger.info("beat stopped (%d ticks sent)", self.sent.total())

    @property
    def store(self) -> BeatStore:
        """Where claims, last ticks and stored entries live (connected by :meth:`start`)."""
        if self._store is None:
            if self._given_store is None:
                raise RuntimeError("the beat store is connected by Beat.start()")
            return self._given_store
        return self._store

    async def _connect_store(self) -> BeatStore:
        store = self._given_store or await self.app.beat_store()
        await store.connect()
        self._store = store
        return store

    async def next_pass(self) -> None:
        """Wait until a pass that starts after this call has finished."""
        async with self._pass_done:
            target = self._passes_started + 1
            await self._pass_done.wait_for(lambda: self._passes_done >= target)

    # -- one pass ----------------------------------------------------------------------------

    async def tick(self) -> float:
        """One pass: send every tick now due; return the seconds until the next pass is needed.

        Returns:
            Seconds (0 to ``max_interval``) until the next tick of any entry, or until the store
            should be read again.

        Raises:
            BrokerError: the store cannot be read. (A tick that cannot be sent is logged and
                tried again on the next pass.)
        """
        self._passes_started += 1
        number = self._passes_started
        try:
            store = self._store or await self._connect_store()
            snapshot = await store.load()
            now = self.clock()
            entries = self._entries(snapshot.entries)
            for name in list(self._states):
                if name not in entries:
                    del self._states[name]
            lost = snapshot.unreadable
            wakes = await asyncio.gather(
                *(
                    self._visit(e, snapshot.last.get(e.name), e.name in lost, now)
                    for e in entries.values()
                )
            )
            wake = min([now + self.max_interval, *wakes])
            return min(self.max_interval, max(0.0, wake - self.clock()))
        finally:
            async with self._pass_done:
                self._passes_done = max(self._passes_done, number)
                self._pass_done.notify_all()

    def _entries(self, stored: dict[str, bytes]) -> dict[str, Entry]:
        """``beat_schedule``'s entries, replaced or joined by the stored ones."""
        entries = dict(self.static)
        for name in list(self._decoded):
            if name not in stored:
                del self._decoded[name]
        for name, data in stored.items():
            cached = self._decoded.get(name)
            if cached is None or cached[0] != data:
                try:
                    cached = (data, decode_entry(self.app, name, data))
                except (ConfigurationError, SecurityError) as exc:
                    logger.error("beat: skipping stored entry %r: %s", name, exc)
                    cached = (data, None)
                self._decoded[name] = cached
            if cached[1] is not None:
                entries[name] = cached[1]
        return entries

    async def _visit(self, entry: Entry, last_ms: int | None, lost: bool, now: float) -> float:
        """Settle ``entry``'s open ticks and take up its due tick; return when to look again.

        ``lost``: the store holds a last tick for ``entry`` that cannot be read. The entry then
        starts from now, even a stored one (not from when it was added): the ticks before now
        may have been sent, and their claims may be gone, so only now is known to be safe.
        """
        try:
            state = self._states.setdefault(entry.name, _State())
            since = None if lost else entry.since
            known = [state.cursor, since, None if last_ms is None else last_ms / 1000]
            floor = [t for t in known if t is not None]
            state.cursor = max(floor) if floor else now  # first sight: from now on
            for tick in sorted(state.open):
                await self._attempt(entry, tick, state, now)
            latest = entry.schedule.prev_tick(now, self.tz)
            if latest is not None and latest > state.cursor:
                tick = latest
                if entry.catch_up == "all":
                    tick = entry.schedule.next_tick(state.cursor, self.tz)
                state.cursor = tick
                if entry.catch_up == "none" and now - tick > ON_TIME:
                    logger.info("beat: %r missed tick %s dropped", entry.name, self._time(tick))
                else:
                    state.open[tick] = False
                    await self._attempt(entry, tick, state, now)
            return entry.schedule.next_tick(state.cursor, self.tz)
        except Exception:
            logger.exception("beat: entry %r failed", entry.name)
            return now + self.max_interval

    async def _attempt(self, entry: Entry, tick: float, state: _State, now: float) -> None:
        """Claim, send and confirm ``tick``; leave it open if that cannot finish now."""
        expires = entry.expires_at(tick)
        if expires is not None and now >= expires:
            del state.open[tick]
            logger.info("beat: %r tick %s expired, not sent", entry.name, self._time(tick))
            return
        ms = tick_ms(tick)
        task_id = tick_task_id(entry.name, tick)
        sent_now = False
        try:
            claim = await self.store.claim(entry.name, ms, self.token, self.lease)
            if claim is Claim.DONE:
                del state.open[tick]
                return
            if claim is Claim.PENDING:
                return  # another beat is sending it; if it died, its lease runs out
            if not state.open[tick]:
                await self._send(entry, tick, task_id, expires)
                state.open[tick] = sent_now = True
                self.sent[entry.name] += 1
            await self.store.confirm(entry.name, ms, self.token, CLAIM_KEEP)
            del state.open[tick]
        except BrokerError as exc:
            what = "sent, not yet confirmed" if state.open.get(tick) else "not sent"
            logger.warning(
                "beat: %r tick %s %s (%s), task id %s; trying again",
                entry.name,
                self._time(tick),
                what,
                exc,
                task_id,
            )
        except AqueueError as exc:
            # Not transient (arguments that cannot be encoded, a bad option): retrying won't help.
            del state.open[tick]
            logger.error("beat: %r tick %s cannot be sent: %s", entry.name, self._time(tick), exc)
        else:
            if sent_now:  # logged once settled, so a log line means the tick is done
                logger.info(
                    "beat: sent %r (%s) for tick %s, task id %s",
                    entry.name,
                    entry.task,
                    self._time(tick),
                    task_id,
                )

    async def _send(self, entry: Entry, tick: float, task_id: str, expires: float | None) -> None:
        """Publish ``entry``'s message for ``tick``.

        Raises:
            BrokerError: the broker cannot be reached (the tick is tried again).
            AqueueError: the message cannot be sent as it is; any other error is raised as a
                :class:`ConfigurationError` - an option of the wrong type that only publishing
                meets (``"retry_policy": 5``) must not stop the entry at this tick for good.
        """
        options = dict(entry.options)
        if expires is not None:
            options["expires"] = datetime.fromtimestamp(expires, UTC)
        try:
            await self.app.send_task(
                entry.task, entry.args, entry.kwargs, task_id=task_id, **options
            )
        except AqueueError:
            raise
        except Exception as exc:
            raise ConfigurationError(f"{type(exc).__name__}: {exc}") from exc

    def _time(self, tick: float) -> str:
        """A tick as an ISO time in the app's time zone (milliseconds only when not whole)."""
        spec = "seconds" if tick == int(tick) else "milliseconds"
        return datetime.fromtimestamp(tick, self.tz).isoformat(timespec=spec)
