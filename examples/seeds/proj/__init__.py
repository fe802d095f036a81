"""The ``proj`` package layout: app, configuration and tasks in their own modules.

Mirrors the Redis tutorial's 计划任务 section (``proj/celery.py``, ``proj/config.py``,
``proj/tasks.py``); ``celery.py`` is ``app.py`` here. Run it in one process with
``python -m examples.seeds.proj``, or with a worker of its own::

    aqueue worker -A examples.seeds.proj.tasks -l info
"""
