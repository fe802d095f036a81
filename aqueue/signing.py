"""Signing with a shared secret: ``task_signing_key``, HMAC-SHA256 over the exact encoded bytes.

Three kinds of document are signed, each with a key of its own derived from the setting's key
(so that a signed document of one kind is never accepted as another): task messages (the
envelope :meth:`aqueue.message.Message.encode` makes), result records
(:meth:`aqueue.results.record.ResultRecord.encode`, and a group's record of its members) and
periodic entries stored at runtime (``app.beat.add``).

Every one of them is a JSON object, and a signed one stays one: the signature is put in front as
its first key, ``{"hmac":"<64 hex digits>",`` followed by the document's bytes after their
opening ``{``. A reader without a key sees one more key and ignores it; a reader with a key
checks the HMAC over the bytes as they were before the key was put in (``{`` + the rest), so
nothing is parsed or encoded again before the check and every transport (which moves the bytes
as they are) gives the same answer. See docs/signing.md.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from aqueue.exceptions import ConfigurationError, SecurityError

__all__ = ["MIN_KEY_BYTES", "Signer", "Signing", "check_key_setting"]

#: The shortest key accepted, in bytes (a key is a secret: use ``secrets.token_hex(32)``).
MIN_KEY_BYTES = 16

_PREFIX = b'{"hmac":"'
_DIGITS = 64  # SHA-256, in hex
_CUT = len(_PREFIX) + _DIGITS  # where '",' follows the digest
_REST = _CUT + 2  # where the signed document's bytes after its "{" start


def _key_bytes(name: str, key: Any) -> bytes:
    """One key of the setting as bytes (a ``str`` in UTF-8).

    Raises:
        ConfigurationError: not a ``str`` or ``bytes``, or shorter than :data:`MIN_KEY_BYTES`.
    """
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, bytes | bytearray):
        raise ConfigurationError(
            f"{name} must be None, a key (str or bytes) or a list of keys (the first signs), "
            f"not {type(key).__name__}"
        )
    if len(key) < MIN_KEY_BYTES:
        raise ConfigurationError(
            f"{name}: a key must be at least {MIN_KEY_BYTES} bytes, not {len(key)}; make one "
            f"with python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    return bytes(key)


def _keys(name: str, value: Any) -> list[bytes]:
    """The setting's keys, the signing one first.

    Raises:
        ConfigurationError: ``value`` is not a key or a non-empty list of keys.
    """
    if isinstance(value, list | tuple):
        if not value:
            raise ConfigurationError(f"{name} must list at least one key (the first signs)")
        return [_key_bytes(name, key) for key in value]
    return [_key_bytes(name, value)]


def check_key_setting(name: str, value: Any) -> None:
    """The checker of ``task_signing_key``: ``None``, a key, or a list of keys.

    Raises:
        ConfigurationError: the value is none of those (the message never shows a key).
    """
    if value is not None:
        _keys(name, value)


def _claims(raw: bytes) -> str:
    """What an unverified document says it is (its id and task), for an error message only."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "not JSON"
    if not isinstance(doc, dict):
        return "not a JSON object"
    task_id = doc.get("id", doc.get("task_id"))
    name = doc.get("task", doc.get("name"))
    if isinstance(task_id, str) and isinstance(name, str):
        return f"claims to be {name[:100]}[{task_id[:100]}]"
    if isinstance(task_id, str):
        return f"claims task id {task_id[:100]}"
    return "names no task"


class Signer:
    """Signs and verifies one kind of document with the keys of ``task_signing_key``.

    Args:
        keys: the setting's keys, the signing one first; every one is accepted when verifying.
        kind: what is signed (``b"message"``, ``b"result"``, ``b"beat"``): each kind signs with
            keys of its own, ``HMAC-SHA256(key, b"aqueue " + kind)``.
        what: the document's name in errors, e.g. ``"message"``.
    """

    __slots__ = ("_states", "count", "what")

    def __init__(self, keys: Sequence[bytes], kind: bytes, what: str) -> None:
        self.what = what
        self.count = len(keys)
        # Per key: the HMAC state after the opening "{" of a document, copied for each one.
        self._states = []
        for key in keys:
            derived = hmac.digest(key, b"aqueue " + kind, "sha256")
            state = hmac.new(derived, b"{", hashlib.sha256)
            self._states.append(state)

    def sign(self, data: bytes) -> bytes:
        """``data`` (an encoded JSON object, ``{"...``) with its signature as the first key.

        Raises:
            ValueError: ``data`` is not a JSON object with at least one key.
        """
        if data[:2] != b'{"':
            raise ValueError(f"only a JSON object with keys can be signed, not {data[:20]!r}")
        rest = memoryview(data)[1:]
        mac = self._states[0].copy()
        mac.update(rest)
        return b"".join((_PREFIX, mac.hexdigest().encode(), b'",', rest))

    def verify(self, raw: bytes) -> None:
        """Check the signature of ``raw`` (as :meth:`sign` made it) against every key.

        Raises:
            SecurityError: ``raw`` carries no signature ("unsigned ..."), or none of the keys
                made it ("bad signature ..."): it was changed, or signed with another key.
        """
        if raw[:9] != _PREFIX or raw[_CUT:_REST] != b'",':
            raise SecurityError(
                f"unsigned {self.what}: task_signing_key is set and it carries no signature "
                f"({_claims(raw)})"
            )
        claimed = raw[9:_CUT]
        rest = memoryview(raw)[_REST:]
        for state in self._states:
            mac = state.copy()
            mac.update(rest)
            if hmac.compare_digest(mac.hexdigest().encode(), claimed):
                return
        keys = "the key" if self.count == 1 else f"any of the {self.count} keys"
        raise SecurityError(
            f"bad signature on {self.what}: not made by {keys} of task_signing_key (changed "
            f"after signing, or signed with another key; "
            f"{_claims(b'{' + raw[_REST:])})"
        )


@dataclass(frozen=True, slots=True)
class Signing:
    """The signers of an app with ``task_signing_key`` set (``app.conf.signing``).

    Attributes:
        messages: task messages (signed by senders, verified by workers).
        results: result records and group records (signed by workers and clients storing
            them, verified by whoever reads them).
        beat: periodic entries stored at runtime (``app.beat.add``; verified by beat).
    """

    messages: Signer
    results: Signer
    beat: Signer

    @classmethod
    def from_setting(cls, value: Any) -> Signing | None:
        """The signers of a ``task_signing_key`` value; ``None`` for ``None`` (no signing).

        Raises:
            ConfigurationError: the value is not a key or a list of keys.
        """
        if value is None:
            return None
        keys = _keys("task_signing_key", value)
        return cls(
            Signer(keys, b"message", "message"),
            Signer(keys, b"result", "result record"),
            Signer(keys, b"beat", "stored beat entry"),
        )
