-- Merge one crawl's prices into GoodsHunter's dedup hash (source id -> last price, shared with a Go
-- scheduler) and write each notification event to the outbox, in one atomic step: an item whose price
-- has already moved on (this crawl ran before, or another scheduler merged it) writes and notifies
-- nothing, so a crawl run twice mails nothing twice.
-- Fenced: only while this consumer still holds the crawl's entry (a daemon that froze past its lease,
-- whose entry another daemon reclaimed and crawled, must not rewind the hash to its older prices).
-- KEYS: dedup hash, outbox stream, task stream.
-- ARGV: outbox maxlen, task id, keyword, recipient ('' = no mail), group, consumer, entry id, then seven
--       per item ('' entry id: no fence, for callers outside a consumer): source id,
--       the price this crawl compared against ('' = the item was unknown), new price, title, image url,
--       item url, event ('new_item', 'price_drop' or '' for none).
-- Returns {prices written, events written, items already merged}, or {-1, 0, 0}: the entry is no longer
-- this consumer's (nothing written).
if ARGV[7] ~= '' and pending_to(KEYS[3], ARGV[5], ARGV[7]) ~= ARGV[6] then
  return {-1, 0, 0}
end
local written, events, merged = 0, 0, 0
for a = 8, #ARGV, 7 do
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
