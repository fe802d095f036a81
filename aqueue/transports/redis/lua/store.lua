-- store: store a batch of result records in one command (a pipeline of SET + PUBLISH per
-- record costs the worker two replies to parse per task). A record is published on its task's
-- own channel only when someone watches it there: every watcher registers the id in the
-- watched set (score: until when, ms) after subscribing and before reading the record, and
-- this script checks that set after storing - so either the watcher's read sees the record or
-- the script sees the watcher (both run atomically on one server). A record going to its
-- sender's reply channel travels in that channel's batch (one PUBLISH per channel).
-- KEYS[1]: the watched set; KEYS[2..]: the result key of each record.
-- ARGV[1]: PX milliseconds ('0': no expiry); ARGV[2]: length of the result keys' prefix;
--   ARGV[3]: the per-task channels' prefix; ARGV[4]: now (ms); ARGV[5]: the waited set, the
--   sorted set of the ids tasks sent after= them wait for (score: until when, ms; '': not
--   checked); ARGV[6 .. #KEYS + 4]: the records, in KEYS order; then (channel, payload) pairs
--   of reply batches.
-- Returns the stored ids found in the waited set, when ARGV[5] is given: one ZMSCORE for the
-- batch (a waiter adds itself there before reading the record, so one of the two sees the other).
local px, cut, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]) + 1, ARGV[3]
local now, waiters = tonumber(ARGV[4]), ARGV[5]
local stored, waited = {}, {}
-- Which of ids have a score after now in the sorted set key: a table of booleans.
local function live(key, members)
  local until_ms, out = redis.call('ZMSCORE', key, unpack(members)), {}
  for j = 1, #members do
    out[j] = until_ms[j] ~= false and tonumber(until_ms[j]) > now
  end
  return out
end
for i = 2, #KEYS do
  if px > 0 then
    redis.call('SET', KEYS[i], ARGV[i + 4], 'PX', px)
  else
    redis.call('SET', KEYS[i], ARGV[i + 4])
  end
  stored[i - 1] = string.sub(KEYS[i], cut)
end
if #stored > 0 then
  local watched = live(KEYS[1], stored)
  for j = 1, #stored do
    if watched[j] then
      redis.call('PUBLISH', prefix .. stored[j], ARGV[j + 5])
    end
  end
  if waiters ~= '' then
    local found = live(waiters, stored)
    for j = 1, #stored do
      if found[j] then
        waited[#waited + 1] = stored[j]
      end
    end
  end
end
for i = #KEYS + 5, #ARGV, 2 do
  redis.call('PUBLISH', ARGV[i], ARGV[i + 1])
end
return waited
