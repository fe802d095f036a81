"""Using aqueue from a Flask app: create the app from Flask's config, send tasks from views.

Mirrors: "Celery 在 web 开发中的运用" 在flask中使用celery (``app = create_app(CONFIG)``,
``celery = CeleryApp(app.name)``, ``celery.conf.update(app.config)``, ``@celery.task def
hello_world()``, ``r = hello_world.delay()`` from a view, and the result methods of its table).

Two differences from the tutorial:

- ``conf.update`` refuses unknown names, and Flask's config holds Flask's own (``DEBUG``,
  ``SECRET_KEY``...), so aqueue's settings live in one section, ``AQUEUE``, passed on whole.
- Flask views are synchronous, and aqueue's client is asyncio. One event loop in a background
  thread (``Portal`` below) serves every request: a view hands it a coroutine and waits for the
  answer, so connections are opened once and shared. (An async framework such as Quart or
  FastAPI awaits ``hello_world.delay()`` directly.)

Needs Flask (``pip install flask``). The demo below runs Flask's test client and, in the same
portal loop, a worker on ``memory://``. In production the worker is its own process
(``aqueue worker -A examples.seeds.flask_app``) and the broker a server, e.g. ``redis://``.

Run: ``python -m examples.seeds.flask_app``
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from flask import Flask

from aqueue import Aqueue, Worker

T = TypeVar("T")

CONFIG = {
    "DEBUG": False,
    "AQUEUE": {"broker_url": "memory://", "result_backend": "memory://"},
}


class Portal:
    """One event loop in a daemon thread; ``call`` runs a coroutine there from sync code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="aqueue-portal", daemon=True).start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 10) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


def create_app(config: dict[str, Any]) -> Flask:
    app = Flask(__name__)
    app.config.update(config)
    return app


app = create_app(CONFIG)
celery = Aqueue(app.name)
celery.conf.update(app.config["AQUEUE"])
portal = Portal()


@celery.task
async def hello_world() -> str:
    return "hello_world"


@app.post("/hello")
def hello() -> dict[str, Any]:
    r = portal.call(hello_world.delay())
    return {"task_id": r.id}


@app.get("/result/<task_id>")
def result(task_id: str) -> dict[str, Any]:
    r = celery.AsyncResult(task_id)
    return {
        "ready": portal.call(r.ready()),
        "state": portal.call(r.state()),
        "result": portal.call(r.get(timeout=1)),
    }


def main() -> None:
    worker = Worker(celery)
    portal.call(worker.start())
    try:
        client = app.test_client()
        task_id = client.post("/hello").get_json()["task_id"]
        print("POST /hello ->", task_id)
        print(f"GET /result/{task_id[:8]}... ->", client.get(f"/result/{task_id}").get_json())
    finally:
        portal.call(worker.stop())
        portal.call(celery.close())
        portal.close()


if __name__ == "__main__":
    main()
