-- renew: reset the idle time of entries this consumer still owns. Checking the owner first
-- keeps a slow worker from snatching back a message another consumer has already reclaimed.
-- KEYS: the stream of each entry.
-- ARGV[1]: group; ARGV[2]: consumer; ARGV[3..]: entry ids, one per KEYS entry.
-- Returns 1 (renewed) or 0 (no longer ours) per entry.
local out = {}
for i = 1, #KEYS do
  local id = ARGV[i + 2]
  local pending = redis.call('XPENDING', KEYS[i], ARGV[1], id, id, 1)
  if pending[1] and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[i], ARGV[1], ARGV[2], 0, id, 'JUSTID')
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
