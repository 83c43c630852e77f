-- Requeue one entry, only while this consumer still holds it: a zombie worker whose entry was reclaimed
-- (or already ended) finds it held by someone else, or not pending, and changes nothing.
-- Everything is written before the XACK, so a write refused (out of memory on Redis 6.2, where the
-- refusal comes mid-script) leaves the entry pending instead of acknowledged without its retry.
-- KEYS: stream, delayed set, and optionally the task's run marker (handed to the retry, so no periodic
--       run or duplicate execute starts beside it).
-- ARGV: group, entry id, new payload (retry incremented), delay ms, marker ttl ms, consumer.
-- Returns the new entry id (immediate), 1 (parked in the delayed set) or 0 (not held by this consumer).
local held = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if not held[1] or held[1][2] ~= ARGV[6] then
  return 0
end
local function hand_over(value)
  -- only a marker this entry holds: after a stop (marker deleted) the retry must not revive it
  if KEYS[3] and redis.call('GET', KEYS[3]) == ARGV[2] then
    redis.call('SET', KEYS[3], value, 'PX', ARGV[5])
  end
end
local result = 1
local delay = tonumber(ARGV[4])
if delay <= 0 then
  result = redis.call('XADD', KEYS[1], '*', 'data', ARGV[3])
  hand_over(result)
else
  -- One clock for every daemon: Redis' own, not each host's.
  local t = redis.call('TIME')
  local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + delay
  -- The entry id keeps members unique, so two identical payloads never collapse into one.
  redis.call('ZADD', KEYS[2], due, ARGV[2] .. '|' .. ARGV[3])
  hand_over('retry:' .. ARGV[2])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return result
