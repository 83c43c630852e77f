-- May these execute entries run their tasks' crawls? Collapses duplicates under at-least-once delivery.
-- KEYS: the last-success hash, then one run marker per entry.
-- ARGV: marker ttl ms, then four per entry: entry id, task id, entry time ms, retry.
-- Returns one verdict per entry: 'run' (the entry now holds its task's run), 'duplicate' (another run of
-- the task is queued or in flight) or 'satisfied' (a crawl that started after this request was added
-- has already succeeded). Entries of one task in one batch: the first runs, the others are duplicates.
local verdicts = {}
for i = 2, #KEYS do
  local a = (i - 2) * 4 + 2
  local entry, task, made, retry = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local owner = redis.call('GET', KEYS[i])
  local verdict = 'run'
  if owner and owner ~= entry then
    -- a retry parked by requeue left 'retry:<old entry>': the retried message takes the run over
    if not (retry > 0 and string.sub(owner, 1, 6) == 'retry:') then
      verdict = 'duplicate'
    end
  elseif not owner and retry == 0 then
    local last = redis.call('HGET', KEYS[1], task)
    if last and tonumber(last) >= made then
      verdict = 'satisfied'
    end
  end
  if verdict == 'run' then
    redis.call('SET', KEYS[i], entry, 'PX', ARGV[1])
  end
  verdicts[#verdicts + 1] = verdict
end
return verdicts
