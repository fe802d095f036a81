"""A worker's memory does not grow with the backlog: prefetch is bounded (issue #5's target)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(240)
def test_worker_rss_with_100k_tasks_waiting_stays_under_200_mb(redis_server: str) -> None:
    # benchmarks/memory.py starts its own redis-server; redis_server makes sure one is installed.
    done = subprocess.run(
        [sys.executable, "benchmarks/memory.py", "--n", "100000", "--hold", "2", "--settle", "2"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    leased = re.search(
        r"leased\s+([\d,]+) messages held by the worker; ([\d,]+) waiting", done.stdout
    )
    rss = re.search(r"worker RSS\s+([\d.,]+) MB", done.stdout)
    assert leased and rss, done.stdout
    held, waiting = (int(g.replace(",", "")) for g in leased.groups())
    assert held <= 100 * 4  # concurrency x prefetch multiplier
    assert held + waiting >= 99_000  # the backlog is still there, in Redis
    assert float(rss.group(1).replace(",", "")) < 200, done.stdout
