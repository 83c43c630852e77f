-- Requeue one entry, only if this call's XACK removed it from the group's pending list: a zombie worker
-- acking late finds nothing to ack and creates no second copy.
-- KEYS: stream, delayed set.  ARGV: group, entry id, new payload (retry already incremented), delay ms.
-- Returns the new entry id (immediate), 1 (parked in the delayed set) or 0 (someone else ended it).
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
local delay = tonumber(ARGV[4])
if delay <= 0 then
  return redis.call('XADD', KEYS[1], '*', 'data', ARGV[3])
end
-- One clock for every daemon: Redis' own, not each host's.
local t = redis.call('TIME')
local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + delay
-- The entry id keeps members unique, so two identical payloads never collapse into one.
redis.call('ZADD', KEYS[2], due, ARGV[2] .. '|' .. ARGV[3])
return 1
