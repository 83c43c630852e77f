-- Take a task off the schedule and out of the delayed-retry set, and drop its run marker.
-- KEYS: schedule set, intervals hash, delayed set, run marker.  ARGV: task id.
-- Returns the number of parked retries removed.
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[4])
local removed = 0
local pattern = '"task_id":' .. ARGV[1] .. ','
for _, member in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  if string.find(member, pattern, 1, true) then
    redis.call('ZREM', KEYS[3], member)
    removed = removed + 1
  end
end
return removed
