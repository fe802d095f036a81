"""examples/observability keeps working: a worker with metrics on the embedded default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(120)
def test_the_observability_demo_serves_its_counts(tmp_path: Path) -> None:
    env = {**os.environ, "AQUEUE_BROKER_URL": f"sqlite:///{tmp_path}/demo.db"}
    done = subprocess.run(
        [sys.executable, "-m", "examples.observability.run"],
        capture_output=True, text=True, timeout=110, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = dict(line.rsplit(" ", 1) for line in done.stdout.splitlines() if line.startswith("aq"))
    labels = '{queue="default",task="obs.charge"}'
    assert float(lines[f"aqueue_tasks_succeeded_total{labels}"]) == 45
    assert float(lines[f"aqueue_tasks_failed_total{labels}"]) == 5
    assert float(lines[f"aqueue_tasks_retried_total{labels}"]) == 7  # orders 3, 10, ... 45
    assert float(lines[f"aqueue_task_runtime_seconds_count{labels}"]) == 50 + 7
    assert "readyz 200 ok" in done.stdout
    assert "card declined" in done.stderr  # the task_failure receiver's alert line
