-- Renew the leases of entries this consumer still owns: XCLAIM ... JUSTID to itself resets their idle time
-- without counting a delivery. An entry another consumer has reclaimed is left alone (never stolen back).
-- KEYS: stream.  ARGV: group, consumer, ids...   Returns the ids still owned.
-- An entry whose payload was deleted meanwhile is still owned but not claimed: on Redis 7 XCLAIM would
-- drop it from the pending list, and its crawl (the payload is in the worker's hands) could not end it.
local owned, renew = {}, {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    owned[#owned + 1] = ARGV[i]
    if #redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i]) > 0 then
      renew[#renew + 1] = ARGV[i]
    end
  end
end
if #renew > 0 then
  -- unpack() expands only in last position, so JUSTID goes into the argument list itself
  local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
  for _, id in ipairs(renew) do args[#args + 1] = id end
  args[#args + 1] = 'JUSTID'
  redis.call(unpack(args))
end
return owned
