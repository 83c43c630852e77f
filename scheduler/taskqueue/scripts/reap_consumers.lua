-- Remove consumers that own nothing and have been idle at least min_idle ms. Atomic, so a consumer cannot
-- receive an entry between the check and the removal (which would orphan that entry).
-- KEYS: stream.  ARGV: group, min idle ms, a consumer name never to remove (the caller).
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if info['pending'] == 0 and info['idle'] >= tonumber(ARGV[2]) and info['name'] ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed[#removed + 1] = info['name']
  end
end
return removed
