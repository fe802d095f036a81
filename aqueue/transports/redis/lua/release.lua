-- release: re-add entries this consumer still owns at the end of their stream, carrying the
-- delivery count in field n, and remove the old entries: a pending entry cannot be made
-- deliverable again to '>' readers any other way.
-- KEYS: the stream of each entry.
-- ARGV[1]: group; ARGV[2]: consumer; then (entry id, delivery count) pairs, one per KEYS entry.
-- Returns 0.
for i = 1, #KEYS do
  local id, count = ARGV[2 * i + 1], ARGV[2 * i + 2]
  local pending = redis.call('XPENDING', KEYS[i], ARGV[1], id, id, 1)
  if pending[1] and pending[1][2] == ARGV[2] then
    local entry = redis.call('XRANGE', KEYS[i], id, id)[1]
    if entry then
      local fields = entry[2]
      for j = 1, #fields, 2 do
        if fields[j] == 'b' then
          redis.call('XADD', KEYS[i], '*', 'b', fields[j + 1], 'n', count)
        end
      end
    end
    redis.call('XACK', KEYS[i], ARGV[1], id)
    redis.call('XDEL', KEYS[i], id)
  end
end
return 0
