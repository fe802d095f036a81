"""Task decorator options (name, serializer, bind, base) and sending a task by name.

Mirrors: "Celery 在 web 开发中的运用" 使用步骤 (``@celery.task def hello_world()``, sent with
``hello_world.delay()``), 装饰器参数 (``name``, ``serializer``, ``bind``, ``base``) and 调用任务
(``delay``, ``apply_async``, and ``send_task`` for a task this process has not imported).

Unlike Celery, a misspelt option (``@app.task(max_retires=3)``) raises ``ConfigurationError`` at
once, with the closest valid name.

Run: ``python -m examples.seeds.task_options``
"""

from __future__ import annotations

import asyncio
from typing import Any

from aqueue import Aqueue, Task, Worker
from aqueue.exceptions import ConfigurationError

# msgpack must be accepted by the worker for `greet`, whose messages use it.
app = Aqueue("web", broker="memory://", backend="memory://", accept_content=["json", "msgpack"])


class AuditedTask(Task[Any, Any]):
    async def after_return(self, status: str, retval: Any, task_id: str, *rest: Any) -> None:
        print(f"[audit] {self.name} {status} -> {retval!r}")


@app.task
async def hello_world() -> str:
    return "hello_world"


@app.task(name="web.greet", serializer="msgpack", bind=True, base=AuditedTask)
async def greet(self: Any, who: str) -> str:
    return f"hello {who} from {self.name} (try {self.request.retries})"


async def main() -> None:
    try:

        @app.task(max_retires=3)
        async def typo() -> None: ...

    except ConfigurationError as exc:
        print("ConfigurationError:", exc)

    async with Worker(app):
        r = await hello_world.delay()
        print(await r.get(timeout=1))
        r = await greet.apply_async(("web",))
        print(await r.get(timeout=1))
        r = await app.send_task("web.greet", args=("send_task",))  # by name only
        print(await r.get(timeout=1))
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())
