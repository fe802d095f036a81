"""The examples users copy from must keep working."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import RabbitNode


@pytest.mark.timeout(120)
def test_seed_examples_that_work_today() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "examples.seeds.run_all"],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    ran = [line for line in done.stdout.splitlines() if line.startswith("ok ")]
    assert len(ran) >= 17, done.stdout


@pytest.mark.timeout(120)
def test_rpc_seed_examples_on_rabbitmq_alone(rabbitmq_server: RabbitNode) -> None:
    """``backend='rpc://'`` / ``'rpc'`` as the tutorials write it: RabbitMQ and nothing else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AQUEUE_")}
    env["AQUEUE_BROKER_URL"] = rabbitmq_server.url  # no result backend but rpc://, no Redis
    done = subprocess.run(
        [sys.executable, "-m", "examples.seeds.run_all", "--amqp"],
        capture_output=True,
        text=True,
        timeout=110,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    ran = sorted(line.split()[1] for line in done.stdout.splitlines() if line.startswith("ok "))
    assert ran == ["rpc_results", "rpc_then"], done.stdout


@pytest.mark.timeout(120)
def test_filehash_demo_on_the_embedded_default() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "examples.filehash.producer", "--spawn-worker", "--limit", "300"],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "files" in done.stdout and "tasks/s" in done.stdout, done.stdout


@pytest.mark.timeout(120)
def test_filehash_demo_bulk_path() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "examples.filehash.producer",
            "--spawn-worker",
            "--limit",
            "300",
            "--bulk",
            "--in-flight",
            "100",
        ],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    figures = dict(line.split(None, 1) for line in done.stdout.splitlines() if line.strip())
    assert figures["files"].strip() == "300", done.stdout
    assert figures["failed"].strip() == "0", done.stdout
