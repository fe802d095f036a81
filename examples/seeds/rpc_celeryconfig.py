"""The tutorial's ``celeryconfig.py`` as written, RabbitMQ alone: ``pyamqp://`` and ``rpc://``.

Mirrors: "Celery 初次使用" 配置 step 6 (``broker_url = 'pyamqp://'``, ``result_backend =
'rpc://'`` and the serializer, timezone and UTC settings; ``python -m celeryconfig`` to check it).
``rpc_results.py`` loads it with ``app.config_from_object``.

``pyamqp://`` is Celery's name for ``amqp://``: guest:guest at localhost:5672, vhost ``/``.
``rpc://`` sends each task's states back to the client that sent it, as AMQP messages on that
RabbitMQ; nothing is stored (docs/amqp.md, "Results over rpc://"). Running the module checks every
value without connecting::

    python -m examples.seeds.rpc_celeryconfig
"""

# No `from __future__ import annotations` here: it would be read as a setting named "annotations".

broker_url = "pyamqp://"
result_backend = "rpc://"

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
timezone = "Europe/Oslo"
enable_utc = True

if __name__ == "__main__":
    import sys

    from aqueue import Aqueue

    Aqueue("check").config_from_object(sys.modules[__name__])
    print("configuration OK")
