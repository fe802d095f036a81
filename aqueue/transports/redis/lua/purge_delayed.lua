-- purge_delayed: remove the delayed members whose target stream is one of ARGV[3..].
-- KEYS[1]: the delayed set.
-- ARGV[1]: first index; ARGV[2]: last index (ZRANGE); ARGV[3..]: target streams.
-- Returns {members read, members removed}.
--
-- Only well-formed members ("<len>:<stream><len>:<message id>..." as the fetch script reads
-- them) are removed, the ones count_delayed.lua counts, so a purge removes what
-- queue_depths showed. A malformed member (anyone can write to the set) is left where it
-- is, even one naming a purged stream: the fetch script sets it aside, logged, once due.

-- "<len>:<text>" at pos: the text and the position after it, or nil (as in fetch.lua).
local function framed(member, pos)
  local colon = string.find(member, ':', pos, true)
  if not colon or colon == pos or colon - pos > 9 then return nil end
  local digits = string.sub(member, pos, colon - 1)
  if not string.match(digits, '^%d+$') then return nil end
  local stop = colon + tonumber(digits)
  if stop > #member then return nil end
  return string.sub(member, colon + 1, stop), stop + 1
end

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
