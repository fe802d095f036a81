"""A configuration module, loaded with ``app.config_from_object("examples.seeds.celeryconfig")``.

Mirrors: "Celery 初次使用" 配置 (the ``celeryconfig.py`` with ``broker_url``, ``result_backend``,
``task_serializer``, ``result_serializer``, ``accept_content``, ``timezone``, ``enable_utc``, and
``python -m celeryconfig`` to check it).

Names are Celery's lowercase ones. Running the module checks every value, as the tutorial's
``python -m celeryconfig`` does for syntax, but further: an unknown name or a bad value raises
``ConfigurationError`` naming the setting::

    python -m examples.seeds.celeryconfig
"""

# No `from __future__ import annotations` here: it would be read as a setting named "annotations".

# memory:// so that configuration.py runs in one process; a deployment names its server here,
# e.g. "redis://127.0.0.1:6379/0"; Celery's 'pyamqp://' + 'rpc://' as written: rpc_celeryconfig.py.
broker_url = "memory://"
result_backend = "memory://"

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
