"""Using aqueue from a Flask app: create the app from Flask's config, send tasks from views.

Mirrors: "Celery 在 web 开发中的运用" 在flask中使用celery (``app = create_app(CONFIG)``,
``celery = CeleryApp(app.name)``, ``celery.conf.update(app.config)``, ``@celery.task def
hello_world()``, ``r = hello_world.delay()`` from a view, and the result methods of its table).

Two differences from the tutorial:

- ``conf.update`` refuses unknown names, and Flask's config holds Flask's own (``DEBUG``,
  ``SECRET_KEY``...), so aqueue's settings live in one section, ``AQUEUE``, passed on whole.
- Flask views are synchronous, and aqueue's client is asyncio. :mod:`aqueue.sync` runs it on one
  background event loop per process and blocks the view until the answer comes:
  ``sync.delay(hello_world)`` where the tutorial has ``hello_world.delay()``, and a result handle
  with Celery's ``get``/``state``/``ready``. Every request shares its connections, from any
  server thread, and a gunicorn ``--preload`` worker (a forked child) gets its own. (An async
  framework such as Quart or FastAPI awaits ``hello_world.delay()`` directly.)

Needs Flask (``pip install flask``). The demo below runs Flask's test client and, on the sync
client's loop, a worker on ``memory://``. In production the worker is its own process
(``aqueue worker -A examples.seeds.flask_app``) and the broker a server: set
``AQUEUE_BROKER_URL`` (e.g. ``redis://127.0.0.1:6379/0``) for both.

Run: ``python -m examples.seeds.flask_app``
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

from aqueue import Aqueue, Worker, sync

CONFIG = {
    "DEBUG": False,
    "AQUEUE": {"broker_url": os.environ.get("AQUEUE_BROKER_URL", "memory://")},
}


def create_app(config: dict[str, Any]) -> Flask:
    app = Flask(__name__)
    app.config.update(config)
    return app


app = create_app(CONFIG)
celery = Aqueue(app.name)
celery.conf.update(app.config["AQUEUE"])


@celery.task
async def hello_world() -> str:
    return "hello_world"


@app.post("/hello")
def hello() -> dict[str, Any]:
    r = sync.delay(hello_world)
    return {"task_id": r.id}


@app.get("/result/<task_id>")
def result(task_id: str) -> dict[str, Any]:
    r = sync.AsyncResult(celery, task_id)
    value = r.get(timeout=10)  # waits for the worker, as Celery's get does
    return {"ready": r.ready(), "state": r.state, "result": value}


def main() -> None:
    worker = Worker(celery)
    sync.call(worker.start)  # a worker in this process, for the demo only
    try:
        client = app.test_client()
        task_id = client.post("/hello").get_json()["task_id"]
        print("POST /hello ->", task_id)
        print(f"GET /result/{task_id[:8]}... ->", client.get(f"/result/{task_id}").get_json())
    finally:
        sync.call(worker.stop)
        sync.shutdown()


if __name__ == "__main__":
    main()
