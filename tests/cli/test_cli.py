"""The ``aqueue`` command's Celery habits and its package layout.

``-A`` before the command, ``--logfile`` / ``--pidfile``, validated ``-l`` and ``-c``, ``-A``
import errors, ``call`` refusing unknown names, and the worker's ready line. Commands that return
run in this process (typer's CliRunner, memory transport); workers and beat run as real
processes, as a user starts them.
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

import aqueue.cli
from aqueue.cli import cli
from aqueue.cli.pidfile import PidfileTaken, acquire, hold_pidfile, read_pid, release
from aqueue.transports.urls import redacted_url
from tests.workerproc import WorkerProcess

MEMORY = "tests.apps.cli_apps:memory_app"
SUBPROCESS_APP = "tests.apps.cli_apps:app"
CLI_DIR = Path(aqueue.cli.__file__).parent
UUID = re.compile(r"^[0-9a-f-]{36}$")


def invoke(*args: str) -> tuple[int, str, str]:
    """Run ``aqueue <args>`` in this process; return (exit code, stdout, stderr)."""
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def flat(text: str) -> str:
    """``text`` without rich's panel borders and line wrapping, to search usage errors in."""
    return " ".join(text.replace("│", " ").split())


def run_aqueue(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aqueue", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
    )


# -- the package -----------------------------------------------------------------------------


def test_cli_modules_import_no_private_names_of_each_other() -> None:
    for path in CLI_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aqueue.cli"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"
    assert {"cli", "main", "load_app"} <= set(vars(aqueue.cli))


# -- -A before or after the command --------------------------------------------------------------

# Every command that takes -A and returns, with what it exits with on an idle memory app.
COMMANDS = [
    (["call", "cli.add", "--args", "[1, 2]"], 0),
    (["status", "--json"], 0),
    (["purge", "-f"], 0),
    (["dlq", "list", "--json"], 0),
    (["inspect", "ping", "-t", "0.2"], 1),  # no worker replied
    (["control", "ping", "-t", "0.2"], 1),
    (["events", "-n", "1", "-t", "0.2"], 0),
    (["beat", "list"], 0),
]


@pytest.mark.parametrize(("args", "code"), COMMANDS, ids=[" ".join(a[:2]) for a, _ in COMMANDS])
def test_app_option_before_or_after_the_command(args: list[str], code: int) -> None:
    before = invoke("-A", MEMORY, *args)
    after = invoke(*args, "-A", MEMORY)
    assert before[0] == after[0] == code, (before, after)
    if args[0] == "call":
        assert UUID.match(before[1].strip()) and UUID.match(after[1].strip())
    if code == 1:
        assert "no worker replied" in before[2]
    missing = invoke(*args)
    assert missing[0] == 2 and "-A/--app is required" in missing[2]
    assert f"aqueue -A proj.tasks {args[0]}" in missing[2]  # shows Celery's form too
    # The -A nearer the command wins.
    assert invoke("-A", "no_such_module_xyz", *args, "-A", MEMORY)[0] == code


async def test_worker_with_app_before_the_command_and_any_case_loglevel(tmp_path: Path) -> None:
    env = {"AQUEUE_BROKER_URL": f"sqlite:///{tmp_path}/cli.db"}
    worker = WorkerProcess(SUBPROCESS_APP, env=env)
    worker.cmd = [sys.executable, "-m", "aqueue", "-A", SUBPROCESS_APP, "worker", "-l", "WaRnInG"]
    async with worker:
        assert not any("INFO" in line for line in worker.lines)  # warning level took effect
        worker.signal(signal.SIGTERM)
        assert await worker.wait() == 0


# -- -l and -c -----------------------------------------------------------------------------------


def test_loglevel_is_checked_with_a_clear_error() -> None:
    code, out, err = invoke("worker", "-A", MEMORY, "-l", "verbose")
    text = flat(out + err)
    assert code == 2 and "Traceback" not in text
    assert "'verbose' is not a log level; use one of debug, info, warning, error, critical" in text
    code, out, err = invoke("beat", "-A", MEMORY, "--loglevel", "loud")
    assert code == 2 and "'loud' is not a log level" in flat(out + err)


def test_concurrency_below_one_is_refused() -> None:
    for value in ("0", "-3"):
        code, out, err = invoke("worker", "-A", MEMORY, "-c", value)
        text = flat(out + err)
        assert code == 2 and "'-c' / '--concurrency'" in text and "1" in text


async def test_a_prefetch_multiplier_below_one_is_refused(tmp_path: Path) -> None:
    # Taken as given, -1 made a worker that fetched nothing, ever, without a word.
    env = {"AQUEUE_BROKER_URL": f"sqlite:///{tmp_path}/cli.db"}
    for value in ("0", "-1"):
        proc = await start("worker", "-A", SUBPROCESS_APP, "--prefetch-multiplier", value, env=env)
        assert proc.stderr is not None
        async with asyncio.timeout(20):
            err = b""
            while line := await proc.stderr.readline():  # ends at exit, or at the ready line
                err += line
                if b" ready: consuming " in line:
                    proc.kill()
                    break
            await proc.wait()
        text = flat(err.decode())
        assert proc.returncode == 2, text
        assert "'--prefetch-multiplier'" in text and "Traceback" not in text


@pytest.mark.parametrize(
    "args",
    [
        ["inspect", "ping", "-t", "nan"],
        ["inspect", "ping", "-t", "inf"],  # with no worker alive: would wait forever
        ["inspect", "ping", "-t", "-1"],
        ["control", "ping", "-t", "nan"],
        ["events", "-t", "nan"],
        ["events", "-t", "-2"],
    ],
    ids=lambda a: " ".join(a),
)
def test_a_timeout_that_is_not_a_number_of_seconds_is_refused(args: list[str]) -> None:
    done = run_aqueue(*args, "-A", MEMORY)  # a process: the command must exit, not hang
    text = flat(done.stdout + done.stderr)
    assert done.returncode == 2, text
    assert (
        "Invalid value for '--timeout' / '-t'" in text
        and "not a number of seconds" in text
        and "Traceback" not in text
    )


@pytest.mark.parametrize(
    "args",
    [
        ["dlq", "list", "-n", "-1"],  # listed none of the dead letters: "Dead letters: 0"
        ["dlq", "replay", "-f", "-n", "0"],  # said "No dead letters in ..."
        ["dlq", "purge", "-f", "--limit", "-3"],
        ["events", "-n", "0", "-t", "0.2"],  # printed one event when one came
    ],
    ids=lambda a: " ".join(a),
)
def test_a_limit_below_one_is_refused(args: list[str]) -> None:
    code, out, err = invoke(*args, "-A", MEMORY)
    text = flat(out + err)
    assert code == 2, text
    assert "Invalid value for '--limit' / '-n'" in text and "Traceback" not in text


# -- -A errors -----------------------------------------------------------------------------------


def test_app_not_found_is_told_apart_from_an_import_that_failed(tmp_path: Path) -> None:
    done = run_aqueue("worker", "-A", "no_such_module_xyz", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: -A no_such_module_xyz: module 'no_such_module_xyz' not found (run from the "
        "directory that contains it, or set PYTHONPATH)"
    )
    done = run_aqueue("status", "-A", "json.no_such_submodule", cwd=tmp_path)
    assert "module 'json.no_such_submodule' not found" in done.stderr

    (tmp_path / "needs_dep.py").write_text("import no_such_dependency_xyz\n")
    done = run_aqueue("worker", "-A", "needs_dep", cwd=tmp_path)
    assert done.returncode == 2
    first, *rest = done.stderr.splitlines()
    assert first == (
        "error: -A needs_dep: module 'needs_dep' was found but its import failed: "
        "ModuleNotFoundError: No module named 'no_such_dependency_xyz'"
    )
    assert f'File "{tmp_path / "needs_dep.py"}", line 1' in rest[0]  # where, in one line
    assert "not found" not in done.stderr

    (tmp_path / "raises.py").write_text("from aqueue import Aqueue\napp = Aqueue('x')\n1 / 0\n")
    done = run_aqueue("-A", "raises", "call", "x", cwd=tmp_path)
    assert "was found but its import failed: ZeroDivisionError: division by zero" in done.stderr


def test_app_with_a_syntax_error_shows_file_line_and_caret(tmp_path: Path) -> None:
    source = tmp_path / "broken.py"
    source.write_text("from aqueue import Aqueue\n\napp = Aqueue('b'\nx = = 1\n")
    done = run_aqueue("worker", "-A", "broken", cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) <= 5, done.stderr  # not typer's 53-line traceback
    assert lines[0].startswith(
        "error: -A broken: module 'broken' was found but its import failed: SyntaxError:"
    )
    assert re.fullmatch(rf'\s*File "{re.escape(str(source))}", line \d', lines[1])
    assert lines[-1].strip() and set(lines[-1].strip()) <= {"^", "~"}  # the caret


# -- call ------------------------------------------------------------------------------------------


def test_call_refuses_a_name_the_app_does_not_register() -> None:
    code, out, err = invoke("call", "-A", MEMORY, "cli.ad")
    assert (code, out) == (2, "")
    assert "unknown task 'cli.ad'" in err and "did you mean cli.add?" in err
    code, _, err = invoke("-A", MEMORY, "call", "mul")
    assert code == 2 and "did you mean cli.mul?" in err
    code, _, err = invoke("call", "-A", MEMORY, "cli.ad.d")
    assert code == 2 and "did you mean cli.add?" in err  # the whole name, when no last part
    code, _, err = invoke("call", "-A", MEMORY, "nothing.like.it")
    assert code == 2 and "registered: cli.add, cli.mul" in err
    assert "aqueue.map" not in err  # builtins are callable but not suggested
    code, out, _ = invoke("call", "-A", MEMORY, "nothing.like.it", "--no-check")
    assert code == 0 and UUID.match(out.strip())
    code, out, _ = invoke("call", "-A", MEMORY, "aqueue.map", "--args", '[[], "cli.add"]')
    assert code == 0  # a builtin is registered


def test_call_sends_any_name_from_an_app_without_tasks_of_its_own() -> None:
    code, out, err = invoke("call", "-A", "tests.apps.cli_apps:sender", "elsewhere.task")
    assert code == 0 and UUID.match(out.strip()), err


# -- --pidfile -----------------------------------------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_pidfile_rules(tmp_path: Path) -> None:
    path = tmp_path / "w.pid"
    acquire(path)
    assert path.read_text() == f"{os.getpid()}\n"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left beside it
    release(path)
    assert not path.exists()

    path.write_text(f"{os.getppid()}\n")  # a live process: refused, file untouched
    with pytest.raises(PidfileTaken, match=f"names process {os.getppid()}, which is running"):
        acquire(path)
    assert read_pid(path) == os.getppid()
    release(path)  # not ours: kept
    assert path.exists()

    for stale in (f"{dead_pid()}\n", "", "garbage\n", f"{os.getpid()}\n"):
        path.write_text(stale)
        acquire(path)
        assert read_pid(path) == os.getpid(), stale
        release(path)


def test_hold_pidfile_exits_with_1_when_taken_and_2_when_unwritable(tmp_path: Path) -> None:
    import typer

    taken = tmp_path / "taken.pid"
    taken.write_text(f"{os.getppid()}\n")
    with pytest.raises(typer.Exit) as exited, hold_pidfile(taken):
        pass
    assert exited.value.exit_code == 1
    with pytest.raises(typer.Exit) as exited, hold_pidfile(tmp_path / "no" / "dir.pid"):
        pass
    assert exited.value.exit_code == 2
    with hold_pidfile(tmp_path / "ok.pid"):
        assert read_pid(tmp_path / "ok.pid") == os.getpid()
    assert not (tmp_path / "ok.pid").exists()


def read_text(path: Path) -> str:
    """``path``'s text; empty while it does not exist."""
    return path.read_text() if path.exists() else ""


async def wait_for_file(path: Path, text: str, timeout: float = 20) -> str:
    """Wait until ``path`` exists and contains ``text``; return its content."""
    async with asyncio.timeout(timeout):
        while True:
            content = read_text(path)
            if text in content:
                return content
            await asyncio.sleep(0.05)


async def start(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aqueue",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["worker", "beat", "worker --processes 2"])
async def test_logfile_and_pidfile(command: str, tmp_path: Path) -> None:
    env = {"AQUEUE_BROKER_URL": f"sqlite:///{tmp_path}/cli.db"}
    log, pid = tmp_path / "run.log", tmp_path / "run.pid"
    args = ["-A", SUBPROCESS_APP, *command.split(), "--logfile", str(log), "--pidfile", str(pid)]
    stale = dead_pid()
    pid.write_text(f"{stale}\n")
    first = await start(*args, env=env)
    ready = {"worker": " ready: consuming ", "beat": "beat started"}.get(
        command, "supervisor ready"
    )
    content = await wait_for_file(log, ready)
    assert f"removing stale pidfile {pid} (process {stale} is not running)" in content
    assert read_pid(pid) == first.pid

    second = await start(*args, env=env)  # same pidfile: refused at once
    _, err = await asyncio.wait_for(second.communicate(), 20)
    assert second.returncode == 1
    assert f"pidfile {pid} names process {first.pid}, which is running" in err.decode()
    assert read_pid(pid) == first.pid

    first.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(first.communicate(), 30)
    assert first.returncode == 0, err.decode()
    assert not pid.exists()  # removed at exit
    assert err.decode() == ""  # the log went to the file
    content = log.read_text()
    if "--processes" in command:  # the children's lines reach the file through the supervisor
        assert content.count(" ready: consuming ") == 2
        assert "all worker processes stopped" in content
    else:
        assert "stopped" in content


# -- the ready line ------------------------------------------------------------------------------


def test_redacted_url() -> None:
    assert redacted_url("redis://:s3cret@host:6379/0") == "redis://:**@host:6379/0"
    assert redacted_url("rediss://user:p@ss@host/1?ssl_cert_reqs=none") == "rediss://user:**@host/1"
    assert redacted_url("amqp://guest:guest@rabbit:5672//") == "amqp://guest:**@rabbit:5672//"
    assert redacted_url("amqp://guest@rabbit//") == "amqp://guest@rabbit//"
    assert redacted_url("sqlite:///aqueue.db") == "sqlite:///aqueue.db"
    assert redacted_url("sqlite:////abs/path.db") == "sqlite:////abs/path.db"
    assert redacted_url("memory://") == "memory://"


@pytest.fixture
def redis_user(redis_server: str) -> Iterator[tuple[str, str]]:
    """A Redis ACL user with a password on the session's server: (URL, password)."""
    user, password = f"cli-{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    client = redis.Redis.from_url(redis_server)
    client.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"],
                       channels=["*"], commands=["+@all"])  # fmt: skip
    try:
        yield redis_server.replace("redis://", f"redis://{user}:{password}@") + "/0", password
    finally:
        client.acl_deluser(user)
        client.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_ready_line_names_servers_queues_concurrency_and_tasks(
    redis_user: tuple[str, str], tmp_path: Path
) -> None:
    backend, password = redis_user
    env = {"AQUEUE_BROKER_URL": f"sqlite:///{tmp_path}/cli.db", "AQUEUE_RESULT_BACKEND": backend}
    async with WorkerProcess(SUBPROCESS_APP, ["-Q", "q1,q2", "-c", "3"], env) as worker:
        line = await worker.wait_for(" ready: ")
        worker.signal(signal.SIGTERM)
        assert await worker.wait() == 0
    assert "consuming q1,q2 with concurrency 3 (prefetch 12)" in line
    assert f"broker sqlite:///{tmp_path}/cli.db" in line
    assert "results " + redacted_url(backend) in line and ":**@127.0.0.1:" in line
    assert line.endswith("2 task(s) registered")  # cli.add, cli.mul; not the builtins
    assert not any(password in seen for seen in worker.lines)
