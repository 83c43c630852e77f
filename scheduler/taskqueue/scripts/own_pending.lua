-- This consumer's pending entries with their fields, without counting a delivery: what a read whose
-- reply was lost (or a batch dropped after an error) left in its pending list, for the caller to take
-- up again. KEYS: stream.  ARGV: group, consumer, count.
-- Returns {{id, fields or false when the payload was trimmed}...}.
-- The idle time of each entry with a payload is reset (XCLAIM to itself, JUSTID: no delivery counted),
-- so another daemon's reclaim does not take it the moment it is started again.
local out = {}
for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', ARGV[3], ARGV[2])) do
  local entry = redis.call('XRANGE', KEYS[1], p[1], p[1])
  if entry[1] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, p[1], 'JUSTID')
  end
  out[#out + 1] = {p[1], entry[1] and entry[1][2] or false}
end
return out
