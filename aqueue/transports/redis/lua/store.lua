-- store: store a batch of result records in one command (a pipeline of SET + PUBLISH per
-- record costs the worker two replies to parse per task). A record going to its sender's reply
-- channel is published on its own channel only when someone else watches it: a watcher
-- registers the id in the watched set (score: until when, ms) after subscribing and before
-- reading the record, and this script checks that set after storing - so either the watcher's
-- read sees the record or the script sees the watcher (both run atomically on one server).
-- KEYS[1]: the watched set; KEYS[2..]: the result key of each record.
-- ARGV[1]: PX milliseconds ('0': no expiry); ARGV[2]: length of the result keys' prefix;
--   ARGV[3]: the per-task channels' prefix; ARGV[4]: now (ms); ARGV[5]: one '0'/'1' per
--   record, '1' where the record goes to a reply channel; ARGV[6]: the waited set, the sorted
--   set of the ids tasks sent after= them wait for (score: until when, ms; '': not checked);
--   ARGV[7 .. #KEYS + 5]: the records, in KEYS order; then (channel, payload) pairs of reply
--   batches.
-- Returns the stored ids found in the waited set, when ARGV[6] is given: one ZMSCORE for the
-- batch (a waiter adds itself there before reading the record, so one of the two sees the other).
local px, cut, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]) + 1, ARGV[3]
local now, replied, waiters = tonumber(ARGV[4]), ARGV[5], ARGV[6]
local check, ids, waited, stored = {}, {}, {}, {}
-- Which of ids have a score after now in the sorted set key: a table of booleans.
local function live(key, members)
  local until_ms, out = redis.call('ZMSCORE', key, unpack(members)), {}
  for j = 1, #members do
    out[j] = until_ms[j] ~= false and tonumber(until_ms[j]) > now
  end
  return out
end
for i = 2, #KEYS do
  local record = ARGV[i + 5]
  if px > 0 then
    redis.call('SET', KEYS[i], record, 'PX', px)
  else
    redis.call('SET', KEYS[i], record)
  end
  local id = string.sub(KEYS[i], cut)
  stored[i - 1] = id
  if string.byte(replied, i - 1) == 49 then
    check[#check + 1], ids[#ids + 1] = i, id
  else
    redis.call('PUBLISH', prefix .. id, record)
  end
end
if #ids > 0 then
  local watched = live(KEYS[1], ids)
  for j = 1, #ids do
    if watched[j] then
      redis.call('PUBLISH', prefix .. ids[j], ARGV[check[j] + 5])
    end
  end
end
if waiters ~= '' and #stored > 0 then
  local found = live(waiters, stored)
  for j = 1, #stored do
    if found[j] then
      waited[#waited + 1] = stored[j]
    end
  end
end
for i = #KEYS + 6, #ARGV, 2 do
  redis.call('PUBLISH', ARGV[i], ARGV[i + 1])
end
return waited
