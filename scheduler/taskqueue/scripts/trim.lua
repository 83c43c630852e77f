-- Keep the stream bounded without dropping work: once it is longer than maxlen, remove only entries older
-- than every group's oldest pending entry and last-delivered id. With no group, nothing is known to be
-- consumed, so nothing is removed. MINID ~ removes whole macro nodes only, never past the bound.
-- KEYS: stream.  ARGV: maxlen.  Returns the number of entries removed.
local function older(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  ams, bms = tonumber(ams), tonumber(bms)
  if ams ~= bms then return ams < bms end
  return tonumber(aseq) < tonumber(bseq)
end
if redis.call('XLEN', KEYS[1]) <= tonumber(ARGV[1]) then
  return 0
end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then
  return 0
end
local bound = nil
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local candidate = info['last-delivered-id']
  if tonumber(info['pending']) > 0 then
    local summary = redis.call('XPENDING', KEYS[1], info['name'])
    if older(summary[2], candidate) then candidate = summary[2] end
  end
  if bound == nil or older(candidate, bound) then bound = candidate end
end
return redis.call('XTRIM', KEYS[1], 'MINID', '~', bound)
