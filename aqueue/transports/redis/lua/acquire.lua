-- acquire: take one token from a global rate-limit token bucket, timed by the server's TIME
-- (every worker on every host shares one clock). The same arithmetic as
-- aqueue.worker.ratelimit.refill.
-- KEYS[1]: the bucket hash (fields tokens, updated).
-- ARGV[1]: rate (tokens/s); ARGV[2]: capacity; ARGV[3]: idle expiry (ms).
-- Returns the wait in seconds as a string (a Lua number would be truncated to an integer).
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, capacity = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens, updated = tonumber(state[1]), tonumber(state[2])
if tokens == nil or updated == nil then
  tokens, updated = capacity, now
end
local elapsed = now - updated
if elapsed < 0 then elapsed = 0 end
tokens = math.min(capacity, tokens + elapsed * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
  'updated', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return string.format('%.17g', wait)
