-- Requeue one entry, only if this call's XACK removed it from the group's pending list: a zombie worker
-- acking late finds nothing to ack and creates no second copy.
-- KEYS: stream, delayed set, and optionally the task's run marker (kept for the retry, so no periodic
--       run or duplicate execute starts beside it).
-- ARGV: group, entry id, new payload (retry already incremented), delay ms, marker ttl ms.
-- Returns the new entry id (immediate), 1 (parked in the delayed set) or 0 (someone else ended it).
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
local function hand_over(value)
  if KEYS[3] then
    local owner = redis.call('GET', KEYS[3])
    if not owner or owner == ARGV[2] then
      redis.call('SET', KEYS[3], value, 'PX', ARGV[5])
    end
  end
end
local delay = tonumber(ARGV[4])
if delay <= 0 then
  local id = redis.call('XADD', KEYS[1], '*', 'data', ARGV[3])
  hand_over(id)
  return id
end
-- One clock for every daemon: Redis' own, not each host's.
local t = redis.call('TIME')
local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + delay
-- The entry id keeps members unique, so two identical payloads never collapse into one.
redis.call('ZADD', KEYS[2], due, ARGV[2] .. '|' .. ARGV[3])
hand_over('retry:' .. ARGV[2])
return 1
