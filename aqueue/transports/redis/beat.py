"""The beat store of ``redis://`` result backends: two hashes, and a string per claim."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from aqueue.transports.base import Claim, Snapshot
from aqueue.transports.beat_rows import UnreadableRows
from aqueue.transports.redis import lua
from aqueue.transports.redis.client import SharedClient, as_bytes, redis_errors
from aqueue.transports.redis.role import RedisRole

__all__ = ["RedisStore"]

# The claim and confirm scripts are lua/beat_claim.lua and lua/beat_confirm.lua.
_CLAIMS = (Claim.OWN, Claim.DONE, Claim.PENDING)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisStore(RedisRole):
    """The store of ``redis://`` backends: two hashes and a string per claim, all named in
    :mod:`aqueue.transports.redis.keys` (``aqueue:beat:<app>:...``; on a cluster
    ``aqueue:beat:{<app>}:...``, one slot per app); claims are Lua scripts."""

    def __init__(self, url: str, namespace: str, client: SharedClient | None = None) -> None:
        super().__init__(url, client)
        self._ns = namespace
        self._claim: AsyncScript | None = None
        self._confirm: AsyncScript | None = None
        self._rows = UnreadableRows(f"redis beat store of app {namespace!r}")

    async def close(self) -> None:
        """Close the client."""
        self._claim = self._confirm = None
        await self._release_client()

    def _connected(self, client: aioredis.Redis) -> None:
        self._claim = lua.register(client, "beat_claim")
        self._confirm = lua.register(client, "beat_confirm")

    async def load(self) -> Snapshot:
        """HGETALL both hashes in one pipeline; a field beat did not write (a name that is not
        UTF-8, a last tick that is not an integer) is left out and logged once."""
        client = await self._connection()
        with redis_errors(self._url, "beat load"):
            async with client.pipeline(transaction=True) as pipe:
                pipe.hgetall(self._keys.beat_entries(self._ns))
                pipe.hgetall(self._keys.beat_last(self._ns))
                entries, last = await pipe.execute()
        rows = self._rows
        return rows.snapshot(
            dict(
                row
                for k, v in entries.items()
                if (row := rows.entry(as_bytes(k), as_bytes(v))) is not None
            ),
            dict(
                tick
                for k, v in last.items()
                if (tick := rows.last(as_bytes(k), as_bytes(v))) is not None
            ),
        )

    async def put(self, name: str, data: bytes) -> None:
        """HSET the entry."""
        client = await self._connection()
        with redis_errors(self._url, "beat put"):
            await client.hset(self._keys.beat_entries(self._ns), name, data)

    async def remove(self, name: str) -> bool:
        """HDEL the entry and its last tick in one MULTI."""
        client = await self._connection()
        with redis_errors(self._url, "beat remove"):
            async with client.pipeline(transaction=True) as pipe:
                pipe.hdel(self._keys.beat_entries(self._ns), name)
                pipe.hdel(self._keys.beat_last(self._ns), name)
                removed, _ = await pipe.execute()
        return bool(removed)

    async def claim(self, name: str, tick: int, token: str, lease: float) -> Claim:
        """Run the claim script (EVALSHA)."""
        await self._connection()
        assert self._claim is not None
        with redis_errors(self._url, "beat claim"):
            answer = await self._claim(
                keys=[self._keys.beat_claim(self._ns, name, tick)], args=[token, _ms(lease)]
            )
        return _CLAIMS[int(answer)]

    async def confirm(self, name: str, tick: int, token: str, keep: float) -> None:
        """Run the confirm script (EVALSHA)."""
        await self._connection()
        assert self._confirm is not None
        claim_key = self._keys.beat_claim(self._ns, name, tick)
        with redis_errors(self._url, "beat confirm"):
            await self._confirm(
                keys=[claim_key, self._keys.beat_last(self._ns)],
                args=[token, _ms(keep), name, tick],
            )
