"""Garbage written straight into Redis while a worker drains normal tasks: stream entries with
malformed fields, bad members of the delayed set, bodies that are not JSON or not envelopes,
and every envelope field with a value of the wrong type. Every normal task runs; every bad
message is dead-lettered (stream entries) or set aside (delayed members) with a reason naming
what is wrong; the worker never stalls, and still stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from aqueue.transports.redis import keys
from tests.chaos import chaos_app
from tests.chaos.harness import SIZES, Ledger, Result, peak_rss_mb, report, worker, worker_env

CONCURRENCY = 20
# Garbage is written this many times, between parts of the normal tasks (59 pieces a round).
ROUNDS = max(10, SIZES.garbage_tasks // 200)
STALL_BAR = 5.0  # seconds the worker may go without finishing a normal task while it has one
DB = 3  # of the session's Redis server, flushed first: the delayed set is per database

# Each envelope field with values of the wrong type or out of range (aqueue/message.py).
BAD_FIELDS: tuple[tuple[str, Any], ...] = (
    ("id", 5),
    ("task", ["chaos.work"]),
    ("expires", "soon"),
    ("eta", "tomorrow"),
    ("eta", [1]),
    ("ct", ["json"]),
    ("ct", "yaml"),
    ("enc", 5),
    ("queue", 7),
    ("priority", -1),
    ("priority", 256),
    ("priority", "9"),
    ("priority", 1.5),
    ("retries", -1),
    ("retries", "0"),
    ("headers", []),
    ("link", [1]),
    ("link", "x"),
    ("link_error", [{"task": 5}]),
    ("time_limit", 0),
    ("time_limit", -3),
    ("time_limit", "x"),
    ("ignore_result", "yes"),
    ("parent_id", 1),
    ("root_id", []),
    ("group_id", {}),
    ("options", "x"),
    ("options", {"chain": "x"}),
    ("options", {"chord": {"id": 1}}),
    ("reply_to", 5),
    ("v", 0),
    ("v", "1"),
    ("args", "x"),
    ("args", {"a": 1}),
    ("kwargs", []),
    ("body", "%%% not base64"),
)


@dataclass(frozen=True)
class Bad:
    """One piece of garbage: a stream entry (its fields) or a delayed-set member, and a piece
    of the reason it must be refused with."""

    why: str
    fields: dict[str, bytes] | None = None  # a stream entry ...
    member: bytes | None = None  # ... or a member of the delayed set
    priority: int = 0


def framed(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return b"%d:%s" % (len(raw), raw)


class Garbage:
    """The garbage of one scenario run: its keys never collide with the normal ones."""

    def __init__(self, run: str, queue: str, total: int) -> None:
        self.run = run
        self.queue = queue
        self.total = total
        self.key = total  # garbage keys come after the normal ones: none of them may run
        self.wrong_type_queue = f"{queue}-wrongtype"  # its priority 0 stream is a string key
        self.expected_dead: Counter[bytes] = Counter()  # bodies that must reach the DLQ
        self.reasons: dict[bytes, str] = {}  # body -> a piece of its reason
        self.expected_aside: dict[bytes, str] = {}  # delayed member -> a piece of its reason
        self.valid: list[int] = []  # keys of odd but valid messages, which must run

    def envelope(self, **changes: Any) -> bytes:
        self.key += 1
        env: dict[str, Any] = {
            "v": 1,
            "id": f"garbage-{self.run}-{self.key}",
            "task": "chaos.work",
            "ct": "json",
            "args": [self.run, self.key, 0.0, self.total],
            "kwargs": {},
            "queue": self.queue,
        }
        env.update(changes)
        return orjson.dumps(env)

    def round(self) -> list[Bad]:
        """One round of every kind of garbage (and two odd but valid messages)."""
        out: list[Bad] = []
        for n, (field, value) in enumerate(BAD_FIELDS):
            expect = "yaml" if value == "yaml" else f"'{field}"
            body = self.envelope(**{field: value})
            out.append(Bad(expect, {"b": body}, priority=(0, 5, 9)[n % 3]))
        not_envelopes = (
            (b"not json {", "JSON"),
            (b"[1, 2]", "not an aqueue envelope"),
            (orjson.dumps({"id": f"garbage-{self.run}-{self.key}-no-task"}), "'task'"),
            (self.envelope(task="chaos.nope"), "unknown task"),
            (self.envelope(args=[1]), "arguments do not fit"),
        )
        out += [Bad(why, {"b": body}) for body, why in not_envelopes]
        for n in ("abc", "0", "-1", "1" * 10):
            out.append(Bad("'n'", {"b": self.envelope(), "n": n.encode()}))
        for k in ("x", "1.5", "-2"):
            out.append(Bad("'k'", {"b": self.envelope(), "k": k.encode()}))
        out.append(Bad("JSON", {"x": b"no body field"}))
        out += self._delayed()
        self.valid.append(self.key + 1)
        out.append(Bad("", {"b": self.envelope(), "zz": b"an unknown field"}))
        return out

    def _delayed(self) -> list[Bad]:
        stream = keys.stream(self.queue, 0)
        wrong_type = keys.stream(self.wrong_type_queue, 0)
        member_id = uuid.uuid4().hex
        members = (
            (f"garbage {member_id}".encode(), "no <length>:<stream> prefix"),
            (b"99:ab" + member_id.encode(), "no <length>:<stream> prefix"),
            (b"x:" + member_id.encode(), "no <length>:<stream> prefix"),
            (framed(f"not-a-queue-{member_id}") + b"1:x{}", "not a queue stream"),
            (framed(f"{keys.STREAM_PREFIX}{self.queue}:x") + framed(member_id), "not a queue"),
            (framed(stream) + b"no id frame " + member_id.encode(), "no <length>:<message id>"),
            (framed(wrong_type) + framed(member_id) + self.envelope(), "XADD to"),
        )
        out = [Bad(why, member=member) for member, why in members]
        # A well-formed member around a bad envelope: moved to its stream, then dead-lettered.
        body = self.envelope(expires="soon")
        out.append(Bad("'expires", member=framed(stream) + framed(member_id + "-b") + body))
        self.valid.append(self.key + 1)
        out.append(Bad("", member=framed(stream) + framed(member_id + "-v") + self.envelope()))
        return out

    async def write(self, client: aioredis.Redis, items: list[Bad]) -> None:
        """Write one round straight into Redis (one pipeline), noting what must come of it."""
        async with client.pipeline(transaction=False) as pipe:
            for bad in items:
                if bad.fields is not None:
                    pipe.xadd(keys.stream(self.queue, bad.priority), dict(bad.fields))
                    if bad.why:
                        body = bad.fields.get("b", b"")
                        self.expected_dead[body] += 1
                        self.reasons[body] = bad.why
                else:
                    assert bad.member is not None
                    pipe.zadd(keys.delayed(), {bad.member: 0})
                    if bad.why == "'expires":
                        body = bad.member[bad.member.index(b"{") :]
                        self.expected_dead[body] += 1
                        self.reasons[body] = bad.why
                    elif bad.why:
                        self.expected_aside[bad.member] = bad.why
            await pipe.execute()


class Progress:
    """The normal tasks sent and run, watched by polling the ledger: the longest stretch in
    which none finished while some were waiting is how long the worker stalled."""

    POLL = 0.05  # seconds: the resolution of the gap

    def __init__(self) -> None:
        self.sent = 0
        self.done = 0
        self.longest_gap = 0.0
        self._changed = asyncio.Condition()

    async def watch(self, ledger: Ledger) -> None:
        """Poll until cancelled (the ledger counts runs, it does not notify)."""
        last = time.monotonic()
        while True:
            done = await ledger.distinct()
            now = time.monotonic()
            if done != self.done or done >= self.sent:  # moving, or nothing left to run
                last = now
            self.longest_gap = max(self.longest_gap, now - last)
            if done != self.done:
                self.done = done
                async with self._changed:
                    self._changed.notify_all()
            await asyncio.sleep(self.POLL)

    async def wait_done(self, count: int, timeout: float) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self.done >= count), timeout)


async def stop(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def stream_fields(client: aioredis.Redis, stream: str) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in await client.xrange(stream)]


@pytest.mark.timeout(1800)
async def test_garbage_under_load(redis_server: str, ledger: Ledger) -> None:
    total = SIZES.garbage_tasks
    queue = f"chaos-{uuid.uuid4().hex[:8]}"
    url = f"{redis_server}/{DB}"
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    garbage = Garbage(ledger.run, queue, total)
    await client.set(keys.stream(garbage.wrong_type_queue, 0), b"a string, not a stream")
    producer = chaos_app.build(url, url, queue)
    work = producer.tasks["chaos.work"]
    env = worker_env(url, url, queue, ledger)
    part = -(-total // ROUNDS)
    progress = Progress()
    watching: asyncio.Task[None] | None = None
    written = 0
    t0 = time.monotonic()
    try:
        async with worker(env, CONCURRENCY) as drainer:
            assert drainer.proc is not None
            watching = asyncio.create_task(progress.watch(ledger))
            for first in range(0, total, part):
                batch = range(first, min(total, first + part))
                await work.delay_many([(ledger.run, k, 0.0, total) for k in batch])
                progress.sent += len(batch)
                items = garbage.round()
                await garbage.write(client, items)
                written += len(items)
                # At most two parts waiting, so that garbage and normal tasks interleave.
                await progress.wait_done(progress.sent - part, timeout=60)
                assert progress.longest_gap <= STALL_BAR, "the worker stalled:\n" + "\n".join(
                    drainer.lines[-30:]
                )
            expected = [*range(total), *garbage.valid]
            missing = await ledger.wait_ran(expected, timeout=max(120.0, total / 100))
            assert missing == [], f"{len(missing)} did not run:\n" + "\n".join(drainer.lines[-30:])
            await stop(watching)
            dead = await wait_for_dead_letters(client, keys.dlq(queue), garbage)
            aside = await stream_fields(client, keys.delayed_rejected())
            peak = peak_rss_mb(drainer.proc.pid)
            drainer.signal(signal.SIGTERM)
            assert await drainer.wait(30) == 0
            await drainer.wait_for("stopped", timeout=5)
    finally:
        await stop(watching)
        await producer.close()
        await client.flushdb()
        await client.aclose()
    wall = time.monotonic() - t0
    runs = await ledger.runs()
    lost = [k for k in range(total) if k not in runs]
    duplicated = sum(n - 1 for k, n in runs.items() if k < total)
    report(
        Result(
            "garbage under load: every field, stream entries, delayed members (Redis)",
            total,
            len(lost),
            duplicated,
            recovery_s=progress.longest_gap,
            peak_rss_mb=peak,
            wall_s=wall,
            notes={
                "garbage_written": written,
                "dead_lettered": len(dead),
                "set_aside": len(aside),
                "longest_gap_s": round(progress.longest_gap, 2),
            },
        )
    )
    assert lost == [], f"{len(lost)} normal tasks never ran: {lost[:20]}"
    assert progress.longest_gap <= STALL_BAR, progress.longest_gap
    ran_garbage = sorted(k for k in runs if k >= total and k not in garbage.valid)
    assert ran_garbage == [], f"bad messages ran: {ran_garbage[:20]}"
    assert all(k in runs for k in garbage.valid), "an odd but valid message did not run"
    # Every bad stream entry dead-lettered once, each with a reason naming what is wrong.
    assert Counter(f[b"b"] for f in dead) == garbage.expected_dead
    for fields in dead:
        why = garbage.reasons[fields[b"b"]]
        assert why in fields[b"r"].decode(), (why, fields[b"r"])
    # Every bad delayed member set aside once, with its reason.
    reasons = {f[b"m"]: f[b"r"].decode() for f in aside}
    assert len(aside) == len(garbage.expected_aside)
    for member, why in garbage.expected_aside.items():
        assert why in reasons[member], (member, why, reasons[member])


async def wait_for_dead_letters(
    client: aioredis.Redis, stream: str, garbage: Garbage, timeout: float = 60.0
) -> list[dict[bytes, bytes]]:
    """The dead letters of ``stream`` once there are as many as expected (polled, with a
    deadline; then as many as there are)."""
    expected = sum(garbage.expected_dead.values())
    deadline = time.monotonic() + timeout
    while True:
        if await client.xlen(stream) >= expected or time.monotonic() >= deadline:
            return await stream_fields(client, stream)
        await asyncio.sleep(0.1)  # a poll with a deadline: nothing announces a dead letter
