"""Getting started, page 6: configuration, checked when it is set.

Run: ``python -m examples.tutorial.configuration`` (no server, nothing sent).
"""

from __future__ import annotations

import asyncio

from aqueue import Aqueue
from aqueue.exceptions import ConfigurationError


async def main() -> None:
    # --8<-- [start:ways]
    app = Aqueue("proj", broker="memory://", backend="memory://")  # URLs in the constructor
    app.conf.update(task_serializer="json", timezone="UTC")  # several at once
    app.conf.task_default_queue = "default"  # one, as an attribute
    app.conf["worker_prefetch_multiplier"] = 2  # or as a mapping item, as Celery's app.conf
    app.config_from_object("examples.tutorial.tutorial_config")  # a module path, module or object
    print("timezone:", app.conf.timezone, "| expires:", app.conf.result_expires, "s")
    print("concurrency:", app.conf["worker_concurrency"], "| acks late:", app.conf.task_acks_late)
    # --8<-- [end:ways]
    # --8<-- [start:errors]
    for bad in (
        {"task_serializr": "json"},  # a typo: the closest name is suggested
        {"worker_pool": "prefork"},  # a Celery setting aqueue has not: what to do instead
        {"CELERY_RESULT_BACKEND": "redis://"},  # Celery 3's name: the name to use
        {"result_expires": "soon"},  # a bad value
    ):
        try:
            app.conf.update(bad)
        except ConfigurationError as exc:
            print(f"{next(iter(bad))}: {str(exc)[:70]}...")
    # --8<-- [end:errors]
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())
