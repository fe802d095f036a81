"""Celery's setting names that aqueue does not have, each with what to use instead or why there
is none, and Celery 3's upper-case names with the lowercase name each became.

:class:`aqueue.config.Settings` answers an unknown name from these tables before it guesses a
spelling, so ``result_backend_always_retry`` is told what aqueue does instead, never "did you
mean ...". The names are those of Celery 5's "Configuration and defaults" page and
``celery.app.defaults``; names aqueue has (``config.py`` declares them) are not listed here.

Data only: :data:`CELERY_ONLY` (lowercase name -> answer) and :data:`CELERY_3_NAMES`
(upper-case name -> lowercase name). ``tests/test_config.py`` checks that every Celery name is
either an aqueue setting or answered here.
"""

from __future__ import annotations

__all__ = ["CELERY_3_NAMES", "CELERY_ONLY"]

_STORES = (
    "aqueue stores results in Redis, SQLite or memory (result_backend='redis://...', "
    "'sqlite:///...', 'memory://'), or sends them back over RabbitMQ (result_backend='rpc://'); "
    "it has no {} result backend"
)
_URL_PARTS = "put it in broker_url: 'amqp://user:password@host:port/vhost' or 'redis://:password@host:port/db'"
_REDIS_URL_PARTS = "put it in the Redis URL: 'redis://user:password@host:port/db'"
_NO_POOL = (
    "a worker has no process pool: tasks run as coroutines on its event loop (plain functions "
    "in threads); for more processes run --processes N, a supervisor with N worker processes"
)
_DAEMON = (
    "the aqueue command does not detach or switch users: run it under systemd, supervisord or "
    "a container (worker and beat take --logfile and --pidfile)"
)
_LOGGING = (
    "the worker logs through Python's logging (loggers named 'aqueue...'): -l/--loglevel sets "
    "the level and --logfile the file; configure formats and handlers with the logging module"
)
_CONTROL = (
    "remote control needs no AMQP exchange or queue: it travels on the broker's or result "
    "backend's server (Redis pub/sub, SQLite tables), nothing to declare"
)
_EVENTS = (
    "events need no AMQP exchange or queue: a worker started with -E (worker_send_task_events) "
    "publishes them on the control transport, and 'aqueue events' shows them"
)
_NO_SIGNING = (
    "aqueue signs messages and results with a shared secret instead of Celery's X.509 "
    "certificate and private key (the 'auth' serializer, app.setup_security()): set "
    "task_signing_key to a key, or a list of keys to rotate them (the first signs); "
    "HMAC-SHA256, see docs/signing.md"
)
_QUEUE_TYPE = (
    "RabbitMQ quorum queues: broker_transport_options={'queue_type': 'quorum'} (docs/amqp.md)"
)
_EXCHANGES = (
    "a message goes to its queue directly; name an exchange per queue in task_queues "
    "({'q': {'exchange': 'x', 'exchange_type': 'topic', 'routing_key': 'q.#'}}) or per call "
    "(apply_async(exchange=..., routing_key=...))"
)
_STORE_RETRIES = (
    "a result the worker cannot store because the result backend is away (or silent past "
    "broker_connection_timeout) is stored again, with a pause growing to 2 s, until the backend "
    "answers; its message stays leased meanwhile; a client's wait is bounded by get(timeout=...)"
)
_FAILURE_ACKED = (
    "a task that fails or runs out of time_limit is acked after its FAILURE is stored, always; "
    "a message whose worker died is delivered again (task_max_deliveries caps poison messages)"
)
_SHUTDOWN = (
    "use worker_shutdown_timeout: the seconds a stopping worker gives running tasks before it "
    "cancels them and hands their messages back for redelivery"
)
_CHORDS = (
    "a chord's body is started by its last header task through the result backend, exactly "
    "once: there is no join to time out and nothing polls"
)
_BEAT_STORE = (
    "beat keeps its entries, last ticks and claims on the result backend's server, shared by "
    "every beat process (no schedule file, no scheduler class; app.beat.add() at run time)"
)
_OWN_URL_QUERY = (
    "put it in the Redis URL's query (redis-py reads it): "
    "'redis://host:6379/0?health_check_interval=30&client_name=web'"
)

# (answer, names): each name of a group gets its answer.
_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # -- result stores aqueue does not have ---------------------------------------------------
    (_STORES.format("ArangoDB"), ("arangodb_backend_settings",)),
    (
        _STORES.format("Azure Block Blob"),
        (
            "azureblockblob_base_path",
            "azureblockblob_connection_timeout",
            "azureblockblob_container_name",
            "azureblockblob_read_timeout",
            "azureblockblob_retry_increment_base",
            "azureblockblob_retry_initial_backoff_sec",
            "azureblockblob_retry_max_attempts",
        ),
    ),
    (_STORES.format("memcached (cache)"), ("cache_backend", "cache_backend_options")),
    (
        _STORES.format("Cassandra"),
        (
            "cassandra_auth_kwargs",
            "cassandra_auth_provider",
            "cassandra_bundle_path",
            "cassandra_entry_ttl",
            "cassandra_keyspace",
            "cassandra_options",
            "cassandra_port",
            "cassandra_read_consistency",
            "cassandra_secure_bundle_path",
            "cassandra_servers",
            "cassandra_table",
            "cassandra_write_consistency",
        ),
    ),
    (
        _STORES.format("Cosmos DB"),
        (
            "cosmosdbsql_collection_name",
            "cosmosdbsql_consistency_level",
            "cosmosdbsql_database_name",
            "cosmosdbsql_max_retry_attempts",
            "cosmosdbsql_max_retry_wait_time",
        ),
    ),
    (_STORES.format("Couchbase"), ("couchbase_backend_settings",)),
    (
        _STORES.format("SQLAlchemy (database)"),
        (
            "database_create_tables_at_setup",
            "database_engine_callback",
            "database_engine_options",
            "database_short_lived_sessions",
            "database_table_names",
            "database_table_schemas",
            "database_url",
        ),
    ),
    (
        _STORES.format("Elasticsearch"),
        (
            "elasticsearch_max_retries",
            "elasticsearch_retry_on_timeout",
            "elasticsearch_save_meta_as_text",
            "elasticsearch_timeout",
        ),
    ),
    (_STORES.format("Firestore"), ("firestore_project",)),
    (
        _STORES.format("Google Cloud Storage"),
        ("gcs_base_path", "gcs_bucket", "gcs_project", "gcs_threadpool_maxsize", "gcs_ttl"),
    ),
    (_STORES.format("MongoDB"), ("mongodb_backend_settings",)),
    (_STORES.format("Riak"), ("riak_backend_settings",)),
    (
        _STORES.format("S3"),
        (
            "s3_access_key_id",
            "s3_base_path",
            "s3_bucket",
            "s3_endpoint_url",
            "s3_region",
            "s3_secret_access_key",
        ),
    ),
    (
        "result backends are chosen by the URL's scheme; for one of your own, pass an instance: "
        "Aqueue(backend=MyBackend(...)) (the ResultBackend protocol, docs/architecture.md)",
        ("override_backends",),
    ),
    # -- the broker ----------------------------------------------------------------------------
    (
        "the broker URL's scheme picks the transport: broker_url='redis://...', 'amqp://...', "
        "'sqlite:///...' or 'memory://'",
        ("broker_transport",),
    ),
    (_URL_PARTS, ("broker_host", "broker_port", "broker_user", "broker_password", "broker_vhost")),
    (
        "aqueue reads and writes over one broker_url; separate read and write servers are not "
        "supported",
        ("broker_read_url", "broker_write_url"),
    ),
    (
        "aqueue takes one broker URL, not a list to fail over between: point broker_url at an "
        "address that stays up (a load balancer or virtual IP in front of the cluster)",
        ("broker_failover_strategy",),
    ),
    (
        "RabbitMQ heartbeats are negotiated by the connection: put '?heartbeat=<seconds>' in the "
        "amqp:// URL (default 60)",
        ("broker_heartbeat", "broker_heartbeat_checkrate"),
    ),
    (
        "RabbitMQ's login method goes in the amqp:// URL: '?auth=external' for certificate "
        "logins (the default is PLAIN with the URL's user and password)",
        ("broker_login_method",),
    ),
    (
        "waiting for a pooled connection is part of a send, which broker_connection_timeout "
        "bounds as a whole",
        ("broker_pool_acquire_timeout",),
    ),
    (
        "a send is retried on connection errors only (retry_policy, within "
        "broker_connection_timeout); a RabbitMQ channel error is raised to the caller",
        ("broker_channel_error_retry",),
    ),
    (
        "countdown and eta need no plugin or setting: aqueue's AMQP broker delays messages in "
        "TTL queues of its own (docs/amqp.md)",
        ("broker_native_delayed_delivery_queue_type",),
    ),
    (
        "set RabbitMQ mirroring or replication with a server policy (rabbitmqctl set_policy), or "
        "use quorum queues: broker_transport_options={'queue_type': 'quorum'}",
        ("task_queue_ha_policy",),
    ),
    # -- tasks and sending --------------------------------------------------------------------
    (
        _FAILURE_ACKED,
        ("task_acks_on_failure", "task_acks_on_failure_or_timeout", "task_acks_on_timeout"),
    ),
    (
        "a chord's link_error callbacks run once, for the body, when a header task fails "
        "(docs/canvas.md); give header tasks their own link_error to hear of each",
        ("task_allow_error_cb_on_chord_header",),
    ),
    (
        "queues are created when first used, always (Celery's default, True)",
        ("task_create_missing_queues",),
    ),
    (
        _QUEUE_TYPE,
        (
            "task_create_missing_queue_type",
            "task_default_queue_type",
            "worker_detect_quorum_queues",
        ),
    ),
    (
        _EXCHANGES,
        (
            "task_create_missing_queue_exchange_type",
            "task_default_exchange",
            "task_default_exchange_type",
            "task_default_routing_key",
        ),
    ),
    (
        "messages are always persistent (delivery mode 2 on RabbitMQ; Redis and SQLite keep "
        "what they store)",
        ("task_default_delivery_mode",),
    ),
    (
        "give a task its rate_limit (@app.task(rate_limit='10/m')), or every task one with "
        "task_annotations={'*': {'rate_limit': '10/m'}}",
        ("task_default_rate_limit",),
    ),
    (
        "a task sent by another does not take its priority: set priority on the task "
        "(@app.task(priority=5)) or the call (add.s(1).set(priority=5))",
        ("task_inherit_parent_priority",),
    ),
    (
        "aqueue has one message format (aqueue/message.py); there is no protocol to choose",
        ("task_protocol",),
    ),
    (
        "publishing retries on connection errors by default, as in Celery; turn it off per call "
        "with apply_async(retry=False)",
        ("task_publish_retry",),
    ),
    (
        "pass it per call: apply_async(retry_policy={'max_retries': 3, 'interval_start': 0, "
        "'interval_step': 0.2, 'interval_max': 0.2}) (those are the defaults, Celery's)",
        ("task_publish_retry_policy",),
    ),
    (
        "priorities 0..9 work on every broker with no setting (9 runs first); RabbitMQ classic "
        "queues are declared with x-max-priority 9, or without priorities with "
        "broker_transport_options={'priorities': False}",
        ("task_queue_max_priority",),
    ),
    (
        "a failure's traceback from the worker is always kept: AsyncResult.traceback, and "
        "TaskError.remote_traceback when the exception type cannot be imported",
        ("task_remote_tracebacks",),
    ),
    (
        "log lines shorten long arguments and results themselves; there is nothing to set",
        ("task_repr_maxlevels",),
    ),
    (
        "there is no task-sent event: a worker started with -E publishes the others "
        "(worker_send_task_events)",
        ("task_send_sent_event",),
    ),
    (
        "an eager call stores nothing: its AsyncResult holds the value",
        ("task_store_eager_result",),
    ),
    (
        "ignore_result stores nothing, failures included; leave ignore_result off for tasks "
        "whose failures you need",
        ("task_store_errors_even_if_ignored",),
    ),
    (
        "a message whose worker was lost is delivered again, always (with task_acks_late, the "
        "default); task_max_deliveries caps one that keeps killing workers",
        ("task_retry_on_worker_lost",),
    ),
    (
        "pass the modules to Aqueue(..., include=['proj.tasks']) or call "
        "app.autodiscover_tasks(); both are imported when the worker starts",
        ("imports", "include"),
    ),
    # -- results ------------------------------------------------------------------------------
    (
        "results are read in any content type of accept_content, and result_serializer's",
        ("result_accept_content",),
    ),
    (
        _STORE_RETRIES,
        (
            "result_backend_always_retry",
            "result_backend_base_sleep_between_retries_ms",
            "result_backend_max_retries",
            "result_backend_max_sleep_between_retries_ms",
        ),
    ),
    (
        "an app holds one connection (pool) per server and event loop, shared by every coroutine "
        "of that loop; aqueue.sync runs one loop for all of a process's threads",
        ("result_backend_thread_safe",),
    ),
    (
        "an AsyncResult keeps its own outcome (r.result, no I/O); there is no shared cache to size",
        ("result_cache_max",),
    ),
    (_CHORDS, ("result_chord_join_timeout", "result_chord_retry_interval")),
    (
        "a chord's bookkeeping expires with its results: result_expires",
        ("result_chord_expires",),
    ),
    (
        "every stored result, success or failure, expires after result_expires",
        ("result_failure_expires",),
    ),
    (
        "results are stored uncompressed; task_compression compresses messages",
        ("result_compression",),
    ),
    (
        "results do not go through an exchange: they are stored in the result backend, or, with "
        "rpc://, sent to the caller's own reply queue",
        ("result_exchange", "result_exchange_type"),
    ),
    (
        "rpc:// replies go to the caller's own queue and are not persistent; use a Redis or "
        "SQLite result backend to keep results",
        ("result_persistent",),
    ),
    # -- the worker ---------------------------------------------------------------------------
    (
        "a worker has no agent, consumer or timer classes to replace; its event loop does that "
        "work",
        ("worker_agent", "worker_consumer", "worker_timer", "worker_timer_precision"),
    ),
    (
        "concurrency is fixed (worker_concurrency, -c): coroutines are cheap, so set it high; for "
        "more CPU run --processes N",
        ("worker_autoscaler",),
    ),
    (
        "running tasks are not cancelled when the broker connection drops; their messages are "
        "delivered again if the worker cannot ack them (after visibility_timeout on Redis and "
        "SQLite)",
        ("worker_cancel_long_running_tasks_on_connection_loss",),
    ),
    (
        "a redelivered message runs again: at least once, so make tasks idempotent",
        ("worker_deduplicate_successful_tasks",),
    ),
    (
        "there are no per-worker queues: give a worker a queue of its own with -Q and route to it",
        ("worker_direct",),
    ),
    (
        "use worker_prefetch_multiplier=1: a worker then holds no more messages than it runs",
        ("worker_disable_prefetch", "worker_enable_prefetch_count_reduction"),
    ),
    (
        "rate limits apply only to tasks given one; lift them all with "
        "task_annotations={'*': {'rate_limit': None}}",
        ("worker_disable_rate_limits",),
    ),
    (
        "remote control is always on where the broker or result backend carries it (app.control, "
        "aqueue inspect/control)",
        ("worker_enable_remote_control",),
    ),
    (_SHUTDOWN, ("worker_enable_soft_shutdown_on_idle", "worker_soft_shutdown_timeout")),
    (
        "countdown and eta messages wait in the broker, not in the worker's memory: nothing to "
        "limit",
        ("worker_eta_task_limit",),
    ),
    (
        _LOGGING,
        (
            "worker_hijack_root_logger",
            "worker_log_color",
            "worker_log_datefmt",
            "worker_log_format",
            "worker_redirect_stdouts",
            "worker_redirect_stdouts_level",
            "worker_task_log_datefmt",
            "worker_task_log_format",
        ),
    ),
    (
        _NO_POOL,
        (
            "worker_lost_wait",
            "worker_pool",
            "worker_pool_putlocks",
            "worker_pool_restarts",
            "worker_pool_start_method",
            "worker_proc_alive_timeout",
        ),
    ),
    (
        "revoked task ids are stored on the control transport's server, shared by every worker "
        "and kept across restarts: no state file",
        ("worker_state_db",),
    ),
    (
        _DAEMON,
        (
            "beat_executable",
            "beat_gid",
            "beat_logfile",
            "beat_pidfile",
            "beat_uid",
            "beat_umask",
            "events_executable",
            "events_gid",
            "events_logfile",
            "events_pidfile",
            "events_uid",
            "events_umask",
            "worker_executable",
            "worker_gid",
            "worker_logfile",
            "worker_pidfile",
            "worker_uid",
            "worker_umask",
        ),
    ),
    # -- beat ---------------------------------------------------------------------------------
    (_BEAT_STORE, ("beat_schedule_filename", "beat_scheduler", "beat_sync_every")),
    (
        "beat sleeps until the next entry is due (aqueue beat --max-interval caps the sleep)",
        ("beat_max_loop_interval",),
    ),
    (
        "missed ticks are handled per entry with catch_up: 'once' (default), 'all' or 'none' "
        "(docs/beat.md)",
        ("beat_cron_starting_deadline",),
    ),
    (
        "beat's entries change at run time with app.beat.add()/remove() or 'aqueue beat "
        "add|remove'; always on",
        ("beat_enable_remote_control", "beat_remote_control_max_tick_age"),
    ),
    # -- control and events -------------------------------------------------------------------
    (
        _CONTROL,
        (
            "control_exchange",
            "control_queue_durable",
            "control_queue_exclusive",
            "control_queue_expires",
            "control_queue_ttl",
        ),
    ),
    (
        _EVENTS,
        (
            "event_exchange",
            "event_queue_durable",
            "event_queue_exclusive",
            "event_queue_expires",
            "event_queue_prefix",
            "event_queue_ttl",
            "event_serializer",
        ),
    ),
    # -- Redis --------------------------------------------------------------------------------
    (
        _REDIS_URL_PARTS,
        ("redis_db", "redis_host", "redis_password", "redis_port", "redis_username"),
    ),
    (
        _OWN_URL_QUERY,
        ("redis_backend_health_check_interval", "redis_client_name", "redis_socket_keepalive"),
    ),
    (
        "put the credentials in the Redis URL, or pass a configured instance: "
        "Aqueue(backend=RedisBackend(...)) (from aqueue.transports.redis)",
        ("redis_backend_credential_provider",),
    ),
    # -- security -----------------------------------------------------------------------------
    (
        _NO_SIGNING,
        (
            "security_cert_store",
            "security_certificate",
            "security_digest",
            "security_key",
            "security_key_password",
        ),
    ),
)

#: Celery's setting names aqueue does not have -> what to use instead, or why there is none.
CELERY_ONLY: dict[str, str] = {name: answer for answer, names in _GROUPS for name in names}

#: Celery 3's upper-case setting names -> the lowercase name each became in Celery 4 (from
#: ``celery.app.utils``), and the ``CELERY_``-prefixed spellings of Django projects for two of
#: them. A name whose lowercase one aqueue has is told to use it; any other gets its answer.
CELERY_3_NAMES: dict[str, str] = {
    "AZUREBLOCKBLOB_BASE_PATH": "azureblockblob_base_path",
    "AZUREBLOCKBLOB_CONNECTION_TIMEOUT": "azureblockblob_connection_timeout",
    "AZUREBLOCKBLOB_CONTAINER_NAME": "azureblockblob_container_name",
    "AZUREBLOCKBLOB_READ_TIMEOUT": "azureblockblob_read_timeout",
    "AZUREBLOCKBLOB_RETRY_INCREMENT_BASE": "azureblockblob_retry_increment_base",
    "AZUREBLOCKBLOB_RETRY_INITIAL_BACKOFF_SEC": "azureblockblob_retry_initial_backoff_sec",
    "AZUREBLOCKBLOB_RETRY_MAX_ATTEMPTS": "azureblockblob_retry_max_attempts",
    "BROKER_CHANNEL_ERROR_RETRY": "broker_channel_error_retry",
    "BROKER_CONNECTION_MAX_RETRIES": "broker_connection_max_retries",
    "BROKER_CONNECTION_RETRY": "broker_connection_retry",
    "BROKER_CONNECTION_RETRY_ON_STARTUP": "broker_connection_retry_on_startup",
    "BROKER_CONNECTION_TIMEOUT": "broker_connection_timeout",
    "BROKER_FAILOVER_STRATEGY": "broker_failover_strategy",
    "BROKER_HEARTBEAT": "broker_heartbeat",
    "BROKER_HEARTBEAT_CHECKRATE": "broker_heartbeat_checkrate",
    "BROKER_HOST": "broker_host",
    "BROKER_LOGIN_METHOD": "broker_login_method",
    "BROKER_NATIVE_DELAYED_DELIVERY_QUEUE_TYPE": "broker_native_delayed_delivery_queue_type",
    "BROKER_PASSWORD": "broker_password",
    "BROKER_POOL_ACQUIRE_TIMEOUT": "broker_pool_acquire_timeout",
    "BROKER_POOL_LIMIT": "broker_pool_limit",
    "BROKER_PORT": "broker_port",
    "BROKER_READ_URL": "broker_read_url",
    "BROKER_TRANSPORT": "broker_transport",
    "BROKER_TRANSPORT_OPTIONS": "broker_transport_options",
    "BROKER_URL": "broker_url",
    "BROKER_USER": "broker_user",
    "BROKER_USE_SSL": "broker_use_ssl",
    "BROKER_VHOST": "broker_vhost",
    "BROKER_WRITE_URL": "broker_write_url",
    "CASSANDRA_AUTH_KWARGS": "cassandra_auth_kwargs",
    "CASSANDRA_AUTH_PROVIDER": "cassandra_auth_provider",
    "CASSANDRA_BUNDLE_PATH": "cassandra_bundle_path",
    "CASSANDRA_ENTRY_TTL": "cassandra_entry_ttl",
    "CASSANDRA_KEYSPACE": "cassandra_keyspace",
    "CASSANDRA_OPTIONS": "cassandra_options",
    "CASSANDRA_PORT": "cassandra_port",
    "CASSANDRA_READ_CONSISTENCY": "cassandra_read_consistency",
    "CASSANDRA_SERVERS": "cassandra_servers",
    "CASSANDRA_TABLE": "cassandra_table",
    "CASSANDRA_WRITE_CONSISTENCY": "cassandra_write_consistency",
    "CELERYBEAT_CRON_STARTING_DEADLINE": "beat_cron_starting_deadline",
    "CELERYBEAT_ENABLE_REMOTE_CONTROL": "beat_enable_remote_control",
    "CELERYBEAT_MAX_LOOP_INTERVAL": "beat_max_loop_interval",
    "CELERYBEAT_REMOTE_CONTROL_MAX_TICK_AGE": "beat_remote_control_max_tick_age",
    "CELERYBEAT_SCHEDULE": "beat_schedule",
    "CELERYBEAT_SCHEDULER": "beat_scheduler",
    "CELERYBEAT_SCHEDULE_FILENAME": "beat_schedule_filename",
    "CELERYBEAT_SYNC_EVERY": "beat_sync_every",
    "CELERYD_AGENT": "worker_agent",
    "CELERYD_AUTOSCALER": "worker_autoscaler",
    "CELERYD_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS": "worker_cancel_long_running_tasks_on_connection_loss",  # noqa: E501
    "CELERYD_CONCURRENCY": "worker_concurrency",
    "CELERYD_CONSUMER": "worker_consumer",
    "CELERYD_DEDUPLICATE_SUCCESSFUL_TASKS": "worker_deduplicate_successful_tasks",
    "CELERYD_DETECT_QUORUM_QUEUES": "worker_detect_quorum_queues",
    "CELERYD_DISABLE_PREFETCH": "worker_disable_prefetch",
    "CELERYD_ENABLE_PREFETCH_COUNT_REDUCTION": "worker_enable_prefetch_count_reduction",
    "CELERYD_ENABLE_SOFT_SHUTDOWN_ON_IDLE": "worker_enable_soft_shutdown_on_idle",
    "CELERYD_ETA_TASK_LIMIT": "worker_eta_task_limit",
    "CELERYD_HIJACK_ROOT_LOGGER": "worker_hijack_root_logger",
    "CELERYD_LOG_COLOR": "worker_log_color",
    "CELERYD_LOG_DATEFMT": "worker_log_datefmt",
    "CELERYD_LOG_FORMAT": "worker_log_format",
    "CELERYD_MAX_MEMORY_PER_CHILD": "worker_max_memory_per_child",
    "CELERYD_MAX_TASKS_PER_CHILD": "worker_max_tasks_per_child",
    "CELERYD_POOL": "worker_pool",
    "CELERYD_POOL_PUTLOCKS": "worker_pool_putlocks",
    "CELERYD_POOL_RESTARTS": "worker_pool_restarts",
    "CELERYD_POOL_START_METHOD": "worker_pool_start_method",
    "CELERYD_PREFETCH_MULTIPLIER": "worker_prefetch_multiplier",
    "CELERYD_PROC_ALIVE_TIMEOUT": "worker_proc_alive_timeout",
    "CELERYD_SOFT_SHUTDOWN_TIMEOUT": "worker_soft_shutdown_timeout",
    "CELERYD_STATE_DB": "worker_state_db",
    "CELERYD_TASK_LOG_DATEFMT": "worker_task_log_datefmt",
    "CELERYD_TASK_LOG_FORMAT": "worker_task_log_format",
    "CELERYD_TASK_SOFT_TIME_LIMIT": "task_soft_time_limit",
    "CELERYD_TASK_TIME_LIMIT": "task_time_limit",
    "CELERYD_TIMER": "worker_timer",
    "CELERYD_TIMER_PRECISION": "worker_timer_precision",
    "CELERYD_WORKER_LOST_WAIT": "worker_lost_wait",
    "CELERY_ACCEPT_CONTENT": "accept_content",
    "CELERY_ACKS_LATE": "task_acks_late",
    "CELERY_ACKS_ON_FAILURE": "task_acks_on_failure",
    "CELERY_ACKS_ON_FAILURE_OR_TIMEOUT": "task_acks_on_failure_or_timeout",
    "CELERY_ACKS_ON_TIMEOUT": "task_acks_on_timeout",
    "CELERY_ALLOW_ERROR_CB_ON_CHORD_HEADER": "task_allow_error_cb_on_chord_header",
    "CELERY_ALWAYS_EAGER": "task_always_eager",
    "CELERY_ANNOTATIONS": "task_annotations",
    "CELERY_ARANGODB_BACKEND_SETTINGS": "arangodb_backend_settings",
    "CELERY_BROKER_URL": "broker_url",
    "CELERY_CACHE_BACKEND": "cache_backend",
    "CELERY_CACHE_BACKEND_OPTIONS": "cache_backend_options",
    "CELERY_COUCHBASE_BACKEND_SETTINGS": "couchbase_backend_settings",
    "CELERY_CREATE_MISSING_QUEUES": "task_create_missing_queues",
    "CELERY_CREATE_MISSING_QUEUE_EXCHANGE_TYPE": "task_create_missing_queue_exchange_type",
    "CELERY_CREATE_MISSING_QUEUE_TYPE": "task_create_missing_queue_type",
    "CELERY_DEFAULT_DELIVERY_MODE": "task_default_delivery_mode",
    "CELERY_DEFAULT_EXCHANGE": "task_default_exchange",
    "CELERY_DEFAULT_EXCHANGE_TYPE": "task_default_exchange_type",
    "CELERY_DEFAULT_PRIORITY": "task_default_priority",
    "CELERY_DEFAULT_QUEUE": "task_default_queue",
    "CELERY_DEFAULT_QUEUE_TYPE": "task_default_queue_type",
    "CELERY_DEFAULT_RATE_LIMIT": "task_default_rate_limit",
    "CELERY_DEFAULT_ROUTING_KEY": "task_default_routing_key",
    "CELERY_DISABLE_RATE_LIMITS": "worker_disable_rate_limits",
    "CELERY_EAGER_PROPAGATES_EXCEPTIONS": "task_eager_propagates",
    "CELERY_ELASTICSEARCH_MAX_RETRIES": "elasticsearch_max_retries",
    "CELERY_ELASTICSEARCH_RETRY_ON_TIMEOUT": "elasticsearch_retry_on_timeout",
    "CELERY_ELASTICSEARCH_SAVE_META_AS_TEXT": "elasticsearch_save_meta_as_text",
    "CELERY_ELASTICSEARCH_TIMEOUT": "elasticsearch_timeout",
    "CELERY_ENABLE_REMOTE_CONTROL": "worker_enable_remote_control",
    "CELERY_ENABLE_UTC": "enable_utc",
    "CELERY_EVENT_EXCHANGE": "event_exchange",
    "CELERY_EVENT_QUEUE_DURABLE": "event_queue_durable",
    "CELERY_EVENT_QUEUE_EXCLUSIVE": "event_queue_exclusive",
    "CELERY_EVENT_QUEUE_EXPIRES": "event_queue_expires",
    "CELERY_EVENT_QUEUE_PREFIX": "event_queue_prefix",
    "CELERY_EVENT_QUEUE_TTL": "event_queue_ttl",
    "CELERY_EVENT_SERIALIZER": "event_serializer",
    "CELERY_IGNORE_RESULT": "task_ignore_result",
    "CELERY_IMPORTS": "imports",
    "CELERY_INCLUDE": "include",
    "CELERY_INHERIT_PARENT_PRIORITY": "task_inherit_parent_priority",
    "CELERY_MAX_CACHED_RESULTS": "result_cache_max",
    "CELERY_MESSAGE_COMPRESSION": "task_compression",
    "CELERY_MONGODB_BACKEND_SETTINGS": "mongodb_backend_settings",
    "CELERY_QUEUES": "task_queues",
    "CELERY_QUEUE_MAX_PRIORITY": "task_queue_max_priority",
    "CELERY_REDIRECT_STDOUTS": "worker_redirect_stdouts",
    "CELERY_REDIRECT_STDOUTS_LEVEL": "worker_redirect_stdouts_level",
    "CELERY_REDIS_BACKEND_USE_SSL": "redis_backend_use_ssl",
    "CELERY_REDIS_DB": "redis_db",
    "CELERY_REDIS_HOST": "redis_host",
    "CELERY_REDIS_MAX_CONNECTIONS": "redis_max_connections",
    "CELERY_REDIS_PASSWORD": "redis_password",
    "CELERY_REDIS_PORT": "redis_port",
    "CELERY_REDIS_RETRY_ON_TIMEOUT": "redis_retry_on_timeout",
    "CELERY_REDIS_SOCKET_CONNECT_TIMEOUT": "redis_socket_connect_timeout",
    "CELERY_REDIS_SOCKET_KEEPALIVE": "redis_socket_keepalive",
    "CELERY_REDIS_SOCKET_TIMEOUT": "redis_socket_timeout",
    "CELERY_REDIS_USERNAME": "redis_username",
    "CELERY_REJECT_ON_WORKER_LOST": "task_reject_on_worker_lost",
    "CELERY_REMOTE_TRACEBACKS": "task_remote_tracebacks",
    "CELERY_REPR_MAXLEVELS": "task_repr_maxlevels",
    "CELERY_RESULT_BACKEND": "result_backend",
    "CELERY_RESULT_BACKEND_ALWAYS_RETRY": "result_backend_always_retry",
    "CELERY_RESULT_BACKEND_BASE_SLEEP_BETWEEN_RETRIES_MS": "result_backend_base_sleep_between_retries_ms",  # noqa: E501
    "CELERY_RESULT_BACKEND_MAX_RETRIES": "result_backend_max_retries",
    "CELERY_RESULT_BACKEND_MAX_SLEEP_BETWEEN_RETRIES_MS": "result_backend_max_sleep_between_retries_ms",  # noqa: E501
    "CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS": "result_backend_transport_options",
    "CELERY_RESULT_CHORD_EXPIRES": "result_chord_expires",
    "CELERY_RESULT_CHORD_JOIN_TIMEOUT": "result_chord_join_timeout",
    "CELERY_RESULT_CHORD_RETRY_INTERVAL": "result_chord_retry_interval",
    "CELERY_RESULT_COMPRESSION": "result_compression",
    "CELERY_RESULT_DBURI": "database_url",
    "CELERY_RESULT_DB_SHORT_LIVED_SESSIONS": "database_short_lived_sessions",
    "CELERY_RESULT_DB_TABLENAMES": "database_table_names",
    "CELERY_RESULT_ENGINE_OPTIONS": "database_engine_options",
    "CELERY_RESULT_EXCHANGE": "result_exchange",
    "CELERY_RESULT_EXCHANGE_TYPE": "result_exchange_type",
    "CELERY_RESULT_EXTENDED": "result_extended",
    "CELERY_RESULT_FAILURE_EXPIRES": "result_failure_expires",
    "CELERY_RESULT_PERSISTENT": "result_persistent",
    "CELERY_RESULT_SERIALIZER": "result_serializer",
    "CELERY_RETRY_ON_WORKER_LOST": "task_retry_on_worker_lost",
    "CELERY_ROUTES": "task_routes",
    "CELERY_SECURITY_CERTIFICATE": "security_certificate",
    "CELERY_SECURITY_CERT_STORE": "security_cert_store",
    "CELERY_SECURITY_DIGEST": "security_digest",
    "CELERY_SECURITY_KEY": "security_key",
    "CELERY_SECURITY_KEY_PASSWORD": "security_key_password",
    "CELERY_SEND_EVENTS": "worker_send_task_events",
    "CELERY_SEND_TASK_SENT_EVENT": "task_send_sent_event",
    "CELERY_STORE_EAGER_RESULT": "task_store_eager_result",
    "CELERY_STORE_ERRORS_EVEN_IF_IGNORED": "task_store_errors_even_if_ignored",
    "CELERY_TASK_PROTOCOL": "task_protocol",
    "CELERY_TASK_PUBLISH_RETRY": "task_publish_retry",
    "CELERY_TASK_PUBLISH_RETRY_POLICY": "task_publish_retry_policy",
    "CELERY_TASK_RESULT_EXPIRES": "result_expires",
    "CELERY_TASK_SERIALIZER": "task_serializer",
    "CELERY_TIMEZONE": "timezone",
    "CELERY_TRACK_STARTED": "task_track_started",
    "CELERY_WORKER_DIRECT": "worker_direct",
    "CONTROL_EXCHANGE": "control_exchange",
    "CONTROL_QUEUE_DURABLE": "control_queue_durable",
    "CONTROL_QUEUE_EXCLUSIVE": "control_queue_exclusive",
    "CONTROL_QUEUE_EXPIRES": "control_queue_expires",
    "CONTROL_QUEUE_TTL": "control_queue_ttl",
    "COSMOSDBSQL_COLLECTION_NAME": "cosmosdbsql_collection_name",
    "COSMOSDBSQL_CONSISTENCY_LEVEL": "cosmosdbsql_consistency_level",
    "COSMOSDBSQL_DATABASE_NAME": "cosmosdbsql_database_name",
    "COSMOSDBSQL_MAX_RETRY_ATTEMPTS": "cosmosdbsql_max_retry_attempts",
    "COSMOSDBSQL_MAX_RETRY_WAIT_TIME": "cosmosdbsql_max_retry_wait_time",
    "DATABASE_CREATE_TABLES_AT_SETUP": "database_create_tables_at_setup",
    "DATABASE_ENGINE_CALLBACK": "database_engine_callback",
    "DATABASE_TABLE_SCHEMAS": "database_table_schemas",
    "ENABLE_UTC": "enable_utc",
    "GCS_BASE_PATH": "gcs_base_path",
    "GCS_BUCKET": "gcs_bucket",
    "GCS_PROJECT": "gcs_project",
    "GCS_TTL": "gcs_ttl",
    "RESULT_ACCEPT_CONTENT": "result_accept_content",
    "S3_ACCESS_KEY_ID": "s3_access_key_id",
    "S3_BASE_PATH": "s3_base_path",
    "S3_BUCKET": "s3_bucket",
    "S3_ENDPOINT_URL": "s3_endpoint_url",
    "S3_REGION": "s3_region",
    "S3_SECRET_ACCESS_KEY": "s3_secret_access_key",
}
