-- beat_confirm: mark a claimed tick done and raise the entry's last tick.
-- KEYS[1]: the claim key; KEYS[2]: the last-tick hash.
-- ARGV[1]: token; ARGV[2]: keep (ms); ARGV[3]: entry name; ARGV[4]: tick (epoch ms).
-- Returns 1.
redis.call('SET', KEYS[1], 'd' .. ARGV[1], 'PX', ARGV[2])
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[3]))
if not last or last < tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
end
return 1
