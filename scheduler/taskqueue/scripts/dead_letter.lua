-- Dead-letter one entry, only while this consumer still holds it (exactly one dead letter per entry);
-- the dead letter is written before the XACK, so a refused write leaves the entry pending.
-- KEYS: stream, dead-letter stream.
-- ARGV: group, entry id, payload, reason, failed_at, dlq maxlen, consumer ('' for an entry already gone
--       from the pending list, e.g. XAUTOCLAIM's deleted ids: no check, no ack).
if ARGV[7] ~= '' then
  local held = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
  if not held[1] or held[1][2] ~= ARGV[7] then
    return 0
  end
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*',
  'original_id', ARGV[2], 'payload', ARGV[3], 'reason', ARGV[4], 'failed_at', ARGV[5])
if ARGV[7] ~= '' then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
end
return 1
