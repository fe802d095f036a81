-- _framed: not a script, a piece of the scripts that read delayed members (fetch,
-- count_delayed, purge_delayed), put in where they say "-- include: _framed" (lua.source).

-- "<len>:<text>" at pos: the text and the position after it, or nil.
local function framed(member, pos)
  local colon = string.find(member, ':', pos, true)
  if not colon or colon == pos or colon - pos > 9 then return nil end
  local digits = string.sub(member, pos, colon - 1)
  if not string.match(digits, '^%d+$') then return nil end
  local stop = colon + tonumber(digits)
  if stop > #member then return nil end
  return string.sub(member, colon + 1, stop), stop + 1
end
