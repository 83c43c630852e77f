-- Publish due periodic runs: each due task once per period, by whichever daemon runs this first.
-- KEYS: schedule set (task id → next run ms), intervals hash (task id → ms), stream, delayed set.
-- ARGV: now-timestamp text for the message (RFC 3339), max tasks, run lock key prefix, lock ttl ms, group.
-- On time (at most a tenth of a period late, the usual case): the next run is scheduled time + interval,
-- so periods never drift. Later than that (daemons were down, Redis was away): the missed periods
-- collapse into this one run and the next is a full period from now, never a burst of catch-up runs
-- nor two runs closer than a period.
-- A task whose previous run still holds its run lock (queued, retrying, in flight) is skipped, not
-- stacked; a lock that names no live run (leaked) is taken over.
-- Returns {published, skipped, ms until the next due run or -1}.
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local published, skipped = 0, 0
for i = 1, #due, 2 do
  local task, scheduled = due[i], tonumber(due[i + 1])
  local interval = tonumber(redis.call('HGET', KEYS[2], task) or '0')
  if interval == nil or interval <= 0 then
    redis.call('ZREM', KEYS[1], task)  -- no interval known: not periodic any more
  else
    local nxt = scheduled + interval
    if now - scheduled > interval / 10 then
      nxt = now + interval
    end
    redis.call('ZADD', KEYS[1], nxt, task)
    local lock = ARGV[3] .. task
    local owner = redis.call('GET', lock)
    if owner and lock_live(KEYS[3], ARGV[5], KEYS[4], owner) then
      skipped = skipped + 1
    else
      local data = '{"task_id":' .. task .. ',"action":"execute","timestamp":"' .. ARGV[1] ..
        '","retry":0,"source":"periodic"}'
      local id = redis.call('XADD', KEYS[3], '*', 'data', data)
      redis.call('SET', lock, id, 'PX', ARGV[4])
      published = published + 1
    end
  end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #nxt == 0 then
  return {published, skipped, -1}
end
return {published, skipped, math.max(0, tonumber(nxt[2]) - now)}
