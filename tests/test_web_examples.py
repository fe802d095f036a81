"""The Flask, Django and FastAPI examples, each through its framework's test client, against a
real worker process (SQLite and Redis)."""

from __future__ import annotations

import importlib
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from aqueue import sync
from tests.syncworker import WorkerThreadless


@pytest.fixture(params=["sqlite", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        return f"{request.getfixturevalue('redis_server')}/0"
    return f"sqlite:///{tmp_path}/web.db"


@pytest.fixture
def queue_env(url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """``$AQUEUE_BROKER_URL`` and a fresh queue, for this process and the worker's."""
    env = {"AQUEUE_BROKER_URL": url, "AQUEUE_QUEUE": f"q-{uuid.uuid4().hex[:12]}"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield env
    sync.shutdown()


def fresh_import(name: str) -> ModuleType:
    """``name`` imported anew, so that it reads this test's environment."""
    sys.modules.pop(name, None)
    return importlib.import_module(name)


def test_flask_example(queue_env: dict[str, str]) -> None:
    pytest.importorskip("flask")
    # The example has no queue setting of its own: the worker consumes the default queue of a
    # broker URL fresh to this test.
    queue_env.pop("AQUEUE_QUEUE")
    example = fresh_import("examples.seeds.flask_app")
    worker = WorkerThreadless("examples.seeds.flask_app", queue_env)
    try:
        client = example.app.test_client()
        posted = client.post("/hello")
        assert posted.status_code == 200
        task_id = posted.get_json()["task_id"]
        got = client.get(f"/result/{task_id}").get_json()
        assert got == {"ready": True, "state": "SUCCESS", "result": "hello_world"}
    finally:
        sync.shutdown()
        worker.stop()


def test_django_example(queue_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("django")
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "examples.django_app.proj.settings")
    import django
    from django.conf import settings
    from django.test import Client

    django.setup()
    # Settings load once per process: point the project's aqueue section at this test's broker.
    settings.AQUEUE = {"broker_url": queue_env["AQUEUE_BROKER_URL"]}
    settings.AQUEUE["task_default_queue"] = queue_env["AQUEUE_QUEUE"]
    for module in ("proj.aqueue_app", "shop.tasks", "shop.views", "proj.urls"):
        fresh_import(f"examples.django_app.{module}")  # each binds the new app
    from django.urls import clear_url_caches

    clear_url_caches()
    worker = WorkerThreadless("examples.django_app.proj.aqueue_app", queue_env)
    try:
        client = Client()
        posted = client.get("/orders/total/", {"price": ["1.10", "2.20", "0.05"]})
        assert posted.status_code == 202, posted.content
        task_id = posted.json()["task_id"]
        got = client.get(f"/results/{task_id}/")
        assert got.status_code == 200, got.content
        body = got.json()
        assert body["state"] == "SUCCESS"
        assert body["total"] == "3.35"  # a Decimal sum, not a float's 3.3500000000000005
        assert body["placed"].endswith("+00:00") and body["weekday"]
    finally:
        sync.shutdown()
        worker.stop()


async def test_fastapi_example(queue_env: dict[str, str]) -> None:
    pytest.importorskip("fastapi")
    import httpx

    example = fresh_import("examples.fastapi_app.main")
    worker = WorkerThreadless("examples.fastapi_app.main", queue_env)
    try:
        transport = httpx.ASGITransport(app=example.api)
        # httpx's ASGI transport does not run the lifespan: enter it as the server would.
        async with (
            example.api.router.lifespan_context(example.api),
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        ):
            posted = await client.post("/add", params={"x": 2, "y": 3})
            assert posted.status_code == 202
            got = await client.get(f"/results/{posted.json()['task_id']}")
            assert got.json() == {"state": "SUCCESS", "result": 5}
            posted = await client.post("/remind", params={"minutes": 90})
            got = await client.get(f"/results/{posted.json()['task_id']}")
            assert got.json()["state"] == "SUCCESS"
            assert "T" in got.json()["result"]  # a datetime, rendered by FastAPI
        # The lifespan's `async with tasks_app:` closed the connections of this loop.
        assert not example.tasks_app._connections
    finally:
        worker.stop()


def test_examples_do_not_leave_django_settings_module_set() -> None:
    assert os.environ.get("DJANGO_SETTINGS_MODULE") in (None, "examples.django_app.proj.settings")
