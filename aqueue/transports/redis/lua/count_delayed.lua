-- count_delayed: count delayed members by target stream, reading only the members'
-- "<len>:<stream>" prefix (bodies never leave the server).
-- KEYS[1]: the delayed set.
-- ARGV[1]: first index; ARGV[2]: last index (ZRANGE).
-- Returns {members read, {stream, n, stream, n, ...}}.
local members = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2])
local counts = {}
for _, m in ipairs(members) do
  local colon = string.find(m, ':', 1, true)
  local stream = string.sub(m, colon + 1, colon + tonumber(string.sub(m, 1, colon - 1)))
  counts[stream] = (counts[stream] or 0) + 1
end
local out = {}
for stream, n in pairs(counts) do
  out[#out + 1] = stream
  out[#out + 1] = n
end
return {#members, out}
