-- Stop, run (register, re-enable) or delete a task: status, schedule, parked retry and run lock in one
-- atomic step. Requests are ordered by when they were made (entry id time, or Redis time for a direct
-- call), not by when they are processed: a stop queued before a re-enable, and processed after it, changes
-- nothing. Safe to run twice.
-- KEYS: spec hash, schedule set, intervals hash, delayed set, run lock, last-success hash, seen-items key,
--       task index set, stream, run-requests hash (a user's latest request to run each task).
-- ARGV: task id, op ('stop' | 'run' | 'delete'), request stamp ('' = now; an entry id as ms * 1000 +
--       seq, on the scale of Redis TIME in µs), interval ms, who, group, control channel.
-- Returns {answer, status ms}: answer 'applied', 'stale' (a later request already set the status:
-- nothing changed) or 'unknown' (no such task; a stop still cleans its schedule and lock).
local task, op, who = ARGV[1], ARGV[2], ARGV[5]
local now = now_ms()
local made = tonumber(ARGV[3])  -- a stamp
local exists = redis.call('EXISTS', KEYS[1]) == 1
-- the previous release stamps only updated_at (seconds): the later of the two counts
local current = math.max(tonumber(redis.call('HGET', KEYS[1], 'status_at') or '') or 0,
  math.floor((tonumber(redis.call('HGET', KEYS[1], 'updated_at') or '') or 0) * 1000000))
if op == 'stop' then  -- a user asked the task to run after this stop was made: the stop is stale
  current = math.max(current, tonumber(redis.call('HGET', KEYS[10], task)) or 0)
end
if not made then
  -- a direct call (CLI, register) is made now and always applies; stamped no earlier than the last
  -- change, so entry ids running ahead of Redis' clock cannot make it look older than what it overrides
  made = math.max(now_us(), current)
elseif exists and op ~= 'delete' and made < current then
  return {'stale', current}
end
if op == 'run' then
  if not exists then return {'unknown', 0} end
  redis.call('HSET', KEYS[1], 'status', 'running', 'status_at', string.format('%d', made),
    'updated_at', made / 1000000)
  local interval = tonumber(ARGV[4])
  redis.call('HSET', KEYS[3], task, interval)
  redis.call('ZADD', KEYS[2], now + interval, task)
  local owner = redis.call('GET', KEYS[5])
  if owner and not lock_live(KEYS[9], ARGV[6], KEYS[4], owner) then
    redis.call('DEL', KEYS[5])  -- a leaked lock would hold the first run back
  end
  return {'applied', made}
end
-- stop or delete
if exists then
  redis.call('HSET', KEYS[1], 'status', 'stopped', 'status_at', string.format('%d', made),
    'updated_at', made / 1000000, 'stopped_by', who, 'stopped_at', made / 1000000)
end
redis.call('ZREM', KEYS[2], task)
redis.call('HDEL', KEYS[3], task)
-- its parked retries go too (O(delayed set); stops are rare, and a retry that escaped is skipped when due)
local pattern = '"task_id":' .. task .. ','
for _, member in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
  if string.find(member, pattern, 1, true) then
    redis.call('ZREM', KEYS[4], member)
  end
end
redis.call('DEL', KEYS[5])
if op == 'delete' then
  redis.call('DEL', KEYS[1], KEYS[7])
  redis.call('SREM', KEYS[8], task)
  redis.call('HDEL', KEYS[6], task)
  redis.call('HDEL', KEYS[10], task)
end
redis.call('PUBLISH', ARGV[7], 'stop ' .. task)
if not exists then return {'unknown', 0} end
return {'applied', made}
