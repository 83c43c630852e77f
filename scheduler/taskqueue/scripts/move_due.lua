-- Move due delayed retries into the stream, re-pointing each task's run lock from the parked retry to its
-- new entry in the same step (so the lock always names a live run). Atomic, so any number of daemons may
-- run it at once; run twice, it moves only what is due then.
-- KEYS: delayed set, stream.  ARGV: max entries to move, run lock key prefix, lock ttl ms.
-- Returns {moved, ms until the next one is due, or -1 when none waits, then per moved retry: its parked
-- entry id, its new entry id, its task id or ''} (the daemon logs each move: the entry id changes).
local now = now_ms()
local moves = {}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
for i = 1, #due, 2 do
  local member, score = due[i], due[i + 1]
  local sep = string.find(member, '|', 1, true)
  local old, payload = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
  local id = redis.call('XADD', KEYS[2], '*', 'data', payload)
  redis.call('ZREM', KEYS[1], member)
  local task = string.match(payload, '"task_id":(%d+)')
  moves[#moves + 1] = old
  moves[#moves + 1] = id
  moves[#moves + 1] = task or ''
  if task then
    local lock = ARGV[2] .. task
    local owner = redis.call('GET', lock)
    if owner == 'retry:' .. old .. ':' .. string.format('%d', tonumber(score)) or owner == 'retry:' .. old then
      redis.call('SET', lock, id, 'PX', ARGV[3])
    end
  end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local out = {#due / 2, -1}
if #nxt > 0 then
  out[2] = math.max(0, tonumber(nxt[2]) - now)
end
for _, v in ipairs(moves) do out[#out + 1] = v end
return out
