"""The embedded default database does not depend on each process's working directory.

With no broker URL anywhere, ``aqueue.db`` sits beside the module that made the app, so a worker
started in the project's directory and a client started one directory down use one file (before,
the client made a second, empty database and waited forever). An explicit
``sqlite:///relative.db`` stays relative to the working directory, as documented.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from aqueue import Aqueue
from aqueue.config import DEFAULT_URL
from aqueue.transports.sqlite.connection import sqlite_path
from tests.workerproc import WorkerProcess

TASKS = """
from aqueue import Aqueue

app = Aqueue("two-dirs")


@app.task(name="two_dirs.add")
async def add(x: int, y: int) -> int:
    return x + y
"""

CLIENT = """
import asyncio

from two_dirs_tasks import add, app


async def main() -> None:
    r = await add.delay(2, 2)
    print("result", await r.get(timeout=20))
    await app.close()


asyncio.run(main())
"""


@pytest.fixture
def no_url_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``$AQUEUE_BROKER_URL`` / ``$AQUEUE_RESULT_BACKEND``: the embedded default applies."""
    monkeypatch.delenv("AQUEUE_BROKER_URL", raising=False)
    monkeypatch.delenv("AQUEUE_RESULT_BACKEND", raising=False)


def load(path: Path, name: str) -> ModuleType:
    """Import the module at ``path`` as ``name`` (not kept in ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(90)
@pytest.mark.usefixtures("no_url_in_env")
async def test_a_client_one_directory_down_reaches_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    below = project / "scripts"
    below.mkdir(parents=True)
    (project / "two_dirs_tasks.py").write_text(TASKS)
    (below / "client.py").write_text(CLIENT)
    monkeypatch.chdir(project)  # the worker starts in the project's directory
    async with WorkerProcess("two_dirs_tasks"):
        client = await asyncio.create_subprocess_exec(
            sys.executable,
            "client.py",
            cwd=below,  # ... the client one directory down
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(project), *sys.path])},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(client.communicate(), 60)
    assert client.returncode == 0, err.decode()
    assert out.decode().split() == ["result", "4"]
    assert (project / "aqueue.db").exists()
    assert not (below / "aqueue.db").exists()


@pytest.mark.usefixtures("no_url_in_env")
def test_the_default_is_beside_the_module_that_makes_the_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "made_here.py").write_text("from aqueue import Aqueue\napp = Aqueue('x')\n")
    (tmp_path / "factory.py").write_text(
        textwrap.dedent(
            """
            from aqueue import Aqueue

            class ProjectApp(Aqueue):
                def __init__(self) -> None:
                    super().__init__("sub")

            def make() -> Aqueue:
                return Aqueue("made")
            """
        )
    )
    for cwd in (tmp_path, tmp_path / "pkg"):  # whatever the working directory
        monkeypatch.chdir(cwd)
        app = load(tmp_path / "pkg" / "made_here.py", "made_here").app
        assert app.conf.resolved_broker_url() == f"sqlite:///{tmp_path}/pkg/aqueue.db"
    factory = load(tmp_path / "factory.py", "factory")
    expected = f"sqlite:///{tmp_path}/aqueue.db"
    assert factory.ProjectApp().conf.resolved_broker_url() == expected  # a subclass's module
    assert factory.make().conf.resolved_backend_url() == expected  # a factory's module


@pytest.mark.usefixtures("no_url_in_env")
def test_an_app_made_where_there_is_no_file_uses_the_working_directory() -> None:
    scope: dict[str, object] = {"Aqueue": Aqueue}
    exec("app = Aqueue('repl')", scope)  # as in a REPL or python -c: no __file__
    app = scope["app"]
    assert isinstance(app, Aqueue)
    assert app.conf.resolved_broker_url() == DEFAULT_URL == "sqlite:///aqueue.db"


def test_urls_given_are_kept_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AQUEUE_BROKER_URL", "sqlite:///from-env.db")
    assert Aqueue("env").conf.resolved_broker_url() == "sqlite:///from-env.db"
    explicit = Aqueue("explicit", broker="sqlite:///relative.db")
    assert explicit.conf.resolved_broker_url() == "sqlite:///relative.db"


def test_an_explicit_relative_path_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    first = sqlite_path("sqlite:///relative.db")
    monkeypatch.chdir(tmp_path / "b")
    second = sqlite_path("sqlite:///relative.db")
    assert (first, second) == (
        str(tmp_path / "a" / "relative.db"),
        str(tmp_path / "b" / "relative.db"),
    )
