-- beat_claim: claim one tick of a beat entry. The value is "p" or "d" (pending, done) followed
-- by the claiming beat's token. A script is atomic, and running it again with the same token
-- answers the same: safe to retry.
-- KEYS[1]: the claim key.
-- ARGV[1]: token; ARGV[2]: lease (ms).
-- Returns 0 (this token owns it), 1 (done by another beat) or 2 (pending with another beat).
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], 'p' .. ARGV[1], 'PX', ARGV[2])
  return 0
end
if string.sub(cur, 2) == ARGV[1] then return 0 end
if string.sub(cur, 1, 1) == 'd' then return 1 end
return 2
