-- Delete run locks that name no live run (an entry trimmed or deleted before anyone could end it leaves
-- one behind: a payload-lost dead letter has no task to name it by). A lock left would only cost one
-- check at the task's next request; this keeps none at rest. KEYS: stream, delayed set, then run locks.
-- ARGV: group.  Returns the number deleted.
local deleted = 0
for i = 3, #KEYS do
  local owner = redis.call('GET', KEYS[i])
  if owner and not lock_live(KEYS[1], ARGV[1], KEYS[2], owner) then
    redis.call('DEL', KEYS[i])
    deleted = deleted + 1
  end
end
return deleted
