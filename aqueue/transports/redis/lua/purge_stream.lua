-- purge_stream: delete up to ARGV[3] entries of a stream from id ARGV[2] on, except those
-- pending in the group (a worker holding one still acks it normally).
-- KEYS[1]: the stream.
-- ARGV[1]: group; ARGV[2]: first entry id (XRANGE start); ARGV[3]: count.
-- Returns {entries read, entries removed, last id read ('' when none)}.
local entries = redis.call('XRANGE', KEYS[1], ARGV[2], '+', 'COUNT', ARGV[3])
if #entries == 0 then return {0, 0, ''} end
local first, last = entries[1][1], entries[#entries][1]
local pending = {}
local ok, found = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], first, last, #entries)
if ok then
  for _, p in ipairs(found) do pending[p[1]] = true end
end
local removed = 0
for _, e in ipairs(entries) do
  if not pending[e[1]] then
    redis.call('XDEL', KEYS[1], e[1])
    removed = removed + 1
  end
end
return {#entries, removed, last}
