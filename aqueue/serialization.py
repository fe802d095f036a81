"""Content types for task arguments and results, the types they carry, and compression.

A serializer turns a Python value into bytes and back. Built in: ``json`` (orjson, the default),
``msgpack`` and ``pickle``; more by :func:`register_serializer`. ``json`` is the fast path: a JSON
message is one ``orjson.dumps`` call, arguments inline. Other content types are carried as base64
inside the JSON envelope, so a worker can always read a message's id and task name even when it
cannot decode the arguments (and can then dead-letter it with the reason).

Faithful types
--------------
``json`` and ``msgpack`` give back the types that were sent, not their JSON look-alikes:
``datetime``, ``date`` and ``time`` (time zone kept), ``timedelta``, ``UUID``, ``Decimal``,
``bytes``/``bytearray`` (msgpack gives a ``bytearray`` back as ``bytes``: it packs both as
binary), ``set``/``frozenset``, integers beyond 64 bits, dicts with keys that are not strings
(``{1: "a"}`` stays ``{1: "a"}``), and every type given to :func:`register_type`
(dataclasses and Pydantic models in one line: ``register_type(Point)``). In JSON a typed value is
the object ``{"__type__": name, "__value__": value}`` (kombu's shape); in msgpack it is an
extension type. A value that no rule covers raises :class:`EncodeError` naming its type and where
it is (``args[1]``, ``kwargs['when']``, ``args[0]['items'][3]``).

Two JSON shapes are kept as JSON has them and given back by the task's annotation instead
(:func:`argument_coercer`): a ``tuple`` travels as a list (a parameter annotated ``tuple[...]`` or
with a ``NamedTuple`` gets a tuple again; msgpack keeps tuples on its own) and an ``Enum`` member
as its value (a parameter annotated with the Enum class gets the member). NaN and infinities have
no JSON form: orjson writes ``null`` (msgpack keeps them).

Plain JSON values (str, int, float, bool, None, lists and string-keyed dicts of them) take the
fast path: orjson encodes them in C and two byte searches of its output confirm nothing typed is
inside. Only a message that holds a typed value (or something that looks like one, such as a
string shaped like a UUID) is walked in Python.

``pickle`` runs code on load, so, as in Celery, it is refused unless listed in ``accept_content``.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import inspect
import pickle
import re
import types
import typing
import uuid
import zlib
import zoneinfo
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import orjson

from aqueue.exceptions import ConfigurationError, ContentDisallowed, DecodeError, EncodeError

__all__ = [
    "COMPRESSIONS",
    "CONTENT_TYPES",
    "Serializer",
    "argument_coercer",
    "check_accepted",
    "dumps",
    "dumps_call",
    "dumps_message",
    "dumps_record",
    "get_serializer",
    "is_content_type",
    "loads",
    "loads_document",
    "register_serializer",
    "register_type",
    "serializer_names",
]

#: The built-in serializers (more can be added with :func:`register_serializer`).
CONTENT_TYPES = ("json", "msgpack", "pickle")
COMPRESSIONS = ("zlib",)

TYPE_KEY = "__type__"
VALUE_KEY = "__value__"
_TAG = b'"__type__"'  # in orjson's output only where a key (or a whole string) is exactly this
# Every UUID orjson writes ends like this; a search anchored on "-" is a fast byte scan.
_UUID_TAIL = re.compile(rb"-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\"")
# orjson raises TypeError for these instead of writing their JSON look-alikes, so they reach the
# tagging walk: datetime/date/time, dataclasses, and subclasses of str/int/dict/list.
_STRICT = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_STRICT |= orjson.OPT_PASSTHROUGH_SUBCLASS
_SCALARS = frozenset({str, int, float, bool, type(None)})
_INT_RANGE = (-(2**63), 2**64 - 1)  # what orjson and msgpack encode as integers
_MSGPACK_EXT = 1  # the msgpack extension code of a typed value: [name, value]


# -- registered types ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Codec:
    """How one type travels: ``encode(obj)`` gives a serialisable value, ``decode`` inverts it."""

    cls: type
    name: str
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


_BY_TYPE: dict[type, _Codec] = {}
_BY_NAME: dict[str, _Codec] = {}
_RESOLVED: dict[type, _Codec | None] = {}  # lookups through the MRO, cached
_BUILTIN_NAMES: set[str] = set()


def register_type(
    cls: type,
    name: str | None = None,
    encode: Callable[[Any], Any] | None = None,
    decode: Callable[[Any], Any] | None = None,
) -> None:
    """Make ``cls`` travel as itself in task arguments and results (json and msgpack).

    As kombu's ``register_type``: ``encode(obj)`` returns a value that can be serialised (it may
    hold other registered types), ``decode(value)`` builds the object again. Subclasses of
    ``cls`` use its codec unless registered themselves. Register the type in the producer and
    in the worker (import the module that registers it from both).

    Args:
        cls: the type, e.g. ``Point`` or ``Money``.
        name: its name on the wire; default ``module.QualName``. Keep it stable.
        encode: ``obj -> value``; default for a dataclass its ``__init__`` fields as a dict,
            for a Pydantic model ``model_dump()``.
        decode: ``value -> obj``; default for a dataclass ``cls(**value)``, for a Pydantic
            model ``cls.model_validate(value)``.

    Raises:
        ConfigurationError: ``cls`` is not a class, is a JSON type or an Enum (Enum members
            travel as their value and come back through the parameter's annotation), ``name``
            is a built-in type's, or ``encode``/``decode`` are missing for a class that is not
            a dataclass or Pydantic model.
    """
    if not isinstance(cls, type):
        raise ConfigurationError(f"register_type() takes a class, not {cls!r}")
    if cls in _SCALARS or cls in (list, dict, tuple):
        raise ConfigurationError(f"{cls.__name__} is a JSON type already: it needs no codec")
    if issubclass(cls, enum.Enum):
        raise ConfigurationError(
            f"{cls.__name__} is an Enum: its members travel as their value; annotate the task's "
            f"parameter with {cls.__name__} to get the member back"
        )
    name = name or f"{cls.__module__}.{cls.__qualname__}"
    if name in _BUILTIN_NAMES:
        raise ConfigurationError(f"type name {name!r} is aqueue's own: choose another name")
    default_encode, default_decode = _default_codec(cls)
    encode = encode or default_encode
    decode = decode or default_decode
    if encode is None or decode is None:
        raise ConfigurationError(
            f"register_type({cls.__name__}): give encode= and decode= (only dataclasses and "
            f"Pydantic models have defaults)"
        )
    _add_codec(_Codec(cls, name, encode, decode))


def _add_codec(codec: _Codec) -> None:
    old = _BY_NAME.get(codec.name)
    if old is not None and old.cls is not codec.cls:
        _BY_TYPE.pop(old.cls, None)  # the last registration of a name wins, as in kombu
    _BY_TYPE[codec.cls] = codec
    _BY_NAME[codec.name] = codec
    _RESOLVED.clear()


def _default_codec(cls: type) -> tuple[Callable[[Any], Any] | None, Callable[[Any], Any] | None]:
    """The default ``encode``/``decode`` of a dataclass or a Pydantic model, else ``None``s."""
    if dataclasses.is_dataclass(cls):
        names = tuple(f.name for f in dataclasses.fields(cls) if f.init)

        def encode_dataclass(obj: Any) -> dict[str, Any]:
            return {n: getattr(obj, n) for n in names}

        return encode_dataclass, lambda value: cls(**value)
    if callable(getattr(cls, "model_dump", None)) and callable(
        getattr(cls, "model_validate", None)
    ):
        return (lambda obj: obj.model_dump()), cls.model_validate  # type: ignore[attr-defined]
    return None, None


def _codec_for(cls: type) -> _Codec | None:
    """The codec of ``cls`` or of its nearest registered base class, or ``None``."""
    try:
        return _RESOLVED[cls]
    except KeyError:
        pass
    found = next((_BY_TYPE[base] for base in cls.__mro__ if base in _BY_TYPE), None)
    _RESOLVED[cls] = found
    return found


def _builtin(
    cls: type, name: str, encode: Callable[[Any], Any], decode: Callable[[Any], Any]
) -> None:
    _add_codec(_Codec(cls, name, encode, decode))
    _BUILTIN_NAMES.add(name)


def _b64(data: Any) -> str:
    return base64.b64encode(data).decode("ascii")


def _encode_datetime(value: datetime) -> str | list[str]:
    """ISO 8601 (its UTC offset kept), with the IANA zone's name for a ``ZoneInfo`` time."""
    if isinstance(value.tzinfo, zoneinfo.ZoneInfo):
        return [value.isoformat(), value.tzinfo.key]
    return value.isoformat()


def _decode_datetime(value: str | list[str]) -> datetime:
    if type(value) is str:
        return datetime.fromisoformat(value)
    fixed = datetime.fromisoformat(value[0])
    try:
        zoned = fixed.replace(tzinfo=zoneinfo.ZoneInfo(value[1]))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return fixed  # no such zone here (tzdata missing): the same instant, its offset kept
    if zoned.utcoffset() != fixed.utcoffset():  # the second of a repeated wall time
        zoned = zoned.replace(fold=1)
    return zoned


_builtin(datetime, "datetime", _encode_datetime, _decode_datetime)
_builtin(date, "date", date.isoformat, date.fromisoformat)
_builtin(time, "time", time.isoformat, time.fromisoformat)
_builtin(
    timedelta,
    "timedelta",
    lambda d: [d.days, d.seconds, d.microseconds],
    lambda v: timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
)
_builtin(uuid.UUID, "uuid", str, uuid.UUID)
_builtin(Decimal, "decimal", str, Decimal)
_builtin(bytes, "bytes", _b64, base64.b64decode)
_builtin(bytearray, "bytearray", _b64, lambda v: bytearray(base64.b64decode(v)))
_builtin(set, "set", list, set)
_builtin(frozenset, "frozenset", list, frozenset)
_builtin(tuple, "tuple", list, tuple)  # JSON: dict keys and set members only (see above)
_BUILTIN_NAMES.update({"dict", "int"})  # JSON only: dicts with other keys, big integers
_JSON_ONLY_CODECS = {tuple}  # JSON keeps tuples as lists, except where a key must be hashable


# -- JSON: tagging walk --------------------------------------------------------------------------


class _Refused(Exception):
    """A value no rule covers, with the path to it (innermost step first)."""

    def __init__(self, value: Any, reason: str) -> None:
        super().__init__(reason)
        self.value = value
        self.reason = reason
        self.path: list[str] = []


def _tagged(name: str, value: Any) -> dict[str, Any]:
    return {TYPE_KEY: name, VALUE_KEY: value}


def _to_json(value: Any) -> Any:
    """``value`` as plain JSON data, typed values tagged. Raises :class:`_Refused`."""
    cls = type(value)
    if cls in _SCALARS:
        if cls is int and not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
            return _tagged("int", str(value))
        return value
    if cls is list or cls is tuple:
        return [_step(_to_json, item, f"[{i}]") for i, item in enumerate(value)]
    if cls is dict:
        if TYPE_KEY not in value and all(type(k) is str for k in value):
            return {k: _step(_to_json, v, f"[{k!r}]") for k, v in value.items()}
        return _tagged("dict", [_pair(k, v) for k, v in value.items()])
    codec = _codec_for(cls)
    if codec is not None and codec.cls not in _JSON_ONLY_CODECS:
        encoded = codec.encode(value)
        if codec.cls in (set, frozenset):
            return _tagged(codec.name, [_step(_key_to_json, v, "{...}") for v in encoded])
        return _tagged(codec.name, _to_json(encoded))
    return _to_json(_fallback(value))


def _pair(key: Any, value: Any) -> list[Any]:
    return [_step(_key_to_json, key, f"[key {key!r}]"), _step(_to_json, value, f"[{key!r}]")]


def _key_to_json(value: Any) -> Any:
    """A dict key or set member: tuples stay tuples (a list is not hashable)."""
    if type(value) is tuple:
        return _tagged("tuple", [_step(_key_to_json, v, f"[{i}]") for i, v in enumerate(value)])
    return _to_json(value)


def _step(walk: Callable[[Any], Any], value: Any, where: str) -> Any:
    try:
        return walk(value)
    except _Refused as exc:
        exc.path.append(where)
        raise


def _fallback(value: Any) -> Any:
    """What a value of a type with no codec travels as: an Enum's value, a subclass of a plain
    type as that type. Raises :class:`_Refused` for anything else."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, str):
        return str.__str__(value)
    base: type[Any]
    for base in (int, float, dict, list, tuple):
        if isinstance(value, base):
            return base(value)
    cls = type(value)
    if dataclasses.is_dataclass(cls) or callable(getattr(cls, "model_dump", None)):
        kind = "a dataclass" if dataclasses.is_dataclass(cls) else "a Pydantic model"
        raise _Refused(value, f"{kind}; register it once: aqueue.register_type({cls.__name__})")
    raise _Refused(
        value,
        f"no rule for it; register it: aqueue.register_type({cls.__name__}, name, encode, decode)",
    )


def _from_json(value: Any) -> Any:
    """Inverse of :func:`_to_json`, in place where it can. Raises :class:`DecodeError`."""
    cls = type(value)
    if cls is list:
        for i, item in enumerate(value):
            if type(item) is list or type(item) is dict:
                value[i] = _from_json(item)
        return value
    if cls is dict:
        if len(value) == 2 and TYPE_KEY in value and VALUE_KEY in value:
            return _decode_tagged(value[TYPE_KEY], _from_json(value[VALUE_KEY]))
        for key, item in value.items():
            if type(item) is list or type(item) is dict:
                value[key] = _from_json(item)
    return value


def _decode_tagged(name: Any, inner: Any) -> Any:
    if name == "dict":
        return {(tuple(k) if type(k) is list else k): v for k, v in inner}
    if name == "int":
        return int(inner)
    codec = _BY_NAME.get(name) if type(name) is str else None
    if codec is None:
        raise DecodeError(
            f"typed value {name!r} is not registered in this process: call "
            f"aqueue.register_type() for it here too (import the module that does)"
        )
    try:
        return codec.decode(inner)
    except Exception as exc:
        raise DecodeError(f"cannot decode a {name!r} value: {exc}") from exc


# -- JSON: the serializer ------------------------------------------------------------------------


def _json_dumps(value: Any) -> bytes:
    """Faithful JSON: orjson in C for plain data, the tagging walk when anything is typed.

    Raises:
        _Refused: a value no rule covers (callers turn it into :class:`EncodeError`).
    """
    try:
        raw = orjson.dumps(value, option=_STRICT)
    except TypeError:  # typed values, keys that are not strings, integers beyond 64 bits
        return _json_dumps_tagged(value)
    if _TAG in raw or _has_uuid(raw):
        return _json_dumps_tagged(value)  # a UUID, or a dict that has a "__type__" key
    return raw


def _has_uuid(raw: bytes) -> bool:
    """True when orjson's output may hold a UUID (a string shaped like one, at least)."""
    return b"-" in raw and _UUID_TAIL.search(raw) is not None


#: Why a value that nests deeper than the serializer (or Python's stack) allows is refused.
_TOO_DEEP = "it nests too deep (or contains itself)"


def _json_dumps_tagged(value: Any) -> bytes:
    try:
        return orjson.dumps(_to_json(value))
    except RecursionError:
        raise _Refused(value, _TOO_DEEP) from None


def _json_loads(data: bytes) -> Any:
    if type(data) is not bytes:
        data = bytes(data)
    value = orjson.loads(data)
    if _TAG in data:
        return _from_json(value)
    return value


def _msgpack() -> Serializer:
    try:
        import msgpack
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigurationError(
            "serializer 'msgpack' needs the msgpack package: pip install 'aqueue[msgpack]'"
        ) from None

    def default(obj: Any) -> Any:
        if type(obj) is _BigInt:
            return msgpack.ExtType(_MSGPACK_EXT, pack(["int", str(obj.value)]))
        codec = _codec_for(type(obj))
        if codec is None:
            return _fallback(obj)  # packed again, so a subclass's base keeps its own rules
        return msgpack.ExtType(_MSGPACK_EXT, pack([codec.name, codec.encode(obj)]))

    def pack(value: Any) -> bytes:
        try:
            return pack_as_is(value)
        except OverflowError:  # msgpack refuses integers beyond 64 bits without asking default()
            return pack_as_is(_wrap_big_ints(value))

    def pack_as_is(value: Any) -> bytes:
        return msgpack.packb(  # type: ignore[no-any-return]
            value, default=default, use_bin_type=True, strict_types=True, datetime=False
        )

    def ext_hook(code: int, data: bytes) -> Any:
        if code != _MSGPACK_EXT:
            return msgpack.ExtType(code, data)
        name, inner = unpack(data)
        return _decode_tagged(name, inner)

    def unpack(data: bytes) -> Any:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=ext_hook)

    return Serializer("msgpack", pack, unpack, "application/x-msgpack")


@dataclass(frozen=True, slots=True)
class _BigInt:
    value: int


def _wrap_big_ints(value: Any) -> Any:
    """``value`` with every integer beyond 64 bits wrapped in :class:`_BigInt` (msgpack)."""
    cls = type(value)
    if cls is int:
        return value if _INT_RANGE[0] <= value <= _INT_RANGE[1] else _BigInt(value)
    if cls is list or cls is tuple or cls is set or cls is frozenset:
        return cls(_wrap_big_ints(v) for v in value)
    if cls is dict:
        return {_wrap_big_ints(k): _wrap_big_ints(v) for k, v in value.items()}
    return value


# -- serializers ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Serializer:
    """A named pair of functions: ``dumps(value) -> bytes`` and ``loads(bytes) -> value``.

    ``content_type`` is its MIME type (``application/json``); ``accept_content`` may list a
    serializer by name or by MIME type, as in Celery.
    """

    name: str
    dumps: Callable[[Any], bytes]
    loads: Callable[[bytes], Any]
    content_type: str


_SERIALIZERS: dict[str, Serializer] = {
    "json": Serializer("json", _json_dumps, _json_loads, "application/json"),
    "pickle": Serializer(
        "pickle",
        lambda v: pickle.dumps(v, protocol=5),
        pickle.loads,
        "application/x-python-serialize",
    ),
}
_MIME = {"json": "application/json", "msgpack": "application/x-msgpack"}
_MIME["pickle"] = "application/x-python-serialize"


def register_serializer(
    name: str,
    dumps: Callable[[Any], bytes],
    loads: Callable[[bytes], Any],
    content_type: str,
) -> None:
    """Add a serializer usable as ``serializer=name``, in ``task_serializer`` /
    ``result_serializer``, and in ``accept_content`` (by ``name`` or ``content_type``).

    Register it in the producer and the worker alike. Values reach ``dumps`` as they are:
    typed values are the serializer's own business.

    Args:
        name: the name on the wire, e.g. ``"yaml"``.
        dumps: ``value -> bytes``; raise TypeError or ValueError for what it cannot encode.
        loads: ``bytes -> value``.
        content_type: its MIME type, e.g. ``"application/x-yaml"``.

    Raises:
        ConfigurationError: ``name`` is a built-in serializer's, or an argument is of the
            wrong type.
    """
    if not isinstance(name, str) or not name or name in CONTENT_TYPES:
        raise ConfigurationError(
            f"serializer name {name!r} must be a new non-empty string (not "
            f"{', '.join(CONTENT_TYPES)})"
        )
    if not (callable(dumps) and callable(loads) and isinstance(content_type, str)):
        raise ConfigurationError("register_serializer() takes two functions and a MIME type")
    _SERIALIZERS[name] = Serializer(name, dumps, loads, content_type)
    _MIME[name] = content_type


def serializer_names() -> tuple[str, ...]:
    """Every serializer name: the built-in ones, then the registered ones."""
    return tuple(dict.fromkeys((*CONTENT_TYPES, *_SERIALIZERS)))


def is_content_type(value: str) -> bool:
    """True when ``value`` names a serializer, by name or MIME type (``accept_content``)."""
    return value in _MIME or value in _MIME.values()


def get_serializer(name: str) -> Serializer:
    """Return the serializer called ``name``.

    Raises:
        ConfigurationError: no serializer has that name, or msgpack is not installed.
    """
    found = _SERIALIZERS.get(name)
    if found is None:
        if name != "msgpack":
            raise ConfigurationError(
                f"unknown serializer {name!r}: use one of {', '.join(serializer_names())} "
                f"(or add one with aqueue.register_serializer)"
            )
        found = _SERIALIZERS["msgpack"] = _msgpack()
    return found


def check_accepted(content_type: str, accept: Iterable[str]) -> None:
    """Raise :class:`ContentDisallowed` unless ``content_type`` is in ``accept`` (by its
    name or its MIME type)."""
    if content_type in accept or _MIME.get(content_type, content_type) in accept:
        return
    raise ContentDisallowed(
        f"content type {content_type!r} is not in accept_content ({', '.join(accept)}); "
        f"add it to the accept_content setting to allow it"
    )


# -- encoding values, calls and documents --------------------------------------------------------


def dumps(
    value: Any, serializer: str, compression: str | None = None, *, what: str = "the value"
) -> bytes:
    """Serialise ``value`` with ``serializer``, then compress it if ``compression`` is ``"zlib"``.

    Args:
        what: how an error names the value, e.g. ``"the result of proj.add"``.

    Raises:
        EncodeError: the value (or a value inside it) is not serialisable with that content
            type; the message names its type and where it is.
        ConfigurationError: unknown serializer or compression.
    """
    return _compress(_encode(value, serializer, lambda path: what + "".join(path)), compression)


def dumps_call(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    serializer: str,
    compression: str | None = None,
    *,
    task: str | None = None,
) -> bytes:
    """Serialise a call's ``[args, kwargs]`` (a message body); errors name the argument.

    Raises:
        EncodeError: an argument is not serialisable, named as ``args[1]`` or ``kwargs['x']``.
        ConfigurationError: unknown serializer or compression.
    """
    return _compress(_encode([args, kwargs], serializer, _call_path(task)), compression)


def _call_path(task: str | None) -> Callable[[list[str]], str]:
    def where(path: list[str]) -> str:
        head = "args" if path and path[0] == "[0]" else "kwargs"
        text = head + "".join(path[1:])
        return f"{text} of {task}" if task else text

    return where


def _encode(value: Any, serializer: str, where: Callable[[list[str]], str]) -> bytes:
    codec = get_serializer(serializer)
    try:
        return codec.dumps(value)
    except _Refused as exc:  # msgpack's default() knows no path: find it
        if exc.reason == _TOO_DEEP:  # looking for the path would nest as deep again
            raise _encode_error(value, serializer, where([]), _TOO_DEEP) from None
        path = exc.path[::-1] or _locate(value, codec.dumps)[0]
        raise _encode_error(exc.value, serializer, where(path), exc.reason) from None
    except RecursionError:  # pickle's, msgpack's: the same answer, with no search for a path
        raise _encode_error(value, serializer, where([]), _TOO_DEEP) from None
    except (TypeError, ValueError, OverflowError, pickle.PicklingError, AttributeError) as exc:
        if "recursion" in str(exc).lower():  # orjson's and msgpack's own depth limits
            raise _encode_error(value, serializer, where([]), _TOO_DEEP) from exc
        path, culprit = _locate(value, codec.dumps)
        raise _encode_error(culprit, serializer, where(path), str(exc)) from exc


def _encode_error(value: Any, serializer: str, where: str, reason: str) -> EncodeError:
    cls = type(value)
    kind = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    return EncodeError(f"cannot serialise {where} ({kind}) as {serializer}: {reason}")


def _locate(value: Any, encode: Callable[[Any], bytes]) -> tuple[list[str], Any]:
    """The path to the innermost part of ``value`` that ``encode`` refuses, and that part."""
    items: Iterable[tuple[str, Any]]
    if isinstance(value, list | tuple):
        items = ((f"[{i}]", v) for i, v in enumerate(value))
    elif isinstance(value, dict):
        items = ((f"[{k!r}]", v) for k, v in value.items())
    else:
        return [], value
    for step, item in items:
        try:
            encode(item)
        except Exception:
            path, culprit = _locate(item, encode)
            return [step, *path], culprit
    return [], value


def _compress(data: bytes, compression: str | None) -> bytes:
    if compression is None:
        return data
    if compression == "zlib":
        return zlib.compress(data)
    raise ConfigurationError(f"unknown compression {compression!r}: use 'zlib' or none")


def loads(data: bytes, serializer: str, compression: str | None = None) -> Any:
    """Inverse of :func:`dumps`.

    Raises:
        DecodeError: the bytes are not valid for that content type or compression, or hold a
            typed value whose type is not registered in this process.
        ConfigurationError: unknown serializer.
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


# The keys of a message envelope or a result record that hold the user's values.
_DATA_KEYS = ("args", "kwargs", "result", "headers", "link", "link_error", "options")
# The document key listing the data keys whose values were tagged (absent: none were).
TAGGED_KEY = "tx"


def dumps_message(env: dict[str, Any]) -> bytes:
    """Encode a message envelope as JSON, the values it carries faithful.

    Its user values (``args``, ``kwargs``, ``headers``, ``link``, ``link_error``, ``options``)
    are encoded as by the ``json`` serializer. A call with scalar positional arguments and
    nothing else of the user's, such as ``add(2, 2)``, costs one type check and one
    ``orjson.dumps``; other plain values add one byte search. The keys whose values hold typed
    values are listed under ``"tx"``, so a reader walks those alone (:func:`loads_document`).
    ``env`` may be changed.

    Raises:
        EncodeError: a value is not serialisable; the message names it and the task.
    """
    if env["headers"] or env["link"] or env["link_error"] or env["options"]:
        return _dumps_fields(env)
    args, kwargs = env.get("args"), env.get("kwargs")
    flat_kwargs = not kwargs or _SCALARS.issuperset(map(type, kwargs.values()))
    if args and not _SCALARS.issuperset(map(type, args)):  # the common other case: args alone
        return _dumps_one(env, "args", args) if flat_kwargs else _dumps_fields(env)
    if not flat_kwargs:
        return _dumps_one(env, "kwargs", kwargs)
    try:
        return orjson.dumps(env)
    except TypeError:  # an integer beyond 64 bits
        return _dumps_fields(env, big_ints=True)


def dumps_record(rec: dict[str, Any]) -> bytes:
    """Encode a result record as JSON, its ``result`` faithful (see :func:`dumps_message`).

    Raises:
        EncodeError: the result is not serialisable; the message names what and the task.
    """
    result = rec["result"]
    if type(result) not in _SCALARS:
        return _dumps_one(rec, "result", result)
    try:
        return orjson.dumps(rec)
    except TypeError:  # an integer beyond 64 bits
        return _dumps_fields(rec, big_ints=True)


def _dumps_one(doc: dict[str, Any], key: str, value: Any) -> bytes:
    """``doc`` whose only user value that is not a scalar is ``doc[key]``."""
    raw, walked = _dumps_field(value, key, doc)
    doc[key] = orjson.Fragment(raw)
    if walked:
        doc[TAGGED_KEY] = [key]
    try:
        return orjson.dumps(doc)
    except TypeError:  # an integer beyond 64 bits elsewhere
        return _dumps_fields(doc, big_ints=True)


def _flat(value: Any) -> bool:
    """True for a scalar, or a list, tuple or string-keyed dict of scalars."""
    cls = type(value)
    if cls in _SCALARS:
        return True
    if cls is tuple or cls is list:
        return _SCALARS.issuperset(map(type, value))
    if cls is dict:
        return _SCALARS.issuperset(map(type, value.values()))
    return False


def _dumps_fields(doc: dict[str, Any], big_ints: bool = False) -> bytes:
    """``doc`` with each user value that is not flat encoded on its own (the careful path).

    Args:
        big_ints: orjson refused ``doc`` for an integer beyond 64 bits: flat values are encoded
            on their own too, since such an integer is flat to :func:`_flat` (a scalar, or in a
            list of scalars) yet orjson cannot write it inline.
    """
    tagged: list[str] = doc.get(TAGGED_KEY) or []
    for key in _DATA_KEYS:
        value = doc.get(key)
        if not value or type(value) is orjson.Fragment:
            continue  # absent, empty, a falsy scalar, or done
        if not big_ints and _flat(value) and _plain_keys(value):
            continue  # flat: orjson writes it inline
        raw, walked = _dumps_field(value, key, doc)
        doc[key] = orjson.Fragment(raw)
        if walked:
            tagged.append(key)
    if tagged:
        doc[TAGGED_KEY] = tagged
    try:
        return orjson.dumps(doc)
    except TypeError:  # an integer beyond 64 bits in a flat value (or outside the user's data)
        if big_ints:
            raise
        return _dumps_fields(doc, big_ints=True)


def _plain_keys(value: Any) -> bool:
    """False for a dict with a key that is not a string (orjson would refuse it)."""
    return type(value) is not dict or all(type(k) is str for k in value)


def _dumps_field(value: Any, key: str, doc: dict[str, Any]) -> tuple[bytes, bool]:
    """``value`` as JSON, and whether it was walked (so holds tags and escaped dicts)."""
    try:
        try:
            raw = orjson.dumps(value, option=_STRICT)
        except TypeError:  # typed values, keys that are not strings, integers beyond 64 bits
            return _json_dumps_tagged(value), True
        if b"-" in raw and _UUID_TAIL.search(raw) is not None:  # a UUID, or a look-alike
            return _json_dumps_tagged(value), True
        return raw, False
    except _Refused as exc:
        name = doc.get("task") or doc.get("name")
        where = ("the result" if key == "result" else key) + "".join(exc.path[::-1])
        where += f" of {name}" if name else ""
        raise _encode_error(exc.value, "json", where, exc.reason) from None


def loads_document(raw: bytes) -> Any:
    """Parse a message envelope or result record (:func:`dumps_message`, :func:`dumps_record`):
    the values of the keys listed under ``"tx"`` get their types back.

    Raises:
        orjson.JSONDecodeError: ``raw`` is not JSON.
        DecodeError: it holds a typed value whose type is not registered in this process.
    """
    doc = orjson.loads(raw)
    if type(doc) is dict and TAGGED_KEY in doc:
        tagged = doc.pop(TAGGED_KEY)
        for key in tagged if type(tagged) is list else ():
            if key in _DATA_KEYS and key in doc:
                doc[key] = _from_json(doc[key])
    return doc


# -- giving JSON shapes back their annotated types -----------------------------------------------

_Convert = Callable[[Any], Any]


def argument_coercer(
    fn: Callable[..., Any], skip_first: bool = False
) -> Callable[[tuple[Any, ...], dict[str, Any]], tuple[tuple[Any, ...], dict[str, Any]]] | None:
    """A function that gives arguments the shapes ``fn`` annotates where JSON has none: a list
    for a ``tuple``/``tuple[...]``/``NamedTuple`` parameter becomes a tuple, a list for a
    ``set[...]``/``frozenset[...]`` one a set, a value for an ``Enum`` parameter its member;
    also inside ``list[...]``, ``dict[..., ...]`` and ``X | None``. ``None`` when ``fn``
    annotates none of these (the common case: nothing to do per call).

    Args:
        fn: the task's function.
        skip_first: ``bind=True`` tasks: the first parameter is the task itself.
    """
    try:
        hints = typing.get_type_hints(fn)
        params = list(inspect.signature(fn).parameters.values())
    except Exception:  # unresolvable annotations (a name defined later, a typo): no coercion
        return None
    if skip_first:
        params = params[1:]
    positional: list[_Convert | None] = []
    by_name: dict[str, _Convert] = {}
    star: _Convert | None = None
    for p in params:
        convert = _converter(hints.get(p.name))
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional.append(convert)
        elif p.kind is p.VAR_POSITIONAL:
            star = convert
        if convert is not None and p.kind is not p.POSITIONAL_ONLY:
            by_name[p.name] = convert
    if star is None and not by_name and not any(positional):
        return None
    return _Coercer(positional, by_name, star)


class _Coercer:
    __slots__ = ("by_name", "positional", "star")

    def __init__(
        self, positional: list[_Convert | None], by_name: dict[str, _Convert], star: _Convert | None
    ) -> None:
        self.positional = positional
        self.by_name = by_name
        self.star = star

    def __call__(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        out = list(args)
        for i, value in enumerate(out):
            convert = self.positional[i] if i < len(self.positional) else self.star
            if convert is not None:
                out[i] = convert(value)
        if kwargs and self.by_name:
            kwargs = {
                k: (self.by_name[k](v) if k in self.by_name else v) for k, v in kwargs.items()
            }
        return tuple(out), kwargs


def _converter(hint: Any) -> _Convert | None:
    """A conversion for values annotated ``hint``, or ``None`` when they need none."""
    if hint is None:
        return None
    origin, params = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(hint, type) and origin is None:
        return _class_converter(hint)
    if origin is typing.Union or origin is types.UnionType:
        others = [p for p in params if p is not type(None)]
        inner = _converter(others[0]) if len(others) == 1 else None
        return None if inner is None else (lambda v: v if v is None else inner(v))
    if origin is tuple:
        return _tuple_converter(params)
    if origin in (set, frozenset):
        item = _converter(params[0]) if params else None
        return lambda v: origin(map(item, v) if item else v) if type(v) is list else v
    if origin is list and params:
        item = _converter(params[0])
        return None if item is None else (lambda v: [item(x) for x in v] if type(v) is list else v)
    if origin is dict and len(params) == 2:
        value_conv = _converter(params[1])
        if value_conv is None:
            return None
        return lambda v: {k: value_conv(x) for k, x in v.items()} if type(v) is dict else v
    return None


def _class_converter(cls: type) -> _Convert | None:
    if issubclass(cls, enum.Enum):
        return lambda v: v if isinstance(v, cls) else _or_same(cls, v)
    if issubclass(cls, tuple):
        if hasattr(cls, "_fields"):  # a NamedTuple (msgpack gives back a plain tuple)
            return lambda v: cls(*v) if type(v) is list or type(v) is tuple else v
        return lambda v: tuple(v) if type(v) is list else v
    if cls in (set, frozenset):
        return lambda v: cls(v) if type(v) is list else v
    return None


def _or_same(cls: Callable[[Any], Any], value: Any) -> Any:
    try:
        return cls(value)
    except (ValueError, TypeError):
        return value  # not a member: the task sees what was sent


def _tuple_converter(params: tuple[Any, ...]) -> _Convert:
    if len(params) == 2 and params[1] is Ellipsis:
        item = _converter(params[0])
        return lambda v: tuple(map(item, v) if item else v) if type(v) is list else v
    items = [_converter(p) for p in params if p != ()]
    if not any(items):
        return lambda v: tuple(v) if type(v) is list else v

    def convert(v: Any) -> Any:
        if type(v) is not list:
            return v
        return tuple(c(x) if c else x for c, x in zip(items, v, strict=False)) + tuple(
            v[len(items) :]
        )

    return convert
