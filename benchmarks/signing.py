"""Micro-benchmark: what ``task_signing_key`` costs per task, and that no key costs nothing.

For a task message and its result record, in several shapes, CPU only (no I/O):

- ``send``: what a producer publishes, :meth:`aqueue.sending.Sender.outgoing` (encode, then
  sign when a key is set, then the size check), with no key and with a key;
- ``receive``: what a worker does with them, verify (with a key) then
  :func:`aqueue.message.decode`;
- ``store`` / ``read``: a result record, :meth:`ResultRecord.encode` and
  :meth:`ResultRecord.decode` with no key and with a key (sign / verify included).

The "bare" column is that call without any of this (``Outgoing(..., Message.encode(), ...)``,
what it was before signing), the base against which "no key" must show nothing. Run from the
repository root::

    python benchmarks/signing.py
    python benchmarks/signing.py --repeat 9 --number 50000

Prints the machine, then microseconds per call (the best of ``--repeat`` rounds of ``--number``
calls; plain and signed rounds interleaved, so a busy machine slows both alike).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import timeit
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: import this checkout's aqueue
    sys.path.insert(0, str(REPO_ROOT))

from aqueue import Aqueue  # noqa: E402
from aqueue.message import Message, decode  # noqa: E402
from aqueue.results.record import ResultRecord  # noqa: E402
from aqueue.signing import Signing  # noqa: E402
from aqueue.transports import Outgoing  # noqa: E402
from benchmarks.throughput import _cpu_model  # noqa: E402

KEY = "benchmark-signing-key-0123456789"
PAYLOAD = {"user": "alice", "items": list(range(100)), "meta": {"a": 1, "b": [1, 2], "c": "x"}}

CASES: dict[str, tuple[tuple[Any, ...], dict[str, Any], Any]] = {
    # name: (args, kwargs, result)
    "scalars add(2, 2)": ((2, 2), {}, 4),
    "strings + kwargs": (("alice", "report.pdf"), {"retries": 3, "urgent": True}, "ok"),
    "dict of 100 ints": ((PAYLOAD,), {}, PAYLOAD),
}


def best(calls: Sequence[Callable[[], Any]], number: int, repeat: int) -> list[float]:
    """Microseconds per call of each of ``calls``: the best of ``repeat`` rounds of ``number``
    calls, the rounds of the different calls interleaved."""
    found = [float("inf")] * len(calls)
    for _ in range(repeat):
        for i, fn in enumerate(calls):
            found[i] = min(found[i], timeit.timeit(fn, number=number) / number * 1e6)
    return found


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000, help="calls per round")
    parser.add_argument("--repeat", type=int, default=5, help="rounds (the best is kept)")
    opts = parser.parse_args(argv)
    plain = Aqueue("bench-plain", broker="memory://bench-signing")
    keyed = Aqueue("bench-signed", broker="memory://bench-signing", task_signing_key=KEY)
    signing = Signing.from_setting(KEY)
    assert signing is not None
    print(
        f"machine  {_cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )
    print(f"{opts.number:,} calls per round, best of {opts.repeat}; µs per call\n")
    print(
        f"{'message':<20}{'bytes':>6}{'bare':>8}{'send':>8}{'+key':>8}"
        f"{'receive':>9}{'+key':>8}   {'record':>6}{'store':>7}{'+key':>8}{'read':>8}{'+key':>8}"
    )
    for name, (args, kwargs, result) in CASES.items():
        msg = Message(id=str(uuid.uuid4()), task="proj.tasks.add", args=args, kwargs=kwargs)
        raw, signed = plain.sender.encode(msg), keyed.sender.encode(msg)
        assert raw == msg.encode() and signed != raw

        def bare(msg: Message = msg) -> Outgoing:
            return Outgoing(msg.queue, msg.encode(), msg.id, msg.priority, msg.eta)

        rec = ResultRecord(msg.id, "SUCCESS", result, None, 1.0, 0, "proj.tasks.add")
        raw_rec, signed_rec = rec.encode(), rec.encode("json", signing)

        def receive_signed(signed: bytes = signed) -> Message:
            signing.messages.verify(signed)
            return decode(signed)

        times = best(
            [
                bare,
                partial(plain.sender.outgoing, msg),
                partial(keyed.sender.outgoing, msg),
                partial(decode, raw),
                receive_signed,
                rec.encode,
                partial(rec.encode, "json", signing),
                partial(ResultRecord.decode, raw_rec),
                partial(ResultRecord.decode, signed_rec, ("json",), signing, msg.id),
            ],
            opts.number,
            opts.repeat,
        )
        print(
            f"{name:<20}{len(raw):>6}"
            + "".join(f"{t:>8.2f}" for t in times[:3])
            + f"{times[3]:>9.2f}{times[4]:>8.2f}   {len(raw_rec):>6}"
            + f"{times[5]:>7.2f}"
            + "".join(f"{t:>8.2f}" for t in times[6:])
        )
    # The whole round of one task, add(2, 2): sent, received, its record stored and read.
    msg = Message(id=str(uuid.uuid4()), task="proj.tasks.add", args=(2, 2))
    rec = ResultRecord(msg.id, "SUCCESS", 4, None, 1.0, 0, "proj.tasks.add")

    def round_plain() -> None:
        decode(plain.sender.outgoing(msg).body)
        ResultRecord.decode(rec.encode())

    def round_signed() -> None:
        body = keyed.sender.outgoing(msg).body
        signing.messages.verify(body)
        decode(body)
        ResultRecord.decode(rec.encode("json", signing), ("json",), signing, msg.id)

    no_key, with_key = best([round_plain, round_signed], opts.number, opts.repeat)
    print(
        f"\nper task, add(2, 2) sent, received, its record stored and read: {no_key:.2f} µs "
        f"with no key, {with_key:.2f} µs with a key (+{with_key - no_key:.2f} µs)"
    )


if __name__ == "__main__":
    main()
