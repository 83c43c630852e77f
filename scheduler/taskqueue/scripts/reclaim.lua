-- Claim entries idle for at least min idle ms (their owner stopped renewing), with each one's delivery
-- count so the caller can enforce the crash-loop cap. Entries whose payload was trimmed or deleted are
-- dead-lettered as payload_lost and acknowledged here, in the same step. Matched by id, the same on
-- Redis 6.2 and 7 (no XAUTOCLAIM: 6.2 reports a deleted entry as a bare nil without its id).
-- Not safe to re-send blindly: a lost reply leaves the claimed entries in the caller's pending list,
-- which the caller recovers (Consumer.recover).
-- KEYS: stream, dead-letter stream.
-- ARGV: group, consumer, min idle ms, cursor ('0-0' or '(<id>' exclusive), count, failed at, dlq maxlen.
-- Returns {next cursor, {{id, fields, deliveries}...}, {ids dead-lettered as payload_lost}}.
local candidates = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], ARGV[4], '+', ARGV[5])
local claimed, lost = {}, {}
for _, p in ipairs(candidates) do
  local id = p[1]
  local entry = redis.call('XRANGE', KEYS[1], id, id)
  if p[2] == ARGV[2] then
    -- its own: held by a thread (renewal stalled) or left by a lost reply, which recovery takes up;
    -- claimed here it would count a delivery against an entry that may be running
  elseif #entry == 0 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'original_id', id, 'payload', '',
      'reason', 'payload_lost: entry was trimmed or deleted', 'failed_at', ARGV[6])
    redis.call('XACK', KEYS[1], ARGV[1], id)
    lost[#lost + 1] = id
  else
    -- a plain XCLAIM counts the delivery (the crash-loop cap depends on it)
    local got = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], id)
    if got[1] then
      claimed[#claimed + 1] = {id, got[1][2], p[4] + 1}
    end
  end
end
local cursor = '0-0'
if #candidates >= tonumber(ARGV[5]) then
  cursor = '(' .. candidates[#candidates][1]
end
return {cursor, claimed, lost}
