-- purge_delayed: remove the delayed members whose target stream is one of ARGV[3..].
-- KEYS[1]: the delayed set.
-- ARGV[1]: first index; ARGV[2]: last index (ZRANGE); ARGV[3..]: target streams.
-- Returns {members read, members removed}.
local targets = {}
for i = 3, #ARGV do targets[ARGV[i]] = true end
local members = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2])
local removed = 0
for _, m in ipairs(members) do
  local colon = string.find(m, ':', 1, true)
  local stream = string.sub(m, colon + 1, colon + tonumber(string.sub(m, 1, colon - 1)))
  if targets[stream] then
    redis.call('ZREM', KEYS[1], m)
    removed = removed + 1
  end
end
return {#members, removed}
