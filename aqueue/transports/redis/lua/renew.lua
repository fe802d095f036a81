-- renew: reset the idle time of entries this consumer still owns, and with a mark also record
-- that their run has started (RunTracking): the delivery counter of the lease becomes the
-- mark, 2 (running) or 3 (running as the worker's isolated suspect), which fetch.lua reads
-- when the lease runs out. Checking the owner first keeps a slow worker from snatching back a
-- message another consumer has already reclaimed.
-- KEYS: the stream of each entry.
-- ARGV[1]: group; ARGV[2]: consumer; then (entry id, mark) pairs, one per KEYS entry, mark
--   0 (renew only: the counter is kept), 2 or 3.
-- Returns 1 (renewed) or 0 (no longer ours: another consumer took it over) per entry.
local out = {}
for i = 1, #KEYS do
  local id, mark = ARGV[2 * i + 1], ARGV[2 * i + 2]
  local pending = redis.call('XPENDING', KEYS[i], ARGV[1], id, id, 1)
  if pending[1] and pending[1][2] == ARGV[2] then
    if mark == '0' then
      redis.call('XCLAIM', KEYS[i], ARGV[1], ARGV[2], 0, id, 'JUSTID')
    else
      redis.call('XCLAIM', KEYS[i], ARGV[1], ARGV[2], 0, id, 'RETRYCOUNT', mark, 'JUSTID')
    end
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
