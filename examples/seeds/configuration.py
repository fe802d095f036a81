"""Configuring an app: one setting, several with ``update``, or a whole configuration module.

Mirrors: "Celery 初次使用" 配置 (``app.conf.task_serializer = 'json'``, ``app.conf.update(...)``,
``app.config_from_object('celeryconfig')``) and the configuration step of the proj layout in the
Redis tutorial (``app.config_from_object('proj.config')``, see ``proj/``).

Differences from Celery: a setting is checked when it is set, so a typo or a bad value raises
``ConfigurationError`` at once instead of being ignored; Celery 3's upper-case names
(``CELERY_RESULT_BACKEND``...) are refused with the name to use.

Run: ``python -m examples.seeds.configuration``
"""

from __future__ import annotations

import asyncio

from aqueue import Aqueue, Worker
from aqueue.exceptions import ConfigurationError

app = Aqueue("tasks")
app.conf.task_serializer = "json"
app.conf.update(
    task_serializer="json",
    accept_content=["json"],  # ignore other content
    result_serializer="json",
    timezone="Europe/Oslo",
    enable_utc=True,
)
app.config_from_object("examples.seeds.celeryconfig")


@app.task
async def add(x: int, y: int) -> int:
    return x + y


async def main() -> None:
    for name, value in (("task_serializr", "json"), ("timezone", "Europe/Olso")):
        try:
            app.conf.update({name: value})
        except ConfigurationError as exc:
            print("ConfigurationError:", exc)
    print("timezone:", app.conf.timezone, "| broker:", app.conf.broker_url)
    async with Worker(app):
        print("add(4, 4) =", await (await add.delay(4, 4)))
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())
