"""aqueue against taskiq, arq, saq, streaq, dramatiq and Celery, on one machine in one run.

Run from the repository root (``make bench-peers``)::

    python benchmarks/peers/bench.py                     # 3 rounds, 20,000 tasks: ~40 min
    python benchmarks/peers/bench.py --quick             # a smoke run: small n, 1 round
    python benchmarks/peers/bench.py --only aqueue,saq --rounds 5
    python benchmarks/peers/bench.py --amqp              # also on RabbitMQ: aqueue, taskiq,
                                                         # dramatiq and Celery with results in
                                                         # Redis, then aqueue and Celery on rpc://

It creates each peer's virtualenv under ``benchmarks/peers/.venvs/<peer>`` from
``requirements/<peer>.txt`` when missing or out of date, starts a throwaway ``redis-server`` on a
free port (no persistence), and runs every system in turn, round after round, with a FLUSHALL
before each run. Each system's runner (``run_<system>.py``, in its own virtualenv; aqueue's in
this Python) starts that system's worker, runs the four workloads and prints JSON lines. The
table shows the median over rounds. Every workload has a timeout; a system that fails or hangs
gets ``error``/``timeout`` cells and the run goes on. Nothing is left running, even on Ctrl-C.

Standard library only (the orchestrator must run before any virtualenv exists).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import venv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
VENVS = HERE / ".venvs"
SYSTEMS = ("aqueue", "taskiq", "arq", "saq", "streaq", "dramatiq", "celery")
PEERS = SYSTEMS[1:]
#: The AMQP tables: every system with a RabbitMQ broker, results in Redis; then, over rpc://,
#: those that have an rpc:// result backend.
AMQP_SYSTEMS = ("aqueue", "taskiq", "dramatiq", "celery")
RPC_SYSTEMS = ("aqueue", "celery")
#: The result backend of the second AMQP table: results sent back as messages on RabbitMQ.
RPC_BACKEND = "rpc://"
WORKLOADS = ("prefilled", "noop", "bulk", "sleep", "latency")
MARKER = "BENCH_PEERS_RUN"  # set in every child's environment, to find leftovers by pid

sys.path.insert(0, str(HERE))
from _common import Redis  # noqa: E402  (stdlib only, beside this file)

# -- columns -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    title: str
    workload: str
    key: str
    higher_is_better: bool


COLUMNS = (
    Column("enqueue/s", "noop", "enqueue_per_s", True),
    Column("bulk enqueue/s", "bulk", "enqueue_per_s", True),
    Column("no-op drain/s", "noop", "drain_per_s", True),
    Column("pre-filled drain/s", "prefilled", "drain_per_s", True),
    Column("sleep(10 ms) drain/s", "sleep", "drain_per_s", True),
    Column("p50 ms", "latency", "p50_ms", False),
    Column("p99 ms", "latency", "p99_ms", False),
    Column("Redis cmds/task", "noop", "cmds_per_task", False),
)
# The issues' targets for aqueue: column title -> (kind, bound).
TARGETS = {
    "enqueue/s": ("ratio", 3.0),
    "bulk enqueue/s": ("ratio", 3.0),
    "no-op drain/s": ("ratio", 3.0),
    "pre-filled drain/s": ("ratio", 3.0),
    "sleep(10 ms) drain/s": ("ratio", 1.0),
    "p99 ms": ("ratio", 1.0),
    "Redis cmds/task": ("value", 3.0),
}
TARGETS_TITLE = "issues #5 and #20 targets for aqueue:"
AMQP_TARGETS = {
    "enqueue/s": ("ratio", 3.0),
    "no-op drain/s": ("ratio", 3.0),
    "pre-filled drain/s": ("ratio", 3.0),
    "p99 ms": ("ratio", 1.0),
}
AMQP_TARGETS_TITLE = "issue #20 AMQP targets for aqueue:"


# -- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_group(proc: subprocess.Popen[Any], grace: float = 20.0) -> None:
    """SIGTERM ``proc``'s process group, then SIGKILL what is left after ``grace`` seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def sweep(token: str) -> list[int]:
    """SIGKILL every process whose environment carries our run's marker; return their pids."""
    needle = f"{MARKER}={token}".encode()
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    return killed


def redis_call(url: str, *args: str) -> Any:
    async def go() -> Any:
        client = Redis.from_url(url)
        try:
            return await client.command(*args)
        finally:
            await client.close()

    return asyncio.run(go())


class Services:
    """The throwaway servers of the run: redis-server, and RabbitMQ with ``--amqp``."""

    def __init__(self, workdir: Path, token: str) -> None:
        self.workdir = workdir
        self.token = token
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def _env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env[MARKER] = self.token  # not the runners' token: sweeping after a runner spares us
        env.update(extra or {})
        return env

    def start_redis(self) -> str:
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        port = free_port()
        log = (self.workdir / "redis.log").open("wb")
        proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self._env(),
            start_new_session=True,
        )
        log.close()
        self.procs.append(("redis-server", proc))
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 30
        while True:
            try:
                redis_call(url, "PING")
                return url
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start: see " + str(log.name)) from None
                time.sleep(0.05)

    def start_rabbitmq(self) -> str:
        """A RabbitMQ node of our own (own ports, own epmd, own data dir); its amqp:// URL.

        The server script refuses to run as root: as root, it runs as the ``rabbitmq`` user,
        which then owns the node's directory.
        """
        exe = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")  # foreground, unlike /usr/sbin's
        if not exe.exists():
            exe = Path(shutil.which("rabbitmq-server") or "/nonexistent")
        user = "rabbitmq" if os.geteuid() == 0 else None
        base = self.workdir / "rabbitmq"
        base.mkdir()
        port, dist, epmd = free_port(), free_port(), free_port()
        (base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{port}\n"
            "log.console = false\nlog.file.level = warning\n"
        )
        (base / "enabled_plugins").write_text("[].\n")
        if user is not None:
            self.workdir.chmod(0o755)
            for path in [base, *base.iterdir()]:
                shutil.chown(path, user, user)
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": str(base),  # the Erlang cookie goes here
            MARKER: self.token,
            "ERL_EPMD_PORT": str(epmd),  # an epmd of our own, swept at the end with the node
            "RABBITMQ_NODENAME": f"aqueue-bench-{port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(port),
            "RABBITMQ_DIST_PORT": str(dist),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(base / "feature_flags"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
        }
        with (self.workdir / "rabbitmq.out").open("wb") as log:
            proc = subprocess.Popen(
                [str(exe)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=base,
                user=user,
                group=user,
                start_new_session=True,
            )
        self.procs.append(("rabbitmq-server", proc))
        deadline = time.monotonic() + 90
        while not _amqp_answers(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"RabbitMQ did not start: see {self.workdir / 'rabbitmq.out'}")
            time.sleep(0.2)
        return f"amqp://guest:guest@127.0.0.1:{port}//"

    def stop(self) -> None:
        for _name, proc in reversed(self.procs):
            stop_group(proc, grace=15.0)
        self.procs.clear()
        sweep(self.token)  # epmd and anything else a server left behind


def _amqp_answers(port: int) -> bool:
    """True when the port speaks AMQP 0-9-1 (the server answers the protocol header)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"AMQP\x00\x00\x09\x01")
            return s.recv(1)[:1] == b"\x01"  # a method frame: Connection.Start
    except OSError:
        return False


# -- virtualenvs -------------------------------------------------------------------------------


def python_of(system: str) -> Path:
    if system == "aqueue":
        return Path(sys.executable)
    return VENVS / system / "bin" / "python"


def ensure_venv(system: str) -> None:
    """Create or refresh ``.venvs/<system>`` when its requirements file changed."""
    if system == "aqueue":
        return
    req = HERE / "requirements" / f"{system}.txt"
    digest = hashlib.sha256(req.read_bytes()).hexdigest()
    home = VENVS / system
    stamp = home / ".requirements.sha256"
    if python_of(system).exists() and stamp.exists() and stamp.read_text() == digest:
        return
    print(
        f"setting up {home.relative_to(REPO_ROOT)} from {req.relative_to(REPO_ROOT)} ...",
        file=sys.stderr,
        flush=True,
    )
    if not python_of(system).exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(home)
    subprocess.run(
        [
            str(python_of(system)),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-r",
            str(req),
        ],
        check=True,
    )
    stamp.write_text(digest)


# -- one run of one system ---------------------------------------------------------------------


@dataclass
class Run:
    system: str
    round: int
    meta: dict[str, Any] = field(default_factory=dict)
    workloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    failure: str | None = None  # why the runner itself did not finish


def run_system(
    system: str,
    rnd: int,
    args: argparse.Namespace,
    broker: str,
    backend: str,
    stats_url: str | None,
    token: str,
    logdir: Path,
) -> Run:
    run = Run(system, rnd)
    cmd = [
        str(python_of(system)),
        str(HERE / f"run_{system}.py"),
        "--broker",
        broker,
        "--backend",
        backend,
        "--n",
        str(args.n),
        "--sleep-n",
        str(args.sleep_n),
        "--latency-n",
        str(args.latency_n),
        "--rate",
        str(args.rate),
        "--concurrency",
        str(args.concurrency),
        "--timeout",
        str(args.timeout),
        "--log-dir",
        str(logdir),
        "--workloads",
        ",".join(args.workloads),
    ]
    if stats_url:
        cmd += ["--stats-url", stats_url]
    env = dict(os.environ)
    env[MARKER] = token
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), str(REPO_ROOT)]))
    env.pop("VIRTUAL_ENV", None)
    # Generous: every workload may use its timeout, plus worker starts and stops.
    budget = args.timeout * (len(args.workloads) + 1) + args.latency_n / args.rate + 120
    errlog = logdir / f"runner-{system}-{rnd}.log"
    with errlog.open("wb") as err:
        proc = subprocess.Popen(
            cmd,
            cwd=HERE,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + budget
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        buf = b""
        while True:
            chunk = None
            with contextlib.suppress(BlockingIOError):
                chunk = proc.stdout.read()
            if chunk:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    _take(run, line)
            elif chunk == b"" and proc.poll() is not None:
                break
            if time.monotonic() > deadline:
                run.failure = "timeout"
                break
            time.sleep(0.05)
        _take(run, buf)
    finally:
        stop_group(proc)
        sweep(token)
    if run.failure is None and proc.returncode not in (0, None):
        run.failure = "error"
    if run.failure or any("error" in w for w in run.workloads.values()):
        tail = errlog.read_text(errors="replace").strip().splitlines()[-3:]
        print(
            f"  {system}: {run.failure or 'a workload failed'}; see {errlog}"
            + ("".join(f"\n    {t}" for t in tail)),
            file=sys.stderr,
        )
    return run


def _take(run: Run, line: bytes) -> None:
    line = line.strip()
    if not line.startswith(b"{"):
        return
    with contextlib.suppress(ValueError):
        data = json.loads(line)
        if "workload" in data:
            run.workloads[data.pop("workload")] = data
        elif "system" in data:
            run.meta = data


# -- the table ---------------------------------------------------------------------------------


def median_cell(runs: list[Run], col: Column) -> float | str:
    """The median over rounds, or why there is none (``timeout`` / ``error`` / ``-``)."""
    values, errors = [], []
    for run in runs:
        w = run.workloads.get(col.workload)
        if w is not None and col.key in w:
            values.append(float(w[col.key]))
        elif w is not None and "error" in w:
            errors.append("timeout" if w["error"] == "timeout" else "error")
        elif run.failure:
            errors.append(run.failure)
    if values:
        return statistics.median(values)
    if errors:
        return "timeout" if "timeout" in errors else "error"
    return "-"


def fmt(value: float | str, col: Column) -> str:
    if isinstance(value, str):
        return value
    if col.key == "cmds_per_task":
        return f"{value:.1f}"
    if col.workload == "latency":
        return f"{value:.1f}" if value < 100 else f"{value:,.0f}"
    return f"{value:,.0f}"


def render(
    title: str,
    systems: Sequence[str],
    runs: dict[str, list[Run]],
    columns: Sequence[Column],
    targets: tuple[str, dict[str, tuple[str, float]]] = (TARGETS_TITLE, TARGETS),
) -> list[str]:
    """The table of ``systems``' medians, aqueue's ratio row, and how aqueue meets ``targets``."""
    cells = {s: {c.title: median_cell(runs[s], c) for c in columns} for s in systems}
    head = ["system"] + [c.title for c in columns]
    rows = [[_label(s, runs[s])] + [fmt(cells[s][c.title], c) for c in columns] for s in systems]
    best: dict[str, tuple[str, float]] = {}
    compared = "aqueue" in systems and len(systems) > 1  # a ratio row needs a peer
    if compared:
        for c in columns:
            peers = [
                (s, v)
                for s in systems
                if s != "aqueue" and isinstance(v := cells[s][c.title], float)
            ]
            if peers:
                pick = max if c.higher_is_better else min
                best[c.title] = pick(peers, key=lambda sv: sv[1])
        ratio_row = ["aqueue vs best peer"]
        for c in columns:
            mine = cells["aqueue"][c.title]
            if c.title in best and isinstance(mine, float) and mine > 0:
                name, theirs = best[c.title]
                r = mine / theirs if c.higher_is_better else theirs / mine
                ratio_row.append(f"{r:.2f}x {name}")
            else:
                ratio_row.append("-")
        rows.append(ratio_row)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"
    rule = (
        "|"
        + "|".join("-" * (w + 1) + ":" if i else "-" * (w + 2) for i, w in enumerate(widths))
        + "|"
    )
    out = [title, "", line, rule]
    for row in rows:
        out.append(
            "| "
            + " | ".join(
                (v.ljust(w) if i == 0 else v.rjust(w))
                for i, (v, w) in enumerate(zip(row, widths, strict=True))
            )
            + " |"
        )
    if compared:
        out.append("")
        out.append(
            "(x: how many times better aqueue is than the best peer in that column; "
            "for latency and commands, best / aqueue)"
        )
    if "aqueue" in systems:
        out += _targets(cells["aqueue"], best, columns, *targets)
    return out


def _label(system: str, runs: list[Run]) -> str:
    ok = sum(
        1 for r in runs if not r.failure and all("error" not in w for w in r.workloads.values())
    )
    return system if ok == len(runs) else f"{system} ({len(runs) - ok}/{len(runs)} failed)"


def _targets(
    mine: dict[str, float | str],
    best: dict[str, tuple[str, float]],
    columns: Sequence[Column],
    title: str,
    targets: dict[str, tuple[str, float]],
) -> list[str]:
    out = ["", title]
    for c in columns:
        if c.title not in targets:
            continue
        kind, bound = targets[c.title]
        value = mine[c.title]
        if not isinstance(value, float):
            out.append(f"  {c.title:<22} no figure ({value})")
            continue
        if kind == "value":
            ok = value <= bound
            out.append(
                f"  {c.title:<22} <= {bound:g}: {value:.1f} "
                f"{'MET' if ok else f'MISSED by {value - bound:.1f} ({value / bound:.1f}x)'}"
            )
            continue
        if c.title not in best:
            out.append(f"  {c.title:<22} no peer figure to compare")
            continue
        name, theirs = best[c.title]
        r = value / theirs if c.higher_is_better else theirs / value
        goal = f">= {bound:g}x best peer" if c.higher_is_better else "<= best peer"
        verdict = "MET" if r >= bound else f"MISSED: {r:.2f}x, needs {bound / r:.2f}x more"
        out.append(
            f"  {c.title:<22} {goal} ({name} {fmt(theirs, c)}): {fmt(value, c)} -> {verdict}"
        )
    return out


# -- the run -----------------------------------------------------------------------------------


def machine(redis_url: str | None) -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    parts = [cpu, f"{os.cpu_count()} cores", f"Python {platform.python_version()}"]
    if redis_url:
        info = redis_call(redis_url, "INFO", "server")
        version = next(
            (ln.split(":", 1)[1] for ln in info.splitlines() if ln.startswith("redis_version:")),
            "?",
        )
        parts.append(f"redis-server {version.strip()}")
    load = os.getloadavg()
    parts.append(f"load average {load[0]:.2f} at start")
    return ", ".join(parts)


def _backend_name(url: str) -> str:
    return "rpc://" if url == RPC_BACKEND else "in Redis"


def amqp_unavailable() -> str | None:
    """Why the AMQP part cannot run here, or ``None``."""
    if not (
        Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists() or shutil.which("rabbitmq-server")
    ):
        return "rabbitmq-server is not installed (apt-get install rabbitmq-server)"
    probe = subprocess.run(
        [sys.executable, "-c", "import aqueue.transports.amqp.broker"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    if probe.returncode != 0:
        return "aqueue's AMQP broker (aqueue/transports/amqp/) is not importable yet"
    return None


def _rabbitmq_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        if out:
            return out
    return "(version unknown)"


def rounds(systems: Sequence[str], n: int) -> Iterator[tuple[int, str]]:
    """Round after round, each round starting one system later, so none always goes first."""
    for r in range(n):
        k = r % len(systems)
        for s in [*systems[k:], *systems[:k]]:
            yield r + 1, s


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python benchmarks/peers/bench.py",
        description="aqueue vs taskiq, arq, saq, streaq, dramatiq and Celery on one machine.",
    )
    p.add_argument("--rounds", type=int, default=3, help="repeats of every system (default 3)")
    p.add_argument(
        "--only",
        default=",".join(SYSTEMS),
        help=f"comma-separated systems (default: all of {','.join(SYSTEMS)})",
    )
    p.add_argument("--n", type=int, default=20_000, help="no-op tasks (default 20000)")
    p.add_argument("--sleep-n", type=int, default=5_000, help="sleep tasks (default 5000)")
    p.add_argument(
        "--latency-n", type=int, default=2_000, help="tasks of the latency workload (default 2000)"
    )
    p.add_argument("--rate", type=float, default=200.0, help="latency send rate/s (default 200)")
    p.add_argument("--concurrency", type=int, default=100, help="worker concurrency (100)")
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds per workload before it counts as a timeout (default: 60 + n/50)",
    )
    p.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated subset of {','.join(WORKLOADS)}",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: n 2000, sleep-n 500, latency-n 200, 1 round",
    )
    p.add_argument(
        "--amqp",
        action="store_true",
        help="also RabbitMQ as the broker: aqueue, taskiq, dramatiq and Celery with results in "
        "Redis, then aqueue and Celery with rpc:// results",
    )
    p.add_argument(
        "--celery-confirm",
        action="store_true",
        help="Celery on RabbitMQ with publisher confirms (confirm_publish=True), as aqueue's "
        "delay() has them; Celery's default publishes without",
    )
    p.add_argument(
        "--aqueue-no-priorities",
        action="store_true",
        help="aqueue on RabbitMQ with classic queues declared without priorities "
        "(broker_transport_options={'priorities': False}), as the peers declare theirs; "
        "aqueue's default declares them with x-max-priority 9",
    )
    p.add_argument("--json", metavar="PATH", help="also write every run's figures to PATH")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.sleep_n, args.latency_n, args.rounds = 2_000, 500, 200, 1
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.only) - set(SYSTEMS))
    if unknown:
        p.error(f"--only: unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if set(args.workloads) - set(WORKLOADS):
        p.error(f"--workloads: choose from {', '.join(WORKLOADS)}")
    if min(args.rounds, args.n, args.sleep_n, args.latency_n, args.concurrency) < 1:
        p.error("--rounds, --n, --sleep-n, --latency-n and --concurrency must be at least 1")
    if args.timeout is None:
        args.timeout = 60 + args.n / 50
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.celery_confirm:  # read by tasks_celery.py in the runner and the worker
        os.environ["BENCH_CELERY_CONFIRM"] = "1"
    if args.aqueue_no_priorities:  # read by tasks_aqueue.py in the runner and the worker
        os.environ["BENCH_AQUEUE_NO_PRIORITIES"] = "1"
    systems = [s for s in SYSTEMS if s in args.only]
    token = uuid.uuid4().hex
    logdir = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    services = Services(logdir, f"{token}-services")
    # Ctrl-C and SIGTERM (e.g. from `timeout`) unwind through the `finally` below; SIGINT too
    # when started in the background, where the shell set it to be ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    results: dict[str, dict[str, list[Run]]] = {}
    try:
        for s in systems:
            ensure_venv(s)
        redis_url = services.start_redis()
        about = machine(redis_url)
        print(f"machine: {about}", flush=True)
        print(f"logs: {logdir}", flush=True)
        print(
            f"{args.rounds} round(s) of {', '.join(systems)}: {args.n:,} no-op tasks, "
            f"{args.sleep_n:,} sleep tasks, {args.latency_n:,} at {args.rate:g}/s; "
            f"concurrency {args.concurrency}",
            flush=True,
        )
        results["redis"] = {s: [] for s in systems}
        for rnd, system in rounds(systems, args.rounds):
            redis_call(redis_url, "FLUSHALL")
            t0 = time.monotonic()
            run = run_system(system, rnd, args, redis_url, redis_url, redis_url, token, logdir)
            results["redis"][system].append(run)
            print(f"  round {rnd}: {system} done in {time.monotonic() - t0:.0f}s", flush=True)
        print()
        print(
            "\n".join(
                render(
                    f"Redis broker and result backend, median of {args.rounds} round(s) "
                    f"({args.n:,} no-op tasks; concurrency {args.concurrency}; "
                    "one worker process each)",
                    systems,
                    results["redis"],
                    COLUMNS,
                )
            )
        )
        _print_notes(systems, results["redis"])
        if args.amqp:
            _amqp(args, services, redis_url, token, logdir, results)
        print(f"\nmachine: {about}")
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=sys.stderr)
        return 130
    finally:
        services.stop()
        sweep(token)
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {
                        k: {s: [r.__dict__ for r in v] for s, v in d.items()}
                        for k, d in results.items()
                    },
                    indent=1,
                )
            )
    return 0


def _print_notes(systems: Sequence[str], runs: dict[str, list[Run]]) -> None:
    print("\nversions and setup:")
    for s in systems:
        meta = next((r.meta for r in runs[s] if r.meta), {})
        print(f"  {s:<9} {meta.get('version') or '?'}: {meta.get('notes') or ''}")


def _amqp(
    args: argparse.Namespace,
    services: Services,
    redis_url: str,
    token: str,
    logdir: Path,
    results: dict[str, dict[str, list[Run]]],
) -> None:
    systems = [s for s in AMQP_SYSTEMS if s in args.only]
    print()
    why = amqp_unavailable()
    if why and ("aqueue" in systems or "rabbitmq" in why):
        print(
            f"AMQP part skipped: {why}."
            + ("" if "rabbitmq" in why else " (--amqp --only <peers> measures the peers alone)")
        )
        return
    if not systems:
        print(f"AMQP part skipped: --only names none of {', '.join(AMQP_SYSTEMS)}.")
        return
    try:
        amqp_url = services.start_rabbitmq()
    except RuntimeError as exc:
        print(f"AMQP part skipped: {exc}")
        return
    print(
        f"AMQP: RabbitMQ {_rabbitmq_version()} at {amqp_url}; results in Redis, then rpc://",
        flush=True,
    )
    # Results in Redis, then over rpc:// (RabbitMQ alone) for the systems that have it: the same
    # rounds, in the same run.
    rpc_systems = [s for s in systems if s in RPC_SYSTEMS]
    tables = [("amqp", redis_url, systems), ("amqp_rpc", RPC_BACKEND, rpc_systems)]
    for key, backend, table_systems in tables:
        results[key] = {s: [] for s in table_systems}
        stats = redis_url if backend == redis_url else None  # rpc:// uses no Redis: no count
        for rnd, system in rounds(table_systems, args.rounds):
            redis_call(redis_url, "FLUSHALL")
            t0 = time.monotonic()
            # Queues left by the previous system stay on the node: each uses its own names.
            run = run_system(system, rnd, args, amqp_url, backend, stats, token, logdir)
            results[key][system].append(run)
            print(
                f"  round {rnd}: {system} on AMQP, results {_backend_name(backend)}, done in "
                f"{time.monotonic() - t0:.0f}s",
                flush=True,
            )
    plain = [c for c in COLUMNS if c.key != "cmds_per_task"]
    for key, title, columns, table_systems in (
        (
            "amqp",
            "RabbitMQ broker, Redis result backend",
            [*plain, Column("Redis cmds/task (results only)", "noop", "cmds_per_task", False)],
            systems,
        ),
        ("amqp_rpc", "RabbitMQ broker, rpc:// results (no Redis)", plain, rpc_systems),
    ):
        if not table_systems:
            continue
        print()
        title = f"{title}, median of {args.rounds} round(s)"
        targets = (AMQP_TARGETS_TITLE, AMQP_TARGETS)
        print("\n".join(render(title, table_systems, results[key], columns, targets)))
        _print_notes(table_systems, results[key])


if __name__ == "__main__":
    sys.exit(main())
