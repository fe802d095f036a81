-- ack: XACK + XDEL a batch of entries in one command (atomic, as a script is).
-- KEYS: streams.
-- ARGV[1]: the group; then, per stream in KEYS order, its number of entries followed by their
--   ids.
-- Returns 0.
local at = 2
for i = 1, #KEYS do
  local n = tonumber(ARGV[at])
  local ids = {}
  for j = 1, n do ids[j] = ARGV[at + j] end
  redis.call('XACK', KEYS[i], ARGV[1], unpack(ids))
  redis.call('XDEL', KEYS[i], unpack(ids))
  at = at + n + 1
end
return 0
