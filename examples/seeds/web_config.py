"""The production settings of the web tutorial, with aqueue's (Celery 4+) lowercase names.

Mirrors: "Celery 在 web 开发中的运用" 基本配置 (``BROKER_URL``, ``CELERY_RESULT_BACKEND``,
``CELERY_TASK_SERIALIZER = 'msgpack'``, ``CELERY_RESULT_SERIALIZER``,
``CELERY_TASK_RESULT_EXPIRES``,
``CELERY_ACCEPT_CONTENT``, ``CELERY_ACKS_LATE``, ``CELERY_MESSAGE_COMPRESSION``,
``CELERYD_TASK_TIME_LIMIT``, ``CELERYD_CONCURRENCY``, ``CELERYD_PREFETCH_MULTIPLIER``,
``CELERYD_MAX_TASKS_PER_CHILD``, ``CELERY_DEFAULT_QUEUE``, ``CELERY_QUEUES``) and its data
serialisation table (json, msgpack and pickle are supported; XML and YAML are not).

Load it with ``app.config_from_object("examples.seeds.web_config")``; check it with::

    python -m examples.seeds.web_config

It names Redis servers, so it is not run against a worker here (the tutorial's broker is AMQP,
which is coming; an AMQP broker is paired with a Redis or SQLite result backend).
"""

# No `from __future__ import annotations` here: it would be read as a setting named "annotations".

broker_url = "redis://127.0.0.1:6379/0"
result_backend = "redis://127.0.0.1:6379/1"
task_serializer = "msgpack"  # needs the msgpack extra: pip install 'aqueue[msgpack]'
result_serializer = "msgpack"
result_expires = 60 * 20  # seconds a stored result is kept
accept_content = ["msgpack"]
task_acks_late = True  # aqueue's default already: ack after the result is stored
task_compression = "zlib"  # zlib only; Celery's bzip2 is not offered
task_time_limit = 5  # seconds; the task is cancelled (a coroutine) with TimeLimitExceeded
worker_concurrency = 4  # tasks in flight in one worker (coroutines, not processes); default 100
worker_prefetch_multiplier = 4
task_default_queue = "default"
# CELERYD_MAX_TASKS_PER_CHILD: no counterpart, a worker runs tasks in its own event loop.
# CELERY_QUEUES: queues need no declaration; AMQP exchanges and routing keys have no counterpart
# on Redis or SQLite. The topic queue ("topic.#" routing key) becomes a glob route:
task_routes = {"topic.*": {"queue": "topicqueue"}}


def _check() -> None:
    import sys

    from aqueue import Aqueue

    app = Aqueue("check")
    app.config_from_object(sys.modules[__name__])
    for name, value in app.conf.as_dict().items():
        print(f"{name:<28} {value!r}")


if __name__ == "__main__":
    _check()
