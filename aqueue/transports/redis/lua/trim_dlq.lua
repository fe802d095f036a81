-- trim_dlq: delete the oldest entries of a dead-letter stream.
-- KEYS[1]: the dead-letter stream.
-- ARGV[1]: how many.
-- Returns how many were deleted.
local entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', ARGV[1])
for _, e in ipairs(entries) do redis.call('XDEL', KEYS[1], e[1]) end
return #entries
