-- publish: add a batch in one command (a pipeline of N XADDs costs the client N replies to
-- parse, which is most of its CPU when sending; benchmarks/throughput.py measures it).
-- KEYS[1]: the delayed set; KEYS[2..]: the stream of each ready message.
-- ARGV[1 .. #KEYS - 1]: the ready messages' bodies (one per stream key, same order); then
--   (score, member) pairs of the delayed ones (score: eta in ms).
-- Returns the number of ready messages added.
local ready = #KEYS - 1
for i = 1, ready do
  redis.call('XADD', KEYS[i + 1], '*', 'b', ARGV[i])
end
for i = ready + 1, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
end
return ready
