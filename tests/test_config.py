"""Settings: names, checks, env vars, config_from_object, and the errors users see."""

from __future__ import annotations

import dataclasses
import types
from datetime import timedelta
from pathlib import Path

import pytest

from aqueue import Aqueue
from aqueue.celery_settings import CELERY_3_NAMES, CELERY_ONLY
from aqueue.config import _CHECKS, Settings
from aqueue.exceptions import ConfigurationError, UnknownSetting


def test_defaults_use_the_embedded_sqlite_beside_the_apps_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AQUEUE_BROKER_URL", raising=False)
    monkeypatch.delenv("AQUEUE_RESULT_BACKEND", raising=False)
    app = Aqueue("proj")  # made in this module: the database is beside this file
    here = Path(__file__).absolute().parent / "aqueue.db"  # as the module's __file__ names it
    assert app.conf.resolved_broker_url() == f"sqlite:///{here}"
    assert app.conf.resolved_backend_url() == f"sqlite:///{here}"


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


# -- app.conf as a mapping, as Celery's ---------------------------------------------------------


def test_conf_reads_and_writes_as_a_mapping() -> None:
    conf = Aqueue("proj", broker="memory://").conf
    assert conf["timezone"] == "UTC"
    assert conf.get("timezone") == "UTC"
    assert conf.get("task_soft_time_limitz") is None
    assert conf.get("worker_pool", "prefork") == "prefork"  # Celery's, not aqueue's: the default
    assert "timezone" in conf and "worker_pool" not in conf and 3 not in conf
    conf["timezone"] = "Asia/Shanghai"
    conf["result_expires"] = timedelta(minutes=2)  # checked and converted as attributes are
    assert (conf.timezone, conf.result_expires) == ("Asia/Shanghai", 120.0)
    assert dict(conf) == conf.as_dict()
    assert list(conf)[:3] == ["broker_url", "result_backend", "task_serializer"]
    assert len(conf) == len(conf.as_dict()) == len(_CHECKS)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("task_serializr", "unknown setting 'task_serializr'; did you mean 'task_serializer'?"),
        ("worker_pool", "'worker_pool' is a Celery setting that aqueue does not have: "),
        ("CELERY_RESULT_BACKEND", "Celery 3's name: call it 'result_backend' instead"),
    ],
)
def test_an_unknown_name_is_a_key_error_that_says_what_to_use(name: str, message: str) -> None:
    conf = Aqueue("proj", broker="memory://").conf
    with pytest.raises(KeyError) as read:
        conf[name]
    assert isinstance(read.value, UnknownSetting) and isinstance(read.value, ConfigurationError)
    assert message in str(read.value)  # a sentence, not KeyError's quoted repr
    with pytest.raises(UnknownSetting, match=r"aqueue does not have|did you mean|Celery 3"):
        conf[name] = 1
    with pytest.raises(ConfigurationError, match="must be one of json"):
        conf["task_serializer"] = "yaml"
    with pytest.raises(UnknownSetting):
        conf[3] = 1  # type: ignore[index]


def test_every_setting_is_a_field_and_every_field_a_setting_but_the_two_derived() -> None:
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert set(_CHECKS) == fields - {"_default_url", "signing"}  # default location, signers


# -- Celery's setting names: each answered, none guessed at --------------------------------------

#: Every setting name of Celery 5 ("Configuration and defaults", docs.celeryq.dev, and
#: celery.app.defaults of 5.7), and two of Celery 4 still met in old configs.
CELERY_NAMES = """
    accept_content arangodb_backend_settings azureblockblob_base_path
    azureblockblob_connection_timeout azureblockblob_container_name azureblockblob_read_timeout
    azureblockblob_retry_increment_base azureblockblob_retry_initial_backoff_sec
    azureblockblob_retry_max_attempts beat_cron_starting_deadline beat_enable_remote_control
    beat_executable beat_gid beat_logfile beat_max_loop_interval beat_pidfile
    beat_remote_control_max_tick_age beat_schedule beat_schedule_filename beat_scheduler
    beat_sync_every beat_uid beat_umask broker_channel_error_retry
    broker_connection_max_retries broker_connection_retry broker_connection_retry_on_startup
    broker_connection_timeout broker_failover_strategy broker_heartbeat
    broker_heartbeat_checkrate broker_host broker_login_method
    broker_native_delayed_delivery_queue_type broker_password broker_pool_acquire_timeout
    broker_pool_limit broker_port broker_read_url broker_transport broker_transport_options
    broker_url broker_use_ssl broker_user broker_vhost broker_write_url cache_backend
    cache_backend_options cassandra_auth_kwargs cassandra_auth_provider cassandra_bundle_path
    cassandra_entry_ttl cassandra_keyspace cassandra_options cassandra_port
    cassandra_read_consistency cassandra_secure_bundle_path cassandra_servers cassandra_table
    cassandra_write_consistency control_exchange control_queue_durable control_queue_exclusive
    control_queue_expires control_queue_ttl cosmosdbsql_collection_name
    cosmosdbsql_consistency_level cosmosdbsql_database_name cosmosdbsql_max_retry_attempts
    cosmosdbsql_max_retry_wait_time couchbase_backend_settings database_create_tables_at_setup
    database_engine_callback database_engine_options database_short_lived_sessions
    database_table_names database_table_schemas database_url elasticsearch_max_retries
    elasticsearch_retry_on_timeout elasticsearch_save_meta_as_text elasticsearch_timeout
    enable_utc event_exchange event_queue_durable event_queue_exclusive event_queue_expires
    event_queue_prefix event_queue_ttl event_serializer events_executable events_gid
    events_logfile events_pidfile events_uid events_umask firestore_project gcs_base_path
    gcs_bucket gcs_project gcs_threadpool_maxsize gcs_ttl imports include
    mongodb_backend_settings override_backends redis_backend_credential_provider
    redis_backend_health_check_interval redis_backend_use_ssl redis_client_name redis_db
    redis_host redis_max_connections redis_password redis_port redis_retry_on_timeout
    redis_socket_connect_timeout redis_socket_keepalive redis_socket_timeout redis_username
    result_accept_content result_backend result_backend_always_retry
    result_backend_base_sleep_between_retries_ms result_backend_max_retries
    result_backend_max_sleep_between_retries_ms result_backend_thread_safe
    result_backend_transport_options result_cache_max result_chord_expires
    result_chord_join_timeout result_chord_retry_interval result_compression result_exchange
    result_exchange_type result_expires result_extended result_failure_expires
    result_persistent result_serializer riak_backend_settings s3_access_key_id s3_base_path
    s3_bucket s3_endpoint_url s3_region s3_secret_access_key security_cert_store
    security_certificate security_digest security_key security_key_password task_acks_late
    task_acks_on_failure task_acks_on_failure_or_timeout task_acks_on_timeout
    task_allow_error_cb_on_chord_header task_always_eager task_annotations task_compression
    task_create_missing_queue_exchange_type task_create_missing_queue_type
    task_create_missing_queues task_default_delivery_mode task_default_exchange
    task_default_exchange_type task_default_priority task_default_queue task_default_queue_type
    task_default_rate_limit task_default_routing_key task_eager_propagates task_ignore_result
    task_inherit_parent_priority task_protocol task_publish_retry task_publish_retry_policy
    task_queue_ha_policy task_queue_max_priority task_queues task_reject_on_worker_lost
    task_remote_tracebacks task_repr_maxlevels task_retry_on_worker_lost task_routes
    task_send_sent_event task_serializer task_soft_time_limit task_store_eager_result
    task_store_errors_even_if_ignored task_time_limit task_track_started timezone worker_agent
    worker_autoscaler worker_cancel_long_running_tasks_on_connection_loss worker_concurrency
    worker_consumer worker_deduplicate_successful_tasks worker_detect_quorum_queues
    worker_direct worker_disable_prefetch worker_disable_rate_limits
    worker_enable_prefetch_count_reduction worker_enable_remote_control
    worker_enable_soft_shutdown_on_idle worker_eta_task_limit worker_executable worker_gid
    worker_hijack_root_logger worker_log_color worker_log_datefmt worker_log_format
    worker_logfile worker_lost_wait worker_max_memory_per_child worker_max_tasks_per_child
    worker_pidfile worker_pool worker_pool_putlocks worker_pool_restarts
    worker_pool_start_method worker_prefetch_multiplier worker_proc_alive_timeout
    worker_redirect_stdouts worker_redirect_stdouts_level worker_send_task_events
    worker_soft_shutdown_timeout worker_state_db worker_task_log_datefmt worker_task_log_format
    worker_timer worker_timer_precision worker_uid worker_umask
""".split()  # noqa: SIM905 (a list literal of 234 names would take 234 lines)

#: Celery settings that are to become aqueue settings (issue 12): the table leaves them out.
BECOMING_SETTINGS = {
    "task_soft_time_limit",
    "worker_max_tasks_per_child",
    "worker_max_memory_per_child",
    "result_extended",
    "task_reject_on_worker_lost",
}


def test_every_celery_name_is_an_aqueue_setting_or_answered() -> None:
    unanswered = [
        name
        for name in CELERY_NAMES
        if name not in _CHECKS and name not in CELERY_ONLY and name not in BECOMING_SETTINGS
    ]
    assert unanswered == []
    assert not BECOMING_SETTINGS & set(CELERY_ONLY)  # left for their own settings
    assert not set(_CHECKS) & set(CELERY_ONLY)  # an answer never hides a real setting
    assert set(CELERY_ONLY) <= set(CELERY_NAMES)  # nothing made up


@pytest.mark.parametrize("name", sorted(set(CELERY_NAMES) - set(_CHECKS) - BECOMING_SETTINGS))
def test_no_celery_name_gets_a_spelling_guess(name: str) -> None:
    conf = Aqueue("proj", broker="memory://").conf
    with pytest.raises(UnknownSetting) as refused:
        conf.update({name: 1})
    text = str(refused.value)
    assert "did you mean" not in text
    assert text.startswith(f"{name!r} is a Celery setting that aqueue does not have: ")
    assert len(text) > len(name) + 60  # an answer follows


@pytest.mark.parametrize(
    ("name", "answer"),
    [
        ("result_backend_always_retry", "is stored again, with a pause growing to 2 s"),
        ("worker_pool", "--processes N"),
        ("worker_hijack_root_logger", "-l/--loglevel sets the level and --logfile the file"),
        ("broker_host", "'amqp://user:password@host:port/vhost'"),
        ("redis_password", "'redis://user:password@host:port/db'"),
        ("task_default_rate_limit", "task_annotations={'*': {'rate_limit': '10/m'}}"),
        ("task_publish_retry_policy", "apply_async(retry_policy="),
        ("task_default_queue_type", "broker_transport_options={'queue_type': 'quorum'}"),
        ("database_url", "it has no SQLAlchemy (database) result backend"),
        ("include", "Aqueue(..., include=['proj.tasks'])"),
        ("worker_soft_shutdown_timeout", "use worker_shutdown_timeout"),
        ("beat_cron_starting_deadline", "catch_up"),
        ("broker_heartbeat", "'?heartbeat=<seconds>'"),
        ("security_key", "set task_signing_key to a key, or a list of keys"),
        ("worker_disable_prefetch", "worker_prefetch_multiplier=1"),
    ],
)
def test_a_celery_name_gets_its_own_answer(name: str, answer: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        Aqueue("proj", broker="memory://").config_from_object(types.SimpleNamespace(**{name: 1}))
    assert answer in str(refused.value)


def test_celery_3_names_are_told_the_new_name_or_its_answer() -> None:
    conf = Aqueue("proj", broker="memory://").conf
    with pytest.raises(UnknownSetting, match="CELERYD_CONCURRENCY is Celery 3's name: call it "):
        conf.update(CELERYD_CONCURRENCY=4)
    with pytest.raises(UnknownSetting) as pool:
        conf.update(CELERYD_POOL="prefork")
    assert str(pool.value).startswith(
        "setting CELERYD_POOL is Celery 3's name for 'worker_pool', which aqueue does not have: "
    )
    assert CELERY_ONLY["worker_pool"] in str(pool.value)
    assert all(new in CELERY_NAMES for new in CELERY_3_NAMES.values())


def test_config_from_object_refuses_celery_3_names_of_settings_it_has_and_skips_constants() -> None:
    module = types.ModuleType("ported_config")
    module.BROKER_HOST = "rabbit.internal"  # type: ignore[attr-defined]  # the module's own
    module.S3_BUCKET = "reports"  # type: ignore[attr-defined]
    module.broker_url = "redis://rabbit.internal:6379/0"  # type: ignore[attr-defined]
    app = Aqueue("proj", broker="memory://")
    app.config_from_object(module)
    assert app.conf.broker_url == "redis://rabbit.internal:6379/0"
    module.CELERYD_PREFETCH_MULTIPLIER = 1  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="call it 'worker_prefetch_multiplier' instead"):
        app.config_from_object(module)
