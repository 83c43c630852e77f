-- Claim entries idle for at least min_idle ms (their owner stopped renewing), with each one's delivery
-- count so the caller can enforce the crash-loop cap.
-- KEYS: stream.  ARGV: group, consumer, min idle ms, start id, count.
-- Returns {next cursor, {{id, fields, deliveries}...}, {ids whose payload was trimmed away}}; the latter
-- are no longer pending for anyone.
-- Redis 7 replies {cursor, entries, deleted ids} and drops trimmed entries from the pending list itself.
-- Redis 6.2 replies {cursor, entries} with a bare nil where an entry was trimmed (no id, still pending):
-- XPENDING ... IDLE over the same start and count lists the same entries in the same order, so the
-- position of the nil names the id.
local candidates = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], ARGV[4], '+', ARGV[5])
local deliveries = {}
for _, p in ipairs(candidates) do deliveries[p[1]] = p[4] + 1 end
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local claimed, deleted = {}, r[3] or {}
for i, e in ipairs(r[2]) do
  if e then
    claimed[#claimed + 1] = {e[1], e[2], deliveries[e[1]] or 1}
  elseif candidates[i] then
    redis.call('XACK', KEYS[1], ARGV[1], candidates[i][1])
    deleted[#deleted + 1] = candidates[i][1]
  end
end
return {r[1], claimed, deleted}
