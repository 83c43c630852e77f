-- May this execute entry run its task's crawl? Collapses duplicates under at-least-once delivery.
-- KEYS: the task's run marker, the last-success hash.
-- ARGV: entry id, task id, message time ms, retry, marker ttl ms.
-- Returns 'run', 'duplicate' (another run of the task is queued or in flight) or 'satisfied' (a crawl that
-- started after this request was made has already succeeded).
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then
  -- a retry parked by requeue left 'retry:<old entry>': the retried message takes the run over
  if not (tonumber(ARGV[4]) > 0 and string.sub(owner, 1, 6) == 'retry:') then
    return 'duplicate'
  end
elseif not owner and tonumber(ARGV[4]) == 0 then
  local last = redis.call('HGET', KEYS[2], ARGV[2])
  if last and tonumber(last) >= tonumber(ARGV[3]) then
    return 'satisfied'
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[5])
return 'run'
