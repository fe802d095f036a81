"""The dashboard as an ASGI application (Starlette routes, Jinja2 templates, server-sent events).

Every page is rendered on the server. A page holds its live part in ``<div id="live">``; the
browser script (``static/dashboard.js``) listens on ``/stream`` (server-sent events) and, when
what the page shows has changed, fetches the page again with the ``X-Fragment`` header, which
answers with that part alone, and swaps it in: live pages, no reloads, no client-side rendering
of task data (so nothing a task carries is ever inserted as HTML: the templates escape it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import Receive, Scope, Send

from aqueue.dashboard import pages
from aqueue.dashboard.access import CSRF_COOKIE, SESSION_COOKIE, Access, AccessMiddleware
from aqueue.dashboard.actions import run_action
from aqueue.dashboard.monitor import Monitor
from aqueue.exceptions import AqueueError

if TYPE_CHECKING:
    from aqueue.app import Aqueue

__all__ = ["Dashboard"]

HERE = Path(__file__).parent

#: Seconds between two keep-alive comments on an idle event stream.
KEEPALIVE = 15.0

Page = Callable[[Request], Awaitable[tuple[str, dict[str, Any]]]]


def _ago(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    seconds = max(0.0, time.time() - epoch)
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _clock(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    try:
        return datetime.fromtimestamp(epoch).strftime("%H:%M:%S.%f")[:-3]
    except (OverflowError, OSError, ValueError):  # a time no date holds: a worker's bad clock
        return "?"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template, whatever its name: task data is never HTML
    )
    env.filters.update(ago=_ago, clock=_clock, seconds=_seconds)
    return env


class Dashboard:
    """The dashboard of ``app``: an ASGI application.

    Serve it alone (``aqueue dashboard -A proj``) or mount it in your own Starlette or FastAPI
    application (``api.mount("/dashboard", Dashboard(app, token=...))``). It starts watching the
    app's events on its first request; :meth:`aclose` stops it.

    Args:
        app: the app to show.
        token: a bearer token to require (sign-in page for browsers), or ``None``.
        basic_auth: ``(user, password)`` to require, or ``None``.
        read_only: refuse every action.
        max_tasks: task records kept at most (oldest first out).
        max_age: seconds a task record is kept.
        persist: keep the task history on the server the events come from, so that a
            restarted dashboard shows what happened before it started.

    With neither ``token`` nor ``basic_auth``, only loopback clients are served.
    """

    def __init__(
        self,
        app: Aqueue,
        *,
        token: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        read_only: bool = False,
        max_tasks: int = 100_000,
        max_age: float = 86_400.0,
        persist: bool = True,
    ) -> None:
        self.app = app
        self.access = Access(token or None, basic_auth, read_only)
        self.monitor = Monitor(app, max_tasks=max_tasks, max_age=max_age, persist=persist)
        self.templates = Jinja2Templates(env=_environment())
        page = self._page
        routes = [
            Route("/", page(self._overview)),
            Route("/workers", page(self._workers)),
            Route("/tasks", page(self._tasks)),
            Route("/tasks/{task_id:str}", page(self._task)),
            Route("/workflows", page(self._workflows)),
            Route("/workflows/{workflow_id:str}", page(self._workflow)),
            Route("/queues", page(self._queues)),
            Route("/beat", page(self._beat)),
            Route("/stream", self._stream),
            Route("/actions/{name:str}", self._action, methods=["POST"]),
            Route("/login", self._login, methods=["GET", "POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
        self.starlette = Starlette(routes=routes)
        self._asgi = AccessMiddleware(self.starlette, self.access)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        await self._asgi(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def aclose(self) -> None:
        """Stop watching (and write the history not yet written)."""
        await self.monitor.stop()

    # -- pages -------------------------------------------------------------------------------

    def _page(self, build: Page) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                await self.monitor.start()
                template, context = await build(request)
            except AqueueError as exc:
                template, context = "error.html", {"error": str(exc)}
            fragment = request.headers.get("x-fragment") == "1"
            name = f"fragments/{template}" if fragment else template
            return self.templates.TemplateResponse(
                request, name, {**self._common(request), **context}
            )

        return endpoint

    def _common(self, request: Request) -> dict[str, Any]:
        csrf = request.cookies.get(CSRF_COOKIE) or request.scope.get("state", {}).get("csrf", "")
        return {
            "base": request.scope.get("root_path", ""),
            "csrf": csrf,
            "read_only": self.access.read_only,
            "monitor": self.monitor,
            "app_name": self.app.main,
            "path": request.url.path[len(request.scope.get("root_path", "")) :] or "/",
        }

    async def _overview(self, request: Request) -> tuple[str, dict[str, Any]]:
        return "overview.html", pages.overview(self.monitor)

    async def _workers(self, request: Request) -> tuple[str, dict[str, Any]]:
        return "workers.html", pages.workers(self.monitor)

    async def _tasks(self, request: Request) -> tuple[str, dict[str, Any]]:
        return "tasks.html", pages.tasks(self.monitor, request.query_params)

    async def _task(self, request: Request) -> tuple[str, dict[str, Any]]:
        return "task.html", await pages.task(self.monitor, request.path_params["task_id"])

    async def _workflows(self, request: Request) -> tuple[str, dict[str, Any]]:
        return "workflows.html", pages.workflows(self.monitor)

    async def _workflow(self, request: Request) -> tuple[str, dict[str, Any]]:
        return "workflow.html", pages.workflow(self.monitor, request.path_params["workflow_id"])

    async def _queues(self, request: Request) -> tuple[str, dict[str, Any]]:
        return "queues.html", await pages.queues(self.monitor)

    async def _beat(self, request: Request) -> tuple[str, dict[str, Any]]:
        return "beat.html", await pages.beat(self.monitor)

    # -- live updates, actions, sign-in ------------------------------------------------------

    async def _stream(self, request: Request) -> Response:
        await self.monitor.start()

        async def notes() -> AsyncIterator[bytes]:
            async with self.monitor.subscribe() as queue:
                # Subscribed: every change from now on comes as a note. What changed between
                # the page's rendering and now is caught by the page fetching its live part
                # again on this first note.
                yield b"retry: 2000\n\n" + b'data: {"kinds": ["*"], "tasks": []}\n\n'
                while True:
                    try:
                        # Not wait_for: on 3.11 it loses the server's cancel when a note comes
                        # in the same step, and the stream would go on for a closed page.
                        async with asyncio.timeout(KEEPALIVE):
                            note = await queue.get()
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    yield b"data: " + note + b"\n\n"

        return StreamingResponse(
            notes(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _action(self, request: Request) -> Response:
        await self.monitor.start()
        status, answer = await run_action(
            self.monitor, request.path_params["name"], await request.body()
        )
        return JSONResponse(answer, status_code=status)

    async def _login(self, request: Request) -> Response:
        base = request.scope.get("root_path", "")
        error = None
        if request.method == "POST":
            # A one-field form: parsed here, so the extra needs no multipart library.
            form = parse_qs((await request.body())[:4096].decode(errors="replace"))
            token = (form.get("token") or [""])[0]
            if self.access.check_token(token):
                response = RedirectResponse(f"{base}/", status_code=303)
                response.set_cookie(
                    SESSION_COOKIE,
                    self.access.session(),
                    path=base or "/",
                    httponly=True,
                    samesite="strict",
                    secure=request.url.scheme == "https",
                )
                return response
            error = "Wrong token."
        return self.templates.TemplateResponse(
            request,
            "login.html",
            {"base": base, "error": error, "app_name": self.app.main},
            status_code=401 if error else 200,
        )
