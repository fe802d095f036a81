-- store_sharded: store one result record on Redis Cluster, where a task id's keys and channel
-- share its hash tag (one slot), and publish it on the task's channel with SPUBLISH (sharded
-- pub/sub) only when someone watches it there: every watcher sets the watched mark after
-- subscribing and before reading the record, and this script checks the mark after storing -
-- so either the watcher's read sees the record or the script sees the watcher (as store.lua
-- does on one server).
-- KEYS[1]: the result key; KEYS[2]: the task's watched mark.
-- ARGV[1]: PX milliseconds ('0': no expiry); ARGV[2]: the record; ARGV[3]: the task's channel.
-- Returns 1.
if tonumber(ARGV[1]) > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SPUBLISH', ARGV[3], ARGV[2])
end
return 1
