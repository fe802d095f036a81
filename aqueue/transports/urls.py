"""Transport-neutral URL helpers."""

from __future__ import annotations

__all__ = ["redacted_url"]

#: What stands for a password, as in kombu's ``maybe_sanitize_url`` (Celery's worker banner).
MASK = "**"


def redacted_url(url: str) -> str:
    """``url`` fit for logs and messages: its password masked, its query and fragment dropped.

    Any scheme: ``redis://:secret@host:6379/0`` -> ``redis://:**@host:6379/0``,
    ``amqp://user:pw@host//`` -> ``amqp://user:**@host//``; ``sqlite:///aqueue.db`` and
    ``memory://`` are unchanged. A query may hold credentials too, so none is shown. Each
    part of kombu's ``;``-separated list (``sentinel://:pw@a:26379;sentinel://:pw@b:26379``)
    is redacted alike.
    """
    if ";" in url:
        return ";".join(redacted_url(part) for part in url.split(";"))
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url.partition("?")[0]
    rest = rest.partition("#")[0].partition("?")[0]
    netloc, slash, path = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = f"{userinfo.partition(':')[0]}:{MASK}"
    netloc = f"{userinfo}{at}{host}"
    return f"{scheme}{sep}{netloc}{slash}{path}"
