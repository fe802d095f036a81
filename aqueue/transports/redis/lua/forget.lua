-- forget: remove this consumer from the groups it read, unless it still holds messages
-- (deleting a consumer drops its pending entries, which would then never be redelivered).
-- KEYS: streams.
-- ARGV[1]: group; ARGV[2]: consumer.
-- Returns 0.
for i = 1, #KEYS do
  local ok, pending = pcall(redis.call, 'XPENDING', KEYS[i], ARGV[1], '-', '+', 1, ARGV[2])
  if ok and #pending == 0 then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[i], ARGV[1], ARGV[2])
  end
end
return 0
