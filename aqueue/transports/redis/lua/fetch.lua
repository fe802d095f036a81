-- fetch: move due delayed messages (setting aside malformed members), reclaim expired leases
-- and remove dead consumers when a check is due, then lease up to `limit` entries, best
-- stream first. Reclaimed entries come first: their lease ran out, so they waited longest.
-- KEYS[1]: the delayed set; KEYS[2]: the stream where malformed delayed members are set
--   aside; KEYS[3..]: the queue streams, best first.
-- ARGV[1]: group; ARGV[2]: consumer; ARGV[3]: limit; ARGV[4]: now (ms); ARGV[5]: move limit;
--   ARGV[6]: reclaim min-idle (ms; 0: no reclaim check this time); ARGV[7]: the prefix every
--   queue stream's name starts with; ARGV[8]: how long (ms) a consumer holding nothing must
--   have been idle to be removed from a group; then, when reclaiming, one XAUTOCLAIM cursor
--   per stream (ARGV[9] for KEYS[3], ...).
-- Returns {entries, cursors, reclaim_incomplete, next_due, set_aside, removed}: entries is
--   flat, five per entry: stream index (1 = KEYS[3]), entry id, body, field n, field k (raw
--   strings, '' when absent: the broker checks them); set_aside is flat (member head, reason)
--   pairs; removed is flat (stream index, consumer name) pairs of dead consumers removed.
--
-- Leases and blame (RunTracking): a lease's delivery counter in the pending entries list is
-- 1 until the worker marks the run started (renew.lua sets 2, or 3 for an isolated suspect).
-- A reclaimed entry still at 1 was never started and is handed out as it is; one at 2 or 3
-- was running when its worker died, so it is added again with field n one higher (and k one
-- higher for 3), and the old entry removed.
local group, consumer = ARGV[1], ARGV[2]
local limit, now = tonumber(ARGV[3]), ARGV[4]
local reclaim_idle, prefix, forget_idle = tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])
local STREAMS = 3 -- KEYS index of the first queue stream

-- include: _framed

-- A delayed member "<len>:<stream><len>:<message id><body>": its stream and body, or nil and
-- why not.
local function parse(member)
  local target, pos = framed(member, 1)
  if not target then return nil, 'no <length>:<stream> prefix' end
  if string.sub(target, 1, #prefix) ~= prefix or not string.match(target, ':%d$') then
    return nil, 'its stream is not a queue stream: ' .. string.sub(target, 1, 80)
  end
  local id, body_at = framed(member, pos)
  if not id then return nil, 'no <length>:<message id> after its stream' end
  return target, string.sub(member, body_at)
end

local set_aside = {}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[5])
for _, member in ipairs(due) do
  local target, body = parse(member)
  local reason = body
  if target then
    local ok, err = pcall(redis.call, 'XADD', target, '*', 'b', body)
    if ok then
      reason = nil
    else
      reason = 'XADD to ' .. target .. ' failed: ' .. tostring(err)
    end
  end
  if reason then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', 10000, '*', 'm', member, 'r', reason, 't', now)
    set_aside[#set_aside + 1] = string.sub(member, 1, 80)
    set_aside[#set_aside + 1] = reason
  end
  redis.call('ZREM', KEYS[1], member)
end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local next_due = head[2] or ''

-- The fields aqueue reads; any others are ignored (and dropped when an entry is re-added).
local function known(fields)
  local body, n, k = '', '', ''
  for j = 1, #fields, 2 do
    local name = fields[j]
    if name == 'b' then
      body = fields[j + 1]
    elseif name == 'n' then
      n = fields[j + 1]
    elseif name == 'k' then
      k = fields[j + 1]
    end
  end
  return body, n, k
end

local out, n = {}, 0
local function take(index, id, fields)
  local body, count, strikes = known(fields)
  local at = #out
  out[at + 1], out[at + 2], out[at + 3], out[at + 4], out[at + 5] =
    index, id, body, count, strikes
  n = n + 1
end

-- Add an entry that was running when its worker died again, blamed; false if its counts are
-- malformed (it is then handed out as it is, and the worker dead-letters it).
local function requeue(stream, id, fields, isolated)
  local body, count, strikes = known(fields)
  count = tonumber(count == '' and '1' or count)
  strikes = tonumber(strikes == '' and '0' or strikes)
  if not count or not strikes then return false end
  if isolated then strikes = strikes + 1 end
  redis.call('XADD', stream, '*', 'b', body, 'n', count + 1, 'k', strikes)
  redis.call('XACK', stream, group, id)
  redis.call('XDEL', stream, id)
  return true
end

local function reclaim(stream, index, cursor)
  local claimed = redis.call(
    'XAUTOCLAIM', stream, group, consumer, reclaim_idle, cursor, 'COUNT', limit - n, 'JUSTID')
  for _, id in ipairs(claimed[2]) do
    local pending = redis.call('XPENDING', stream, group, id, id, 1)
    local runs = pending[1] and tonumber(pending[1][4]) or 1
    local entry = redis.call('XRANGE', stream, id, id)[1]
    if not entry then
      redis.call('XACK', stream, group, id) -- deleted meanwhile (Redis 6.2 still lists it)
    elseif runs < 2 or not requeue(stream, id, entry[2], runs >= 3) then
      take(index, id, entry[2])
    end
  end
  return claimed[1]
end

-- Consumers holding nothing and idle for long are gone (killed workers): remove them.
local removed = {}
local function forget_dead(stream, index)
  for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', stream, group)) do
    local name, pending, idle
    for j = 1, #info, 2 do
      if info[j] == 'name' then
        name = info[j + 1]
      elseif info[j] == 'pending' then
        pending = info[j + 1]
      elseif info[j] == 'idle' then
        idle = info[j + 1]
      end
    end
    if pending == 0 and idle and idle > forget_idle and name ~= consumer then
      redis.call('XGROUP', 'DELCONSUMER', stream, group, name)
      removed[#removed + 1], removed[#removed + 2] = index, name
    end
  end
end

local cursors, incomplete = {}, 0
if reclaim_idle > 0 then
  for i = STREAMS, #KEYS do
    local cursor = ARGV[9 + i - STREAMS]
    if n < limit then
      cursor = reclaim(KEYS[i], i - STREAMS + 1, cursor)
      forget_dead(KEYS[i], i - STREAMS + 1)
    else
      incomplete = 1
    end
    if cursor ~= '0-0' then incomplete = 1 end
    cursors[i - STREAMS + 1] = cursor
  end
end

for i = STREAMS, #KEYS do
  if n >= limit then break end
  local read = redis.call(
    'XREADGROUP', 'GROUP', group, consumer, 'COUNT', limit - n, 'STREAMS', KEYS[i], '>')
  if read then
    for _, entry in ipairs(read[1][2]) do take(i - STREAMS + 1, entry[1], entry[2]) end
  end
end
return {out, cursors, incomplete, next_due, set_aside, removed}
