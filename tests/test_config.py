"""Settings: names, checks, env vars, config_from_object, and the errors users see."""

from __future__ import annotations

import types
from datetime import timedelta

import pytest

from aqueue import Aqueue
from aqueue.config import DEFAULT_URL
from aqueue.exceptions import ConfigurationError


def test_defaults_use_the_embedded_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AQUEUE_BROKER_URL", raising=False)
    monkeypatch.delenv("AQUEUE_RESULT_BACKEND", raising=False)
    app = Aqueue("proj")
    assert app.conf.resolved_broker_url() == DEFAULT_URL == "sqlite:///aqueue.db"
    assert app.conf.resolved_backend_url() == DEFAULT_URL


def test_env_vars_are_used_when_no_url_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AQUEUE_BROKER_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("AQUEUE_RESULT_BACKEND", "sqlite:///r.db")
    app = Aqueue("proj")
    assert app.conf.resolved_broker_url() == "redis://127.0.0.1:1/0"
    assert app.conf.resolved_backend_url() == "sqlite:///r.db"
    explicit = Aqueue("proj", broker="memory://", backend="memory://")
    assert explicit.conf.resolved_broker_url() == "memory://"


def test_backend_defaults_to_the_broker_and_amqp_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AQUEUE_RESULT_BACKEND", raising=False)
    assert Aqueue(broker="redis://h:1/0").conf.resolved_backend_url() == "redis://h:1/0"
    assert Aqueue(broker="amqp://guest@h//").conf.resolved_backend_url() is None


async def test_awaiting_with_no_backend_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AQUEUE_RESULT_BACKEND", raising=False)
    app = Aqueue(broker="amqp://guest@127.0.0.1:1//")
    with pytest.raises(ConfigurationError, match="set result_backend"):
        await app.AsyncResult("x").get(timeout=1)


def test_update_and_attributes() -> None:
    app = Aqueue("proj", broker="memory://")
    app.conf.update(task_serializer="msgpack", timezone="Asia/Shanghai")
    app.conf.timezone = "UTC"
    app.conf.result_expires = timedelta(minutes=20)
    assert app.conf.task_serializer == "msgpack"
    assert app.conf.timezone == "UTC"
    assert app.conf.result_expires == 1200.0


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("task_serializr", "json", "did you mean 'task_serializer'"),
        ("task_serializer", "yaml", "must be one of json, msgpack, pickle"),
        ("worker_concurrency", 0, "worker_concurrency must be a whole number >= 1"),
        ("timezone", "Mars/Olympus", "not a known IANA time zone"),
        ("broker_url", "kafka://x", "scheme 'kafka' is not supported"),
        ("result_backend", "amqp://x", "scheme 'amqp' is not supported"),
        ("broker_url", "localhost:6379", "must be a URL"),
        ("accept_content", "json", "must be a list of content types"),
        ("task_acks_late", "yes", "must be True or False"),
    ],
)
def test_bad_settings_name_the_setting_and_fix(name: str, value: object, message: str) -> None:
    app = Aqueue("proj", broker="memory://")
    with pytest.raises(ConfigurationError, match=message):
        app.conf.update({name: value})
    with pytest.raises(ConfigurationError, match=message):
        setattr(app.conf, name, value)


def test_failed_update_changes_nothing() -> None:
    app = Aqueue("proj", broker="memory://")
    with pytest.raises(ConfigurationError):
        app.conf.update(task_serializer="msgpack", worker_concurrency=-1)
    assert app.conf.task_serializer == "json"


def test_config_from_object_module_and_celery3_names() -> None:
    module = types.ModuleType("proj_config")
    module.result_backend = "redis://127.0.0.1:6379/5"  # type: ignore[attr-defined]
    module.timezone = "Asia/Shanghai"  # type: ignore[attr-defined]
    module.timedelta = timedelta  # type: ignore[attr-defined]  # an import, skipped
    module.beat_schedule = {"x": {"task": "t", "schedule": timedelta(seconds=30)}}  # type: ignore[attr-defined]
    app = Aqueue("proj", broker="memory://")
    app.config_from_object(module)
    assert app.conf.result_backend == "redis://127.0.0.1:6379/5"
    assert app.conf.timezone == "Asia/Shanghai"
    old = types.ModuleType("old_config")
    old.CELERY_RESULT_BACKEND = "redis://x/5"  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="call it 'result_backend' instead"):
        app.config_from_object(old)


def test_config_from_object_by_path_reports_import_errors() -> None:
    app = Aqueue("proj", broker="memory://")
    with pytest.raises(ConfigurationError, match="cannot import"):
        app.config_from_object("no.such.config_module")


def test_unknown_task_and_send_options_are_refused() -> None:
    app = Aqueue("proj", broker="memory://")
    with pytest.raises(ConfigurationError, match="did you mean 'max_retries'"):
        app.task(max_retry=3)


async def test_unknown_apply_async_option_is_refused() -> None:
    app = Aqueue("proj", broker="memory://")

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(ConfigurationError, match="did you mean 'serializer'"):
        await add.apply_async((1, 2), serialize="json")


def test_default_task_name_is_module_dot_function() -> None:
    app = Aqueue("proj", broker="memory://")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add.name == f"{__name__}.test_default_task_name_is_module_dot_function.<locals>.add"
    assert add(2, 2) == 4  # calling the task runs it here, as in Celery


def test_config_module_with_future_import_is_accepted(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pathlib
    import sys

    folder = pathlib.Path(str(tmp_path))
    (folder / "future_conf.py").write_text(
        "from __future__ import annotations\nresult_expires = 60\ntask_serializer = 'json'\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    app = Aqueue("proj", broker="memory://")
    app.config_from_object("future_conf")
    assert app.conf.result_expires == 60
    sys.modules.pop("future_conf", None)
