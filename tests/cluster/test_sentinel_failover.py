"""A Sentinel failover under load (``make test-cluster``; outside ``make test``): a primary, a
replica and three sentinels; 10,000 tasks at ~500/s through a worker process; ``SENTINEL
FAILOVER`` when 40 % are sent. Neither the worker nor the producer is told: they must carry on
by themselves.

Each scenario prints one ``sentinel failover:`` line (run with ``-s``): acknowledged sends
(every ``delay()`` that returned), lost and duplicated runs, seconds from ``SENTINEL FAILOVER``
to the first run of a task sent after the switch, the longest ``delay()``. Sizes:
``$SENTINEL_N`` tasks (default 10,000) at ``$SENTINEL_RATE`` per second (default 500).

- ``wait_replicas=0`` (the default): nothing waits for replication. What the old primary took
  between the promotion and the clients' switch, and no worker ran before the switch, is lost.
- ``wait_replicas=1``: a publish counts once a replica has it (or, right after the failover,
  when the sentinels list no replica able to take over). No acknowledged send is lost; sends
  made between the promotion and the switch fail and are retried.
- ``killed-...``: the primary is killed (SIGKILL) instead. Sends fail while no primary answers
  (``down-after-milliseconds``, 2 s here, and an election): they are counted, not lost.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.chaos.harness import Ledger
from tests.transports.sentinels import SentinelGroup, failover_under_load, ledger_on

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

TOTAL = int(os.environ.get("SENTINEL_N", "10000"))
RATE = float(os.environ.get("SENTINEL_RATE", "500"))
RECOVERY_BAR = 10.0  # seconds from SENTINEL FAILOVER to tasks flowing again


@pytest.fixture
async def ledger(redis_server: str) -> AsyncIterator[Ledger]:
    async with ledger_on(redis_server) as found:
        yield found


@pytest.mark.parametrize(
    ("replicas", "wait_replicas", "crash"),
    [(1, 0, False), (1, 1, False), (2, 1, False), (1, 0, True), (1, 1, True)],
    ids=[
        "1-replica-no-wait",
        "1-replica-wait-1",
        "2-replicas-wait-1",
        "killed-1-replica-no-wait",
        "killed-1-replica-wait-1",
    ],
)
async def test_failover_under_load(
    tmp_path: Path, ledger: Ledger, replicas: int, wait_replicas: int, crash: bool
) -> None:
    with SentinelGroup(tmp_path, replicas=replicas) as group:
        figures = await failover_under_load(
            group, ledger, total=TOTAL, rate=RATE, wait_replicas=wait_replicas, crash=crash
        )
    print(f"\n{figures.line()}")
    assert figures.first_task_s < RECOVERY_BAR
    assert figures.longest_send_s < RECOVERY_BAR
    if wait_replicas:
        assert figures.lost == 0, figures.line()
