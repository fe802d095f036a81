"""Micro-benchmark: encoding and decoding one task message and one result record.

Plain JSON arguments are the common case and must stay fast; typed ones (datetime, UUID,
Decimal...) take the tagged path. Run from the repository root::

    python benchmarks/serialization.py              # every case, json
    python benchmarks/serialization.py --repeat 7   # more rounds (the best is printed)

Prints microseconds per call (the best of ``--repeat`` rounds of ``--number`` calls).
"""

from __future__ import annotations

import argparse
import sys
import timeit
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: import this checkout's aqueue
    sys.path.insert(0, str(REPO_ROOT))

from aqueue.exceptions import EncodeError  # noqa: E402
from aqueue.message import Message, decode  # noqa: E402
from aqueue.results.record import ResultRecord  # noqa: E402

RECORDS = [{"id": i, "name": f"item {i}", "score": i / 3, "tags": ["a", "b"]} for i in range(20)]
PAYLOAD = {"user": "alice", "items": list(range(100)), "meta": {"a": 1, "b": [1, 2], "c": "x"}}
TYPED = {"when": datetime(2024, 5, 1, 12, tzinfo=UTC), "id": uuid.UUID(int=7), "n": Decimal("1.5")}

CASES: dict[str, tuple[tuple[Any, ...], dict[str, Any], Any]] = {
    # name: (args, kwargs, result)
    "scalars add(2, 2)": ((2, 2), {}, 4),
    "strings + kwargs": (("alice", "report.pdf"), {"retries": 3, "urgent": True}, "ok"),
    "dict of 100 ints": ((PAYLOAD,), {}, PAYLOAD),
    "20 records": ((RECORDS,), {}, RECORDS),
    "typed (datetime, UUID, Decimal)": ((TYPED,), {}, TYPED),
}


def best(fn: Callable[[], Any], number: int, repeat: int) -> float:
    """Microseconds per call of ``fn``: the best of ``repeat`` rounds of ``number`` calls."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000, help="calls per round")
    parser.add_argument("--repeat", type=int, default=5, help="rounds (the best is kept)")
    opts = parser.parse_args(argv)
    header = f"{'case':<34}{'msg encode':>11}{'msg decode':>11}{'rec encode':>11}{'rec decode':>11}"
    print(header + "   (µs per call)")
    for name, (args, kwargs, result) in CASES.items():
        msg = Message(id=str(uuid.uuid4()), task="proj.tasks.add", args=args, kwargs=kwargs)
        rec = ResultRecord(msg.id, "SUCCESS", result, None, 1.0, 0, "proj.tasks.add")
        try:
            raw, raw_rec = msg.encode(), rec.encode()
        except EncodeError as exc:  # a version without typed values
            print(f"{name:<34}  not serialisable: {exc}"[:100])
            continue
        times = [
            best(msg.encode, opts.number, opts.repeat),
            best(lambda raw=raw: decode(raw), opts.number, opts.repeat),
            best(rec.encode, opts.number, opts.repeat),
            best(lambda r=raw_rec: ResultRecord.decode(r), opts.number, opts.repeat),
        ]
        print(f"{name:<34}" + "".join(f"{t:>11.2f}" for t in times))


if __name__ == "__main__":
    main()
