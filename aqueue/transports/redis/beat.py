"""The beat store of ``redis://`` result backends: two hashes, and a string per claim."""

from __future__ import annotations

import redis.asyncio as aioredis

from aqueue.transports.base import Claim, Snapshot
from aqueue.transports.redis import keys
from aqueue.transports.redis.client import SharedClient, as_bytes, redis_errors

__all__ = ["RedisStore"]

# KEYS: claim key. ARGV: token, lease (ms). The value is "p" or "d" (pending, done) + token.
# A script is atomic, and running it again with the same token answers the same: safe to retry.
_CLAIM_SCRIPT = """
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], 'p' .. ARGV[1], 'PX', ARGV[2])
  return 0
end
if string.sub(cur, 2) == ARGV[1] then return 0 end
if string.sub(cur, 1, 1) == 'd' then return 1 end
return 2
"""

# KEYS: claim key, last-tick hash. ARGV: token, keep (ms), entry name, tick (ms).
_CONFIRM_SCRIPT = """
redis.call('SET', KEYS[1], 'd' .. ARGV[1], 'PX', ARGV[2])
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[3]))
if not last or last < tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
end
return 1
"""

_CLAIMS = (Claim.OWN, Claim.DONE, Claim.PENDING)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisStore:
    """The store of ``redis://`` backends: two hashes and a string per claim, all named in
    :mod:`aqueue.transports.redis.keys` (``aqueue:beat:<app>:...``); claims are Lua scripts."""

    def __init__(self, url: str, namespace: str, client: SharedClient | None = None) -> None:
        self._url = url
        self._ns = namespace
        self._shared = client or SharedClient(url)
        self._owns_client = client is None
        self._client: aioredis.Redis | None = None

    async def connect(self) -> None:
        """Connect and PING.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        await self._connection()

    async def close(self) -> None:
        """Close the client."""
        self._client = None
        if self._owns_client:
            await self._shared.aclose()

    async def _connection(self) -> aioredis.Redis:
        """The connected client (the transport's shared one), connecting first if needed."""
        if self._client is None:
            self._client = await self._shared.get()
        return self._client

    async def load(self) -> Snapshot:
        """HGETALL both hashes in one pipeline."""
        client = await self._connection()
        with redis_errors(self._url, "beat load"):
            async with client.pipeline(transaction=True) as pipe:
                pipe.hgetall(keys.beat_entries(self._ns))
                pipe.hgetall(keys.beat_last(self._ns))
                entries, last = await pipe.execute()
        return Snapshot(
            {as_bytes(k).decode(): as_bytes(v) for k, v in entries.items()},
            {as_bytes(k).decode(): int(v) for k, v in last.items()},
        )

    async def put(self, name: str, data: bytes) -> None:
        """HSET the entry."""
        client = await self._connection()
        with redis_errors(self._url, "beat put"):
            await client.hset(keys.beat_entries(self._ns), name, data)

    async def remove(self, name: str) -> bool:
        """HDEL the entry and its last tick in one MULTI."""
        client = await self._connection()
        with redis_errors(self._url, "beat remove"):
            async with client.pipeline(transaction=True) as pipe:
                pipe.hdel(keys.beat_entries(self._ns), name)
                pipe.hdel(keys.beat_last(self._ns), name)
                removed, _ = await pipe.execute()
        return bool(removed)

    async def claim(self, name: str, tick: int, token: str, lease: float) -> Claim:
        """Run the claim script."""
        client = await self._connection()
        with redis_errors(self._url, "beat claim"):
            answer = await client.eval(
                _CLAIM_SCRIPT, 1, keys.beat_claim(self._ns, name, tick), token, _ms(lease)
            )
        return _CLAIMS[int(answer)]

    async def confirm(self, name: str, tick: int, token: str, keep: float) -> None:
        """Run the confirm script."""
        client = await self._connection()
        claim_key = keys.beat_claim(self._ns, name, tick)
        with redis_errors(self._url, "beat confirm"):
            await client.eval(
                _CONFIRM_SCRIPT,
                2,
                claim_key,
                keys.beat_last(self._ns),
                token,
                _ms(keep),
                name,
                tick,
            )
