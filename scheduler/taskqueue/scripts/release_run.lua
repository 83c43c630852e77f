-- The run of this entry is over: drop the task's marker if this entry still holds it, and on success note
-- when the successful crawl started (later requests made before it are then already satisfied).
-- KEYS: the task's run marker, the last-success hash.  ARGV: entry id, task id, crawl start ms or ''.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
end
return 1
