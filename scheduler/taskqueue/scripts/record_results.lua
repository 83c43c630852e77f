-- Publish a crawl's results and note which items are new for this task since its earlier runs.
-- KEYS: seen set of the task, results stream.
-- ARGV: task_id, entry_id, total_found, status, seen ttl s, results maxlen, crawled_at, items json,
--       then the items' source ids.
-- Returns the number of new items.
local new = {}
for i = 9, #ARGV do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 0 then
    new[#new + 1] = ARGV[i]
  end
end
for i = 9, #ARGV, 500 do  -- SADD in chunks: unpack() is bounded by the Lua stack
  redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
if #ARGV >= 9 then
  redis.call('EXPIRE', KEYS[1], ARGV[5])
end
local new_json = '[]'
if #new > 0 then new_json = cjson.encode(new) end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*',
  'task_id', ARGV[1], 'entry_id', ARGV[2], 'status', ARGV[4], 'total_found', ARGV[3],
  'crawled_at', ARGV[7], 'items', ARGV[8], 'new_items', new_json)
return #new
