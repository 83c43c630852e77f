-- Move due delayed retries into the stream. Atomic, so any number of daemons may run it at once.
-- KEYS: delayed set, stream.  ARGV: max entries to move.
-- Returns {moved, ms until the next one is due, or -1 when none waits}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local sep = string.find(member, '|', 1, true)
  redis.call('XADD', KEYS[2], '*', 'data', string.sub(member, sep + 1))
  redis.call('ZREM', KEYS[1], member)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #nxt == 0 then
  return {#due, -1}
end
return {#due, math.max(0, tonumber(nxt[2]) - now)}
