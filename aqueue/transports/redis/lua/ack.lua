-- ack: XACK + XDEL a batch of entries in one command (atomic, as a script is), then mark the
-- runs about to start (RunTracking) of leases known to be this consumer's, so that a worker
-- marks its next runs with the acks of the last: each marked entry's delivery counter becomes
-- the mark, 2 (running) or 3 (running as the worker's isolated suspect), which fetch.lua reads
-- when the lease runs out; marking also resets the idle time. No owner check, unlike
-- renew.lua: the broker sends here only leases taken or renewed less than half a visibility
-- timeout ago, which nobody can have reclaimed yet (that takes a whole timeout of idleness).
-- KEYS: a stream per group of acks, then a stream per group of marks.
-- ARGV[1]: the consumer group; ARGV[2]: the consumer; ARGV[3]: the number of ack groups; then
--   per ack group: n, then n entry ids; then per mark group: the mark, n, then n entry ids.
-- Returns 0.
local group, consumer, at = ARGV[1], ARGV[2], 4
for i = 1, #KEYS do
  local acking = i <= tonumber(ARGV[3])
  local mark
  if not acking then
    mark, at = ARGV[at], at + 1
  end
  local n, ids = tonumber(ARGV[at]), {}
  for j = 1, n do ids[j] = ARGV[at + j] end
  at = at + n + 1
  if acking then
    redis.call('XACK', KEYS[i], group, unpack(ids))
    redis.call('XDEL', KEYS[i], unpack(ids))
  else
    ids[n + 1], ids[n + 2], ids[n + 3] = 'RETRYCOUNT', mark, 'JUSTID'
    redis.call('XCLAIM', KEYS[i], group, consumer, 0, unpack(ids))
  end
end
return 0
