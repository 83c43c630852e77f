-- End entries: every way an entry ends (success, retry, dead letter, plain acknowledgement) for a batch
-- of outcomes in one call. Per outcome, only while this consumer still holds the entry (a zombie whose
-- entry was reclaimed or ended writes nothing), atomically: the outcome, the Go status keys, the run
-- lock's release (or hand-over to the retry), a receipt, and the XACK last (a write refused mid-script
-- leaves the entry pending, never acknowledged without its outcome).
-- Safe to run twice (a reply lost and the call sent again): an entry already ended by this consumer is
-- recognised by its receipt and gets the same answer; nothing is written again.
-- KEYS: stream, results stream, last-success hash, delayed set, dead-letter stream, then four per
--       outcome: run lock, status key, message key, seen-items key.
-- ARGV: group, consumer, receipt ttl ms, seen ttl ms, results maxlen, status ttl s, dlq maxlen,
--       seen items kept per task, receipt key prefix, lock ttl ms, then per outcome: kind, entry id,
--       task id, n, and n arguments of the kind:
--   ok     status, total found, crawled at, items json, crawl start ms (Redis clock), source ids...
--   retry  payload (retry incremented), delay ms, error text ('' writes no status: a deferral)
--   dead   payload, reason, failed at, error text ('' writes no status)
--   ack    (none)
-- Returns one answer per outcome: 'ok:<new items>', 'retry', 'dead', 'ack', or 'not_held'.
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local status_ttl = ARGV[6]
local out = {}
local now  -- Redis time in ms, read once per call (at most: a batch of plain acks never needs it)
local function clock()
  if not now then now = now_ms() end
  return now
end

local function release(lock, entry)
  if redis.call('GET', lock) == entry then
    redis.call('DEL', lock)
  end
end

local function set_status(k, status, message)
  redis.call('SET', KEYS[k + 1], status, 'EX', status_ttl)
  if message == '' then
    redis.call('DEL', KEYS[k + 2])  -- always: a Go scheduler sharing the keys writes them apart
  else
    redis.call('SET', KEYS[k + 2], message, 'EX', status_ttl)
  end
end

local function succeed(k, entry, task, a, n)
  local status, total, crawled, items, started = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local first, last = a + 5, a + n - 1
  local seen = KEYS[k + 3]
  local new = {}
  for i = first, last, 500 do  -- in chunks: unpack() is bounded by the Lua stack
    local j, at = math.min(i + 499, last), clock()  -- Redis time only when there are items to stamp
    local scores = redis.call('ZMSCORE', seen, unpack(ARGV, i, j))
    for x = 1, j - i + 1 do
      if not scores[x] then new[#new + 1] = ARGV[i + x - 1] end
    end
    local args = {'ZADD', seen}
    for x = i, j do
      args[#args + 1] = at
      args[#args + 1] = ARGV[x]
    end
    redis.call(unpack(args))
  end
  if last >= first then
    -- bounded: the items seen most recently are kept, the rest forgotten oldest first (only a crawl
    -- that added items can pass the bound; a lowered bound applies from the next one that does)
    if #new > 0 then
      redis.call('ZREMRANGEBYRANK', seen, 0, -tonumber(ARGV[8]) - 1)
    end
    redis.call('PEXPIRE', seen, ARGV[4])
  end
  local new_json = '[]'
  if #new > 0 then new_json = cjson.encode(new) end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'task_id', task, 'entry_id', entry,
    'status', status, 'total_found', total, 'crawled_at', crawled, 'items', items, 'new_items', new_json)
  set_status(k, status, status == 'no_items' and 'no_items' or '')
  release(KEYS[k], entry)
  redis.call('HSET', KEYS[3], task, started)
  return 'ok:' .. #new
end

local function retry(k, entry, a)
  local payload, delay = ARGV[a], tonumber(ARGV[a + 1])
  local lock, handed = KEYS[k], nil
  if delay <= 0 then
    handed = redis.call('XADD', stream, '*', 'data', payload)
  else
    local due = clock() + delay
    -- the entry id keeps members unique, so two identical payloads never collapse into one
    redis.call('ZADD', KEYS[4], due, entry .. '|' .. payload)
    handed = 'retry:' .. entry .. ':' .. string.format('%d', due)
  end
  -- only a lock this entry holds: after a stop (lock deleted) the retry must not revive it
  if redis.call('GET', lock) == entry then
    redis.call('SET', lock, handed, 'PX', ARGV[10])
  end
  if ARGV[a + 2] ~= '' then  -- '': deferred, not failed
    set_status(k, 'failed', ARGV[a + 2])
  end
  return 'retry'
end

local function dead(k, entry, a)
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[7], '*',
    'original_id', entry, 'payload', ARGV[a], 'reason', ARGV[a + 1], 'failed_at', ARGV[a + 2])
  release(KEYS[k], entry)
  if ARGV[a + 3] ~= '' then set_status(k, 'failed', ARGV[a + 3]) end
  return 'dead'
end

local entries, a = {}, 11
while a <= #ARGV do
  entries[#entries + 1] = ARGV[a + 1]
  a = a + 4 + tonumber(ARGV[a + 3])
end
local held = pending_to_me(stream, group, consumer, entries)

local k
a, k = 11, 6
while a <= #ARGV do
  local kind, entry, task, n = ARGV[a], ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
  local first = a + 4
  local receipt = ARGV[9] .. entry
  local answer
  if not held[entry] then
    local earlier = redis.call('GET', receipt)
    if earlier and string.sub(earlier, 1, #consumer + 1) == consumer .. '|' then
      answer = string.sub(earlier, #consumer + 2)
    else
      answer = 'not_held'
      -- no one holds the entry any more (trimmed, the group recreated): its run is over, and a lock
      -- still naming it would only wait to be healed
      if redis.call('GET', KEYS[k]) == entry and not lock_live(stream, group, KEYS[4], entry) then
        redis.call('DEL', KEYS[k])
      end
    end
  else
    if kind == 'ok' then
      answer = succeed(k, entry, task, first, n)
    elseif kind == 'retry' then
      answer = retry(k, entry, first)
    elseif kind == 'dead' then
      answer = dead(k, entry, first)
    else
      release(KEYS[k], entry)
      answer = 'ack'
    end
    redis.call('SET', receipt, consumer .. '|' .. answer, 'PX', ARGV[3])
    redis.call('XACK', stream, group, entry)
    held[entry] = nil  -- the same entry again in this call is answered from its receipt
  end
  out[#out + 1] = answer
  a, k = first + n, k + 4
end
return out
