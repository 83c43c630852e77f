-- Renew the leases of entries this consumer still owns: XCLAIM ... JUSTID to itself resets their idle time
-- without counting a delivery. An entry another consumer has reclaimed is left alone (never stolen back).
-- KEYS: stream.  ARGV: group, consumer, ids...   Returns the ids still owned.
local owned = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    owned[#owned + 1] = ARGV[i]
  end
end
if #owned > 0 then
  -- unpack() expands only in last position, so JUSTID goes into the argument list itself
  local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
  for _, id in ipairs(owned) do args[#args + 1] = id end
  args[#args + 1] = 'JUSTID'
  redis.call(unpack(args))
end
return owned
