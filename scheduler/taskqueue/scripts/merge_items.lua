-- Merge one crawl's prices into GoodsHunter's dedup hash (source id -> last price, shared with a Go
-- scheduler) and write each notification event to the outbox, in one atomic step: an item whose price
-- has already moved on (this crawl ran before, or another scheduler merged it) writes and notifies
-- nothing, so a crawl run twice mails nothing twice.
-- KEYS: dedup hash, outbox stream.
-- ARGV: outbox maxlen, task id, keyword, recipient ('' = no mail), then seven per item: source id,
--       the price this crawl compared against ('' = the item was unknown), new price, title, image url,
--       item url, event ('new_item', 'price_drop' or '' for none).
-- Returns {prices written, events written, items already merged}.
local written, events, merged = 0, 0, 0
for a = 5, #ARGV, 7 do
  local source, expected, price = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local current = redis.call('HGET', KEYS[1], source)
  if (current or '') ~= expected then
    merged = merged + 1
  else
    if current ~= price then
      redis.call('HSET', KEYS[1], source, price)
      written = written + 1
    end
    local event = ARGV[a + 6]
    if event ~= '' and ARGV[4] ~= '' then
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'kind', event, 'task_id', ARGV[2],
        'keyword', ARGV[3], 'to', ARGV[4], 'source_id', source, 'title', ARGV[a + 3], 'price', price,
        'old_price', expected, 'image_url', ARGV[a + 4], 'item_url', ARGV[a + 5])
      events = events + 1
    end
  end
end
return {written, events, merged}
