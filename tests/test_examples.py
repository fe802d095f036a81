"""The examples users copy from must keep working."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import RabbitNode


def run_module(
    module: str, *args: str, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m module args...``, which must exit 0; its output as text."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.mark.timeout(120)
def test_seed_examples_that_work_today() -> None:
    done = run_module("examples.seeds.run_all", timeout=110)
    ran = [line for line in done.stdout.splitlines() if line.startswith("ok ")]
    assert len(ran) >= 17, done.stdout


@pytest.mark.timeout(120)
def test_rpc_seed_examples_on_rabbitmq_alone(rabbitmq_server: RabbitNode) -> None:
    """``backend='rpc://'`` / ``'rpc'`` as the tutorials write it: RabbitMQ and nothing else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AQUEUE_")}
    env["AQUEUE_BROKER_URL"] = rabbitmq_server.url  # no result backend but rpc://, no Redis
    done = run_module("examples.seeds.run_all", "--amqp", timeout=110, env=env)
    ran = sorted(line.split()[1] for line in done.stdout.splitlines() if line.startswith("ok "))
    assert ran == ["rpc_results", "rpc_then"], done.stdout


@pytest.mark.timeout(120)
def test_filehash_demo_on_the_embedded_default() -> None:
    done = run_module("examples.filehash.producer", "--spawn-worker", "--limit", "300", timeout=110)
    assert "files" in done.stdout and "tasks/s" in done.stdout, done.stdout


@pytest.mark.timeout(120)
def test_filehash_demo_bulk_path() -> None:
    done = run_module(
        "examples.filehash.producer",
        *("--spawn-worker", "--limit", "300", "--bulk", "--in-flight", "100"),
        timeout=110,
    )
    figures = dict(line.split(None, 1) for line in done.stdout.splitlines() if line.strip())
    assert figures["files"].strip() == "300", done.stdout
    assert figures["failed"].strip() == "0", done.stdout


@pytest.mark.timeout(60)
def test_signing_demo() -> None:
    done = run_module("examples.signing.demo", timeout=50)
    assert done.stdout.splitlines() == [
        "signed call:       moved 10 to alice",
        "forged message:    dead-lettered, 'unsigned message'",
        "changed result:    SecurityError, 'bad signature on result record'",
        "after rotation:    moved 20 to bob",
        "older result:      moved 10 to alice (old key)",
    ], done.stdout + done.stderr
    assert "refused a message from queue default" in done.stderr


@pytest.mark.timeout(120)
def test_pipeline_demo_on_sqlite() -> None:
    done = run_module("examples.pipeline.demo", timeout=110)
    out = done.stdout
    assert "unique:      5 sends, 1 call" in out, out
    assert "ran 1 time" in out and "ids ['charge-17']" in out, out
    assert "load is PENDING" in out and "diamond:     loaded 4 rows, 19 characters" in out, out
    assert "failed dep:  dependency demo.enrich[" in out and "the geo service is down" in out, out


@pytest.mark.timeout(120)
def test_streaming_demo() -> None:
    done = run_module("examples.streaming.demo", timeout=110)
    lines = done.stdout.splitlines()
    assert any(line.endswith("You ") for line in lines), done.stdout  # the first token
    assert "result: You asked: what is a task queue. Here is" in done.stdout
    assert "late reader got 17 tokens" in done.stdout
    assert "1000 batched calls: 10 invocations" in done.stdout
