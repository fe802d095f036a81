-- lock: take a named lock for an owner if it is free or already the owner's (Locks.lock).
-- KEYS[1]: the lock key. ARGV[1]: the owner; ARGV[2]: the expiry (ms).
-- Returns the owner now holding the lock: ARGV[1] when taken or kept, else the holder's.
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return holder
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
