"""Who may look at the dashboard and who may act: loopback, token, basic auth, read-only, CSRF.

- With neither a token nor basic auth, only loopback clients (127.0.0.0/8, ::1) are served; any
  other gets 403.
- With a token, a client sends ``Authorization: Bearer <token>``, or signs in once at ``/login``
  (the browser then holds an ``HttpOnly``, ``SameSite=Strict`` cookie derived from the token, not
  the token itself).
- With basic auth, ``Authorization: Basic`` (the browser asks for it).
- Actions (``POST /actions/...``) are refused in read-only mode (403). From a browser (a cookie or
  basic auth, which browsers send by themselves) they also need the CSRF token: the value of the
  ``aqueue_csrf`` cookie, which only a page of the dashboard can read, sent back in the
  ``X-CSRF-Token`` header; and an ``Origin`` header, when present, naming the dashboard's host.
  A script with a bearer token needs neither.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["CSRF_COOKIE", "SESSION_COOKIE", "Access", "AccessMiddleware", "is_loopback"]

SESSION_COOKIE = "aqueue_dashboard"
CSRF_COOKIE = "aqueue_csrf"
CSRF_HEADER = "x-csrf-token"

#: Paths served to anyone (the sign-in page and the stylesheet it uses).
_OPEN = ("/login", "/static/")


def is_loopback(host: str | None) -> bool:
    """True for a loopback address (``127.0.0.0/8``, ``::1``)."""
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass(frozen=True, slots=True)
class Access:
    """The dashboard's access rules.

    Attributes:
        token: the bearer token, or ``None``.
        basic: ``(user, password)`` for basic auth, or ``None``.
        read_only: refuse every action.
    """

    token: str | None = None
    basic: tuple[str, str] | None = None
    read_only: bool = False

    @property
    def open(self) -> bool:
        """No credentials: loopback clients only."""
        return self.token is None and self.basic is None

    def session(self) -> str:
        """The sign-in cookie's value: a digest of the token (the token is never stored)."""
        assert self.token is not None
        return hmac.new(
            self.token.encode(), b"aqueue-dashboard-session", hashlib.sha256
        ).hexdigest()

    def check_token(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def _basic_ok(self, header: str) -> bool:
        if self.basic is None or not header.lower().startswith("basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(user.encode(), self.basic[0].encode()) & hmac.compare_digest(
            password.encode(), self.basic[1].encode()
        )

    def who(self, conn: HTTPConnection) -> str | None:
        """How ``conn`` is authenticated (``"loopback"``, ``"bearer"``, ``"cookie"``, ``"basic"``),
        or ``None``."""
        if self.open:
            return "loopback" if is_loopback(conn.client.host if conn.client else None) else None
        header = conn.headers.get("authorization", "")
        if self.token is not None:
            if header.lower().startswith("bearer ") and self.check_token(header[7:].strip()):
                return "bearer"
            cookie = conn.cookies.get(SESSION_COOKIE, "")
            if cookie and hmac.compare_digest(cookie.encode(), self.session().encode()):
                return "cookie"
        if self._basic_ok(header):
            return "basic"
        return None


def csrf_ok(conn: HTTPConnection) -> bool:
    """The request carries the CSRF cookie's value in its header, and comes from this host."""
    cookie = conn.cookies.get(CSRF_COOKIE, "")
    sent = conn.headers.get(CSRF_HEADER, "")
    if not cookie or not hmac.compare_digest(cookie.encode(), sent.encode()):
        return False
    origin = conn.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == conn.headers.get("host", "")


class AccessMiddleware:
    """Applies :class:`Access` to every HTTP request before the dashboard sees it, and gives
    each browser its CSRF cookie."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        path = scope["path"][len(scope.get("root_path", "")) :] or "/"
        if not path.startswith("/"):
            path = "/" + path
        refusal = self._refusal(conn, path, scope["method"])
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        csrf = conn.cookies.get(CSRF_COOKIE)
        if csrf:
            await self.app(scope, receive, send)
            return
        token = secrets.token_urlsafe(24)
        scope.setdefault("state", {})["csrf"] = token

        async def send_with_cookie(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                cookie: SimpleCookie = SimpleCookie()
                cookie[CSRF_COOKIE] = token
                cookie[CSRF_COOKIE]["path"] = scope.get("root_path") or "/"
                cookie[CSRF_COOKIE]["samesite"] = "Strict"
                headers = list(message.get("headers", []))  # type: ignore[call-overload]
                headers.append((b"set-cookie", cookie.output(header="").strip().encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_cookie)  # type: ignore[arg-type]

    def _refusal(self, conn: HTTPConnection, path: str, method: str) -> Response | None:
        access = self.access
        if path.startswith(_OPEN) and not access.open:
            return None
        who = access.who(conn)
        if who is None:
            if access.open:
                return PlainTextResponse(
                    "The dashboard without a token or basic auth serves loopback clients only.",
                    status_code=403,
                )
            if access.basic is not None and access.token is None:
                return PlainTextResponse(
                    "Sign in.",
                    status_code=401,
                    headers={"WWW-Authenticate": 'Basic realm="aqueue dashboard"'},
                )
            if method == "GET" and not path.startswith("/stream"):
                root = conn.scope.get("root_path", "")
                return RedirectResponse(f"{root}/login", status_code=303)
            return PlainTextResponse("Authentication required.", status_code=401)
        if path.startswith("/actions/"):
            if method != "POST":
                return PlainTextResponse("Actions are POST requests.", status_code=405)
            if access.read_only:
                return PlainTextResponse("The dashboard is read-only.", status_code=403)
            if who != "bearer" and not csrf_ok(conn):
                return PlainTextResponse("Missing or wrong CSRF token.", status_code=403)
        return None
