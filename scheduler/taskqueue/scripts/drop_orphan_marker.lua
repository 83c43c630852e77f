-- Delete a task's 'retry:<entry>' run marker when no retry of that entry waits in the delayed set any more
-- (a stop raced the requeue, or the delayed entry was removed): otherwise the task could not run until the
-- marker's TTL ran out. KEYS: run marker, delayed set.  ARGV: task id.  Returns 1 if deleted.
local owner = redis.call('GET', KEYS[1])
if not owner or string.sub(owner, 1, 6) ~= 'retry:' then
  return 0
end
local prefix = string.sub(owner, 7) .. '|'
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if string.sub(member, 1, #prefix) == prefix then
    return 0
  end
end
redis.call('DEL', KEYS[1])
return 1
