-- purge_delayed: remove the delayed members whose target stream is one of ARGV[3..].
-- KEYS[1]: the delayed set.
-- ARGV[1]: first index; ARGV[2]: last index (ZRANGE); ARGV[3..]: target streams.
-- Returns {members read, members removed}.
--
-- Only well-formed members ("<len>:<stream><len>:<message id>..." as the fetch script reads
-- them) are removed, the ones count_delayed.lua counts, so a purge removes what
-- queue_depths showed. A malformed member (anyone can write to the set) is left where it
-- is, even one naming a purged stream: the fetch script sets it aside, logged, once due.

-- include: _framed

local targets = {}
for i = 3, #ARGV do targets[ARGV[i]] = true end
local members = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2])
local removed = 0
for _, m in ipairs(members) do
  local stream, pos = framed(m, 1)
  if stream and targets[stream] and framed(m, pos) then
    redis.call('ZREM', KEYS[1], m)
    removed = removed + 1
  end
end
return {#members, removed}
