-- count_delayed: count delayed members by target stream, reading only the members'
-- "<len>:<stream><len>:<message id>" prefix (bodies never leave the server).
-- KEYS[1]: the delayed set.
-- ARGV[1]: first index; ARGV[2]: last index (ZRANGE).
-- Returns {members read, {stream, n, stream, n, ...}}.
--
-- A malformed member (anyone can write to the set) is counted nowhere: no well-formed
-- prefix, a stream that cannot be a queue stream (not ending in ":<priority>", or not
-- UTF-8, which the caller decodes), no message id. It is not delivered either: the fetch
-- script sets it aside once it is due (its check also needs the stream prefix, which this
-- script is not given).

-- include: _framed

-- Whether s is UTF-8 as a strict decoder takes it: no overlong forms, no surrogates, nothing
-- past U+10FFFF. Per lead byte: how many continuation bytes, and the range of the first one.
local function utf8(s)
  if not string.find(s, '[\128-\255]') then return true end
  local i, size = 1, #s
  while i <= size do
    local c = string.byte(s, i)
    local more, lo, hi = 0, 0x80, 0xBF
    if c < 0x80 then
      more = 0
    elseif c >= 0xC2 and c <= 0xDF then
      more = 1
    elseif c == 0xE0 then
      more, lo = 2, 0xA0
    elseif c == 0xED then
      more, hi = 2, 0x9F
    elseif c >= 0xE1 and c <= 0xEF then
      more = 2
    elseif c == 0xF0 then
      more, lo = 3, 0x90
    elseif c >= 0xF1 and c <= 0xF3 then
      more = 3
    elseif c == 0xF4 then
      more, hi = 3, 0x8F
    else
      return false
    end
    for j = 1, more do
      local b = string.byte(s, i + j)
      if not b or b < (j == 1 and lo or 0x80) or b > (j == 1 and hi or 0xBF) then
        return false
      end
    end
    i = i + more + 1
  end
  return true
end

-- The target stream of a well-formed member, or nil.
local function target(member)
  local stream, pos = framed(member, 1)
  if not stream or not string.match(stream, ':%d$') or not utf8(stream) then return nil end
  if not framed(member, pos) then return nil end
  return stream
end

local members = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2])
local counts = {}
for _, m in ipairs(members) do
  local stream = target(m)
  if stream then counts[stream] = (counts[stream] or 0) + 1 end
end
local out = {}
for stream, n in pairs(counts) do
  out[#out + 1] = stream
  out[#out + 1] = n
end
return {#members, out}
