-- unlock: free a named lock only if the given owner holds it (Locks.unlock).
-- KEYS[1]: the lock key. ARGV[1]: the owner.
-- Returns 1 when freed, 0 when the lock was missing or another owner's.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
