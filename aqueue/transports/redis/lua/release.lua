-- release: re-add entries this consumer still owns at the end of their stream and remove the
-- old entries: a pending entry cannot be made deliverable again to '>' readers any other way.
-- A release is not a death: the counts (fields n and k) are copied as they are, and only the
-- fields aqueue reads (b, n, k) are kept.
-- KEYS: the stream of each entry.
-- ARGV[1]: group; ARGV[2]: consumer; ARGV[3..]: entry ids, one per KEYS entry.
-- Returns 0.
for i = 1, #KEYS do
  local id = ARGV[i + 2]
  local pending = redis.call('XPENDING', KEYS[i], ARGV[1], id, id, 1)
  if pending[1] and pending[1][2] == ARGV[2] then
    local entry = redis.call('XRANGE', KEYS[i], id, id)[1]
    if entry then
      -- Without a field b it still goes back (with an empty body): the worker dead-letters it.
      local copy, fields = {'b', ''}, entry[2]
      for j = 1, #fields, 2 do
        local name = fields[j]
        if name == 'b' then
          copy[2] = fields[j + 1]
        elseif name == 'n' or name == 'k' then
          copy[#copy + 1], copy[#copy + 2] = name, fields[j + 1]
        end
      end
      redis.call('XADD', KEYS[i], '*', unpack(copy))
    end
    redis.call('XACK', KEYS[i], ARGV[1], id)
    redis.call('XDEL', KEYS[i], id)
  end
end
return 0
