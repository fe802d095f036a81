"""Content types for task arguments and results: ``json`` (orjson), ``msgpack``, ``pickle``.

A serializer turns a Python value into bytes and back. ``json`` is the default and the fast path:
a JSON message is one ``orjson.dumps`` call, arguments inline. Other content types are carried as
base64 inside the JSON envelope, so a worker can always read a message's id and task name even when
it cannot decode the arguments (and can then dead-letter it with the reason).

``pickle`` runs code on load, so, as in Celery, it is refused unless listed in ``accept_content``.
"""

from __future__ import annotations

import pickle
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from aqueue.exceptions import ConfigurationError, ContentDisallowed, DecodeError, EncodeError

CONTENT_TYPES = ("json", "msgpack", "pickle")
COMPRESSIONS = ("zlib",)


@dataclass(frozen=True, slots=True)
class Serializer:
    """A named pair of functions: ``dumps(value) -> bytes`` and ``loads(bytes) -> value``."""

    name: str
    dumps: Callable[[Any], bytes]
    loads: Callable[[bytes], Any]


def _json_dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def _msgpack() -> Serializer:
    try:
        import msgpack
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigurationError(
            "serializer 'msgpack' needs the msgpack package: pip install 'aqueue[msgpack]'"
        ) from None

    def dumps(value: Any) -> bytes:
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]

    def loads(data: bytes) -> Any:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)

    return Serializer("msgpack", dumps, loads)


_SERIALIZERS: dict[str, Serializer] = {
    "json": Serializer("json", _json_dumps, orjson.loads),
    "pickle": Serializer("pickle", lambda v: pickle.dumps(v, protocol=5), pickle.loads),
}


def get_serializer(name: str) -> Serializer:
    """Return the serializer called ``name``.

    Raises:
        ConfigurationError: ``name`` is not one of ``json``, ``msgpack``, ``pickle``, or msgpack
            is not installed.
    """
    found = _SERIALIZERS.get(name)
    if found is None:
        if name != "msgpack":
            raise ConfigurationError(
                f"unknown serializer {name!r}: use one of {', '.join(CONTENT_TYPES)}"
            )
        found = _SERIALIZERS["msgpack"] = _msgpack()
    return found


def check_accepted(content_type: str, accept: Iterable[str]) -> None:
    """Raise :class:`ContentDisallowed` unless ``content_type`` is in ``accept``."""
    if content_type not in accept:
        raise ContentDisallowed(
            f"content type {content_type!r} is not in accept_content ({', '.join(accept)}); "
            f"add it to the accept_content setting to allow it"
        )


def dumps(value: Any, serializer: str, compression: str | None = None) -> bytes:
    """Serialise ``value`` with ``serializer``, then compress it if ``compression`` is ``"zlib"``.

    Raises:
        EncodeError: the value is not serialisable with that content type.
    """
    try:
        data = get_serializer(serializer).dumps(value)
    except (TypeError, ValueError, OverflowError, pickle.PicklingError, AttributeError) as exc:
        kind = type(value).__name__
        raise EncodeError(f"cannot serialise {kind} as {serializer}: {exc}") from exc
    if compression == "zlib":
        data = zlib.compress(data)
    elif compression is not None:
        raise ConfigurationError(f"unknown compression {compression!r}: use 'zlib' or none")
    return data


def loads(data: bytes, serializer: str, compression: str | None = None) -> Any:
    """Inverse of :func:`dumps`.

    Raises:
        DecodeError: the bytes are not valid for that content type or compression.
    """
    try:
        if compression == "zlib":
            data = zlib.decompress(data)
        elif compression is not None:
            raise DecodeError(f"unknown compression {compression!r}")
        return get_serializer(serializer).loads(data)
    except (DecodeError, ConfigurationError):
        raise
    except Exception as exc:
        raise DecodeError(f"cannot decode {serializer} body: {exc}") from exc
