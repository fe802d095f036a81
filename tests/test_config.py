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


# -- connecting: timeouts, retries, pool sizes (README "When a server is down") ---------------


def test_connection_settings_default_to_bounded_waits() -> None:
    conf = Aqueue("proj", broker="memory://").conf
    assert conf.broker_connection_timeout == 4.0  # Celery's; the issue asks for <= 5 s
    assert conf.broker_connection_retry is True
    assert conf.broker_connection_max_retries is None  # forever, with a capped pause
    assert conf.broker_connection_retry_on_startup is None  # as broker_connection_retry
    assert conf.redis_socket_timeout is None  # Celery: 120 s, which costs a timer per command
    assert conf.redis_socket_connect_timeout is None
    assert conf.redis_retry_on_timeout is False
    assert conf.broker_pool_limit is None and conf.redis_max_connections is None


def test_connection_settings_are_accepted_in_celery_forms() -> None:
    app = Aqueue("proj", broker="memory://")
    app.conf.update(
        broker_connection_timeout=timedelta(seconds=2),
        broker_connection_retry=False,
        broker_connection_max_retries=0,
        broker_connection_retry_on_startup=True,
        broker_pool_limit=10,
        redis_socket_timeout=None,
        redis_socket_connect_timeout=1.5,
        redis_retry_on_timeout=True,
        redis_max_connections=50,
    )
    assert app.conf.broker_connection_timeout == 2.0  # a timedelta is seconds
    assert app.conf.broker_connection_max_retries == 0  # Celery's "forever", as None
    assert (app.conf.broker_pool_limit, app.conf.redis_max_connections) == (10, 50)
    assert app.conf.redis_socket_timeout is None


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("broker_connection_timeout", 0, r"seconds > 0, not 0"),
        ("broker_connection_timeout", None, r"seconds > 0, not None"),
        ("broker_connection_timeout", "4", r"seconds > 0"),
        ("broker_connection_retry", 1, "True or False"),
        ("broker_connection_max_retries", -1, "whole number >= 0"),
        ("broker_connection_retry_on_startup", "yes", "True or False"),
        ("broker_pool_limit", 2, r"whole number >= 10 or None"),
        ("redis_max_connections", 0, r"whole number >= 10 or None"),
        ("redis_socket_timeout", 1, r"seconds >= 2 or None"),
        ("redis_socket_connect_timeout", -1, r"seconds > 0 or None"),
        ("redis_retry_on_timeout", None, "True or False"),
    ],
)
def test_bad_connection_settings_name_the_setting(name: str, value: object, message: str) -> None:
    app = Aqueue("proj", broker="memory://")
    with pytest.raises(ConfigurationError, match=f"{name} must be .*{message}"):
        app.conf.update({name: value})


def test_connection_options_follow_the_broker_and_backend_settings() -> None:
    conf = Aqueue(
        "proj",
        broker="redis://h:1/0",
        backend="redis://h:2/0",
        broker_connection_timeout=3,
        broker_pool_limit=20,
        redis_socket_connect_timeout=1,
        redis_max_connections=40,
        redis_socket_timeout=60,
        redis_retry_on_timeout=True,
    ).conf
    broker, backend = (
        conf.connection_options("redis://h:1/0"),
        conf.connection_options("redis://h:2/0"),
    )
    assert (broker.connect_timeout, broker.max_connections) == (3, 20)
    assert (backend.connect_timeout, backend.max_connections) == (1, 40)
    for options in (broker, backend):
        assert (options.socket_timeout, options.retry_on_timeout) == (60, True)


def test_one_server_for_broker_and_backend_takes_the_shorter_wait_and_larger_pool() -> None:
    conf = Aqueue(
        "proj",
        broker="redis://h:1/0",
        broker_connection_timeout=3,
        redis_socket_connect_timeout=5,
        broker_pool_limit=20,
        redis_max_connections=40,
    ).conf
    shared = conf.connection_options("redis://h:1/0")
    assert (shared.connect_timeout, shared.max_connections) == (3, 40)
    defaults = Aqueue("proj", broker="redis://h:1/0").conf.connection_options("redis://h:1/0")
    assert (defaults.connect_timeout, defaults.max_connections) == (4.0, 128)
