-- Record successful crawls and end their entries, for a batch of outcomes in one call.
-- For each outcome, only while this consumer still holds the entry (a zombie whose entry was reclaimed
-- writes nothing): note which items are new for the task, publish the result, set the Go original's
-- status keys, release the run marker, note the crawl's start as the task's last success, and XACK last
-- (a write refused mid-script leaves the entry pending, never acknowledged without its outcome).
-- KEYS: stream, results stream, last-success hash, then four per outcome: seen set, status key,
--       message key, run marker.
-- ARGV: group, consumer, seen ttl s, results maxlen, status ttl s, then per outcome: entry id, task id,
--       status, total found, crawled at, items json, crawl start ms, n, and the n item source ids.
-- Returns per outcome the number of new items, or -1 when the entry is no longer held (nothing written).
local out = {}
local a = 6
for k = 4, #KEYS, 4 do
  local entry, task, status = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local total, crawled, items, started = ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6]
  local n = tonumber(ARGV[a + 7])
  local first, last = a + 8, a + 7 + n
  a = last + 1
  local held = redis.call('XPENDING', KEYS[1], ARGV[1], entry, entry, 1)
  if not held[1] or held[1][2] ~= ARGV[2] then
    out[#out + 1] = -1
  else
    local new = {}
    for i = first, last do
      if redis.call('SISMEMBER', KEYS[k], ARGV[i]) == 0 then
        new[#new + 1] = ARGV[i]
      end
    end
    for i = first, last, 500 do  -- SADD in chunks: unpack() is bounded by the Lua stack
      redis.call('SADD', KEYS[k], unpack(ARGV, i, math.min(i + 499, last)))
    end
    if n > 0 then
      redis.call('EXPIRE', KEYS[k], ARGV[3])
    end
    local new_json = '[]'
    if #new > 0 then
      new_json = cjson.encode(new)
    end
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'task_id', task, 'entry_id', entry,
      'status', status, 'total_found', total, 'crawled_at', crawled, 'items', items, 'new_items', new_json)
    redis.call('SET', KEYS[k + 1], status, 'EX', ARGV[5])
    if status == 'no_items' then
      redis.call('SET', KEYS[k + 2], 'no_items', 'EX', ARGV[5])
    else
      redis.call('DEL', KEYS[k + 2])
    end
    if redis.call('GET', KEYS[k + 3]) == entry then
      redis.call('DEL', KEYS[k + 3])
    end
    redis.call('HSET', KEYS[3], task, started)
    redis.call('XACK', KEYS[1], ARGV[1], entry)
    out[#out + 1] = #new
  end
end
return out
