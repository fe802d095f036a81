"""Settings that must be refused (or made sound) when set, not fail later in a send or a worker."""

from __future__ import annotations

import asyncio
import math
import uuid
from pathlib import Path
from typing import Any

import pytest

from aqueue import Aqueue
from aqueue.config import Settings
from aqueue.exceptions import ConfigurationError

pytestmark = pytest.mark.timeout(60)

SECONDS = [
    "result_expires",
    "task_time_limit",
    "task_soft_time_limit",
    "task_soft_deadline",
    "task_default_retry_delay",
    "worker_shutdown_timeout",
    "broker_connection_timeout",
    "redis_socket_timeout",
    "redis_socket_connect_timeout",
]


@pytest.mark.parametrize("value", [None, 5, [["json"]], [1], "json"])
def test_accept_content_of_the_wrong_type_is_a_configuration_error(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="accept_content must be a list"):
        Settings(accept_content=value)
    with pytest.raises(ConfigurationError, match="accept_content must be a list"):
        Settings().update(accept_content=value)


@pytest.mark.parametrize("name", SECONDS)
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_duration_that_is_not_finite_is_refused(name: str, value: float) -> None:
    # NaN passes "< 0" checks; inf reaches Redis as int(inf * 1000) (OverflowError), a retry's
    # eta as JSON null. Neither means anything as seconds: None is "no limit" where allowed.
    with pytest.raises(ConfigurationError, match=name):
        Settings(**{name: value})


@pytest.mark.parametrize("name", ["task_routes", "task_annotations"])
@pytest.mark.parametrize("entry", [1, "proj.add", None])
def test_a_route_list_entry_that_is_not_a_dict_or_function_is_refused(
    name: str, entry: Any
) -> None:
    with pytest.raises(ConfigurationError, match=name):
        Settings(**{name: [{"proj.*": {"queue": "q"}}, entry]})
    Settings(**{name: [{"proj.*": {"queue": "q"}}, lambda *a: None]})  # both kinds are fine


@pytest.mark.parametrize(
    "name", ["beat_schedule", "broker_transport_options", "result_backend_transport_options"]
)
def test_a_mapping_setting_set_to_none_reads_as_empty(name: str) -> None:
    app = Aqueue("proj", broker="memory://", **{name: None})
    assert app.conf[name] == {}


def test_none_transport_options_still_let_a_sentinel_url_be_configured() -> None:
    url = "redis+sentinel://127.0.0.1:1/mymaster/0"
    app = Aqueue("proj", broker=url, broker_transport_options=None)
    assert app.conf.connection_options(url).sentinel == {}


def test_add_periodic_task_works_after_beat_schedule_none() -> None:
    app = Aqueue("proj", broker="memory://", beat_schedule=None)

    @app.task(name="proj.tick")
    def tick() -> None:
        return None

    app.add_periodic_task(10.0, tick.s(), name="tick")
    assert "tick" in app.conf.beat_schedule


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("AQUEUE_BROKER_URL", "localhost:6379", "AQUEUE_BROKER_URL must be a URL"),
        ("AQUEUE_BROKER_URL", "kafka://x", r"\$AQUEUE_BROKER_URL 'kafka://x': scheme 'kafka'"),
        ("AQUEUE_RESULT_BACKEND", "amqp://guest@127.0.0.1:1//", "AQUEUE_RESULT_BACKEND"),
    ],
)
def test_a_bad_url_in_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.delenv("AQUEUE_BROKER_URL", raising=False)
    monkeypatch.delenv("AQUEUE_RESULT_BACKEND", raising=False)
    monkeypatch.setenv(variable, value)
    broker = None if variable == "AQUEUE_BROKER_URL" else "memory://"
    app = Aqueue("proj", broker=broker)

    async def use() -> None:
        try:
            if variable == "AQUEUE_BROKER_URL":
                await app.broker()
            else:
                await app.result_backend()
        finally:
            await app.close()

    with pytest.raises(ConfigurationError, match=message):
        asyncio.run(asyncio.wait_for(use(), 10))


def test_a_setting_overrides_a_bad_environment_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AQUEUE_BROKER_URL", "not a url")
    monkeypatch.setenv("AQUEUE_RESULT_BACKEND", "not a url")
    app = Aqueue("proj", broker="memory://", backend="memory://")
    assert app.conf.resolved_broker_url() == "memory://"
    assert app.conf.resolved_backend_url() == "memory://"


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> str:
    """A new module of ``source`` importable for this test; its name."""
    name = f"audit_cfg_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_config_module_that_fails_inside_is_told_apart_from_a_missing_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = _module(tmp_path, monkeypatch, "import audit_no_such_dependency\ntimezone = 'UTC'\n")
    app = Aqueue("proj", broker="memory://")
    with pytest.raises(ConfigurationError, match="was found but its import failed") as info:
        app.config_from_object(name)
    assert "audit_no_such_dependency" in str(info.value)
    assert isinstance(info.value.__cause__, ModuleNotFoundError)  # the user's traceback


def test_config_module_raising_any_error_is_a_configuration_error_with_its_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = _module(tmp_path, monkeypatch, "timezone = 'UTC'\nresult_expires = undefined_name\n")
    app = Aqueue("proj", broker="memory://")
    with pytest.raises(ConfigurationError, match="NameError: name 'undefined_name'") as info:
        app.config_from_object(name)
    assert isinstance(info.value.__cause__, NameError)
    assert app.conf.timezone == "UTC"  # nothing was set


def test_config_module_in_a_missing_package_is_not_found() -> None:
    app = Aqueue("proj", broker="memory://")
    with pytest.raises(ConfigurationError, match="cannot import it"):
        app.config_from_object("audit_no_such_package.settings")


def test_include_in_a_missing_package_is_not_found() -> None:
    app = Aqueue("proj", broker="memory://", include=["audit_no_such_package.tasks"])
    with pytest.raises(ConfigurationError, match=r"'audit_no_such_package\.tasks' not found"):
        _ = app.tasks


def test_autodiscover_in_a_missing_parent_package_is_not_found() -> None:
    app = Aqueue("proj", broker="memory://")
    with pytest.raises(ConfigurationError, match=r"package 'audit_no_such_package\.shop' not"):
        app.autodiscover_tasks(["audit_no_such_package.shop"], force=True)


@pytest.mark.parametrize("value", [10, 255, 2**70])
def test_a_default_priority_out_of_range_is_refused_when_set(value: int) -> None:
    # It used to be accepted and then fail every send with "priority must be ... 0..9",
    # naming no setting.
    with pytest.raises(ConfigurationError, match="task_default_priority must be a whole number"):
        Aqueue("proj", broker="memory://", task_default_priority=value)


async def test_the_highest_default_priority_is_sent() -> None:
    app = Aqueue("proj", broker=f"memory://audit-{uuid.uuid4().hex[:8]}", task_default_priority=9)

    @app.task(name="proj.noop")
    async def noop() -> None:
        return None

    try:
        result = await noop.delay()
        assert result.id
    finally:
        await app.close()
