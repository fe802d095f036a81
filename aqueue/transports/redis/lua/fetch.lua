-- fetch: move due delayed messages, optionally reclaim expired leases, then lease up to
-- `limit` entries, best stream first. Reclaimed entries come first: their lease ran out, so
-- they waited longest.
-- KEYS[1]: the delayed set; KEYS[2..]: streams, best first.
-- ARGV[1]: group; ARGV[2]: consumer; ARGV[3]: limit; ARGV[4]: now (ms); ARGV[5]: move limit;
--   ARGV[6]: reclaim min-idle (ms, 0: don't); then, when reclaiming, one XAUTOCLAIM cursor per
--   stream (ARGV[7] for KEYS[2], ...).
-- Returns {entries, cursors, reclaim_incomplete, next_due}; entries is flat, five per entry:
--   stream index (1 = KEYS[2]), entry id, body, base delivery count, times delivered.
local group, consumer = ARGV[1], ARGV[2]
local limit = tonumber(ARGV[3])
local reclaim_idle = tonumber(ARGV[6])

local function part(member, pos)
  local colon = string.find(member, ':', pos, true)
  local len = tonumber(string.sub(member, pos, colon - 1))
  return string.sub(member, colon + 1, colon + len), colon + len + 1
end

local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[4], 'LIMIT', 0, ARGV[5])
for _, member in ipairs(due) do
  local target, pos = part(member, 1)
  local _, body_at = part(member, pos)
  redis.call('XADD', target, '*', 'b', string.sub(member, body_at))
  redis.call('ZREM', KEYS[1], member)
end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local next_due = head[2] or ''

local out, n = {}, 0
local function take(index, entry, times)
  local fields, body, base = entry[2], '', 1
  for j = 1, #fields, 2 do
    if fields[j] == 'b' then
      body = fields[j + 1]
    elseif fields[j] == 'n' then
      base = tonumber(fields[j + 1])
    end
  end
  local at = #out
  out[at + 1], out[at + 2], out[at + 3], out[at + 4], out[at + 5] =
    index, entry[1], body, base, times
  n = n + 1
end

local cursors, incomplete = {}, 0
if reclaim_idle > 0 then
  for i = 2, #KEYS do
    local cursor = ARGV[5 + i]
    if n < limit then
      local claimed = redis.call(
        'XAUTOCLAIM', KEYS[i], group, consumer, reclaim_idle, cursor, 'COUNT', limit - n)
      cursor = claimed[1]
      for _, entry in ipairs(claimed[2]) do
        -- Redis 6.2 lists entries deleted meanwhile as nil (Redis 7 leaves them out).
        if type(entry) == 'table' and entry[2] then
          local pending = redis.call('XPENDING', KEYS[i], group, entry[1], entry[1], 1)
          take(i - 1, entry, pending[1] and pending[1][4] or 2)
        end
      end
    else
      incomplete = 1
    end
    if cursor ~= '0-0' then incomplete = 1 end
    cursors[i - 1] = cursor
  end
end

for i = 2, #KEYS do
  if n >= limit then break end
  local read = redis.call(
    'XREADGROUP', 'GROUP', group, consumer, 'COUNT', limit - n, 'STREAMS', KEYS[i], '>')
  if read then
    for _, entry in ipairs(read[1][2]) do take(i - 1, entry, 1) end
  end
end
return {out, cursors, incomplete, next_due}
