"""The Redis transport's Lua scripts, one ``<name>.lua`` file each in this folder.

Each file starts with a comment naming its ``KEYS`` and ``ARGV`` and what it returns. A file is
read once per process (:func:`source`), with the pieces it names on a line ``-- include:
<piece>`` put in their place (``_<piece>.lua``: Lua helpers several scripts share, since
each script runs on its own); :func:`register` wraps it in redis-py's
:class:`~redis.commands.core.AsyncScript`, which runs it by SHA (``EVALSHA``) and sends the text
(``SCRIPT LOAD``) only when the server does not know it yet - after a restart or a
``SCRIPT FLUSH`` - never on every call. Callers keep the registered script per client.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

__all__ = ["register", "source"]


_INCLUDE = re.compile(r"^-- include: (_\w+)$", re.MULTILINE)


@cache
def source(name: str) -> str:
    """The text of ``lua/<name>.lua`` (e.g. ``"fetch"``), read once per process, each
    ``-- include: _<piece>`` line replaced by the text of ``lua/_<piece>.lua``.

    Raises:
        FileNotFoundError: there is no such script or piece (a packaging error: the ``.lua``
            files are package data).
    """
    return _INCLUDE.sub(lambda line: _read(line.group(1)).rstrip("\n"), _read(name))


def _read(name: str) -> str:
    return resources.files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


def register(client: aioredis.Redis, name: str) -> AsyncScript:
    """Script ``name`` bound to ``client``: calling it runs ``EVALSHA`` (loading it on NOSCRIPT).

    Raises:
        FileNotFoundError: there is no such script.
    """
    return client.register_script(source(name))
