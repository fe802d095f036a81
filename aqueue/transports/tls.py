"""TLS for a transport's connections, in one form for every transport.

Two ways to ask for TLS, as in Celery:

- the URL: ``rediss://host:port/db?ssl_ca_certs=/ca.pem&ssl_cert_reqs=required`` (redis-py's
  query parameters) or ``amqps://user:pw@host:port/vhost?cafile=/ca.pem`` (aio-pika's);
- the settings ``broker_use_ssl`` (the broker, Redis or RabbitMQ) and ``redis_backend_use_ssl``
  (a Redis result backend), with Celery's keys: for Redis ``ssl_ca_certs``, ``ssl_certfile``,
  ``ssl_keyfile``, ``ssl_cert_reqs`` (:data:`REDIS_KEYS`, redis-py's names); for RabbitMQ
  ``ca_certs``, ``certfile``, ``keyfile``, ``cert_reqs`` (:data:`AMQP_KEYS`, kombu's and
  py-amqp's). ``broker_use_ssl=True`` is TLS verified against the system's CAs.

A setting is read into :class:`TLSOptions` (:func:`from_setting`), which the app puts in the
:class:`~aqueue.transports.base.ConnectionOptions` of that server: the Redis transport hands it
to redis-py's connection pool, the AMQP transport to aio-pika's connection as an
:class:`ssl.SSLContext`. Set, it turns TLS on even for a ``redis://`` or ``amqp://`` URL (as
Celery and kombu do); where the URL's query names an option too, the URL's value wins (as
redis-py's ``from_url`` does).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aqueue.exceptions import ConfigurationError

__all__ = [
    "AMQP_KEYS",
    "CERT_REQS",
    "REDIS_KEYS",
    "KeySet",
    "TLSOptions",
    "client_certificate_hint",
    "from_setting",
    "tls_refusal",
]

#: ``cert_reqs`` values by name, as redis-py and Celery's Redis URLs spell them.
CERT_REQS: dict[str, ssl.VerifyMode] = {
    "required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
}


@dataclass(frozen=True, slots=True)
class TLSOptions:
    """How a connection speaks TLS: whom it trusts, who it is, what it checks.

    Attributes:
        ca_certs: path of a PEM file of the CA certificates to trust; ``None``: the system's.
        certfile: path of this client's certificate chain (PEM), for a server that asks for one.
        keyfile: path of that certificate's private key (PEM); ``None``: it is in ``certfile``.
        cert_reqs: whether the server's certificate is verified: :data:`ssl.CERT_REQUIRED`
            (the default), :data:`ssl.CERT_OPTIONAL` (the same for a client: a server always
            presents one) or :data:`ssl.CERT_NONE` (not verified: encryption without knowing
            who answers).
    """

    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    cert_reqs: ssl.VerifyMode = ssl.CERT_REQUIRED

    @property
    def check_hostname(self) -> bool:
        """True when the server's certificate must name the host of the URL: whenever it is
        verified (as redis-py and :func:`ssl.create_default_context` do)."""
        return self.cert_reqs != ssl.CERT_NONE

    def context(self) -> ssl.SSLContext:
        """A client-side :class:`ssl.SSLContext` with these options (reads the files now).

        Raises:
            ConfigurationError: a file cannot be read, or is not a PEM certificate or key.
        """
        try:
            context = ssl.create_default_context(cafile=self.ca_certs)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"TLS: cannot load the CA certificates {self.ca_certs!r}: {exc}"
            ) from exc
        context.check_hostname = self.check_hostname
        context.verify_mode = self.cert_reqs
        if self.certfile is not None:
            try:
                context.load_cert_chain(self.certfile, self.keyfile)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(
                    f"TLS: cannot load the client certificate {self.certfile!r} "
                    f"(key {self.keyfile or self.certfile!r}): {exc}"
                ) from exc
        elif self.keyfile is not None:
            raise ConfigurationError("TLS: a keyfile needs its certfile")
        return context


@dataclass(frozen=True, slots=True)
class KeySet:
    """The keys one kind of server takes in a ``*_use_ssl`` setting.

    Attributes:
        server: what to call the server in messages (``"Redis"``, ``"RabbitMQ"``).
        keys: the setting's key -> the :class:`TLSOptions` field it sets.
    """

    server: str
    keys: Mapping[str, str]

    def describe(self) -> str:
        """``"Redis takes ssl_ca_certs, ssl_certfile, ..."``."""
        return f"{self.server} takes {', '.join(self.keys)}"


#: Celery's keys for a Redis server (redis-py's connection arguments).
REDIS_KEYS = KeySet(
    "Redis",
    {
        "ssl_ca_certs": "ca_certs",
        "ssl_certfile": "certfile",
        "ssl_keyfile": "keyfile",
        "ssl_cert_reqs": "cert_reqs",
    },
)
#: kombu's and py-amqp's keys for RabbitMQ (:func:`ssl.wrap_socket`'s argument names).
AMQP_KEYS = KeySet(
    "RabbitMQ", {name: name for name in ("ca_certs", "certfile", "keyfile", "cert_reqs")}
)


def from_setting(
    name: str, value: Any, key_sets: Sequence[KeySet], *, allow_true: bool
) -> TLSOptions | None:
    """Read a ``broker_use_ssl`` / ``redis_backend_use_ssl`` value.

    Args:
        name: the setting's name, for messages.
        value: ``None`` or ``False`` (no TLS from the setting), ``True`` (where ``allow_true``:
            TLS verified against the system's CAs) or a dict whose keys all come from one of
            ``key_sets`` (an empty dict: TLS with the defaults).
        key_sets: the kinds of server the setting may be for.
        allow_true: ``True`` is a valid value.

    Returns:
        The options, or ``None`` for no TLS.

    Raises:
        ConfigurationError: not one of those types, an unknown key, keys of two kinds of server,
            a ``cert_reqs`` that is not ``ssl.CERT_*`` or ``"required"`` / ``"optional"`` /
            ``"none"``, or a file that is not a path.
    """
    if value is None or value is False:
        return None
    if value is True and allow_true:
        return TLSOptions()
    example = f"{{{next(iter(key_sets[0].keys))!r}: '/path/to/ca.pem'}}"
    if not isinstance(value, Mapping):
        shape = "True or a dict" if allow_true else "a dict"
        raise ConfigurationError(
            f"{name} must be {shape} of TLS options such as {example} (or False), "
            f"not {type(value).__name__}"
        )
    for key_set in key_sets:
        if set(value) <= set(key_set.keys):
            return _read(name, value, key_set)
    known = {key for key_set in key_sets for key in key_set.keys}
    unknown = [repr(key) for key in value if key not in known]
    takes = "; ".join(key_set.describe() for key_set in key_sets)
    if unknown:
        raise ConfigurationError(f"{name}: unknown key(s) {', '.join(unknown)}; {takes}")
    raise ConfigurationError(
        f"{name} mixes the keys of two kinds of server ({', '.join(map(repr, value))}); {takes}"
    )


def _read(name: str, value: Mapping[str, Any], key_set: KeySet) -> TLSOptions:
    fields: dict[str, Any] = {}
    for key, given in value.items():
        field = key_set.keys[key]
        where = f"{name}[{key!r}]"
        if field == "cert_reqs":
            fields[field] = _verify_mode(where, given)
        elif given is not None:
            fields[field] = _path(where, given)
    return TLSOptions(**fields)


def _verify_mode(where: str, value: Any) -> ssl.VerifyMode:
    if isinstance(value, str):
        named = CERT_REQS.get(value.lower().removeprefix("cert_"))
        if named is not None:
            return named
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            return ssl.VerifyMode(value)
        except ValueError:
            pass
    raise ConfigurationError(
        f"{where} must be ssl.CERT_REQUIRED, ssl.CERT_OPTIONAL or ssl.CERT_NONE (or "
        f"'required', 'optional', 'none'), not {value!r}"
    )


def _path(where: str, value: Any) -> str:
    if isinstance(value, str | os.PathLike):
        path = os.fspath(value)
        if isinstance(path, str) and path:
            return path
    raise ConfigurationError(f"{where} must be a file path, not {value!r}")


#: TLS alerts a server sends when it asked for this client's certificate and got none.
_NO_CLIENT_CERTIFICATE = ("CERTIFICATE_REQUIRED", "HANDSHAKE_FAILURE")
#: ... and when it did not trust the one it got.
_CLIENT_CERTIFICATE_REFUSED = (
    "UNKNOWN_CA",
    "BAD_CERTIFICATE",
    "CERTIFICATE_UNKNOWN",
    "DECRYPT_ERROR",  # signed by another key than the CA of that name
)


def client_certificate_hint(key_set: KeySet) -> str:
    """What to check when a server cut a TLS connection while it opened (a parenthesised
    hint with a leading space): a server that wants a client certificate does that, in TLS 1.3
    sometimes before its alert can be read."""
    names = {field: key for key, field in key_set.keys.items()}
    return (
        f" (a server that wants a client certificate cuts a TLS connection that shows none, or "
        f"one it does not trust: {names['certfile']} and {names['keyfile']})"
    )


def tls_refusal(error: BaseException, key_set: KeySet) -> str | None:
    """Why a TLS handshake behind ``error`` (itself, or in its chain of causes) failed, with
    what to change, in ``key_set``'s key names; ``None`` when no certificate is to blame.

    Tells "the server's certificate is not trusted" and "the server wants (another) client
    certificate" from "unreachable".
    """
    names = {field: key for key, field in key_set.keys.items()}
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return (
                f"its TLS certificate was not accepted: {current} (trust the CA that signed it "
                f"with {names['ca_certs']}, and connect to a host name or address the "
                f"certificate names)"
            )
        if isinstance(current, ssl.SSLError):
            reason = str(current.reason or "")
            if reason.endswith(_NO_CLIENT_CERTIFICATE):
                return (
                    f"it asks for a client certificate and got none: {current} (give one with "
                    f"{names['certfile']} and {names['keyfile']})"
                )
            if reason.endswith(_CLIENT_CERTIFICATE_REFUSED):
                return (
                    f"it refused this client's certificate: {current} (the server must trust "
                    f"the CA that signed {names['certfile']})"
                )
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
