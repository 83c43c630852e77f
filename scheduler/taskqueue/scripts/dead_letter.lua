-- Dead-letter one entry, only if this call's XACK removed it (exactly one dead letter per entry).
-- KEYS: stream, dead-letter stream.  ARGV: group, entry id, payload, reason, failed_at, dlq maxlen,
-- and "noack" as ARGV[7] for an entry already gone from the pending list (XAUTOCLAIM's deleted ids).
if ARGV[7] ~= 'noack' and redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*',
  'original_id', ARGV[2], 'payload', ARGV[3], 'reason', ARGV[4], 'failed_at', ARGV[5])
return 1
