-- May these execute entries run their tasks' crawls? Takes each task's run lock: collapses duplicates
-- under at-least-once delivery, and heals a leaked lock at the cost of one check.
-- A user's request (source user_create) is also noted in the run-requests hash, so that a stop made
-- before it but processed after it changes nothing (set_status.lua reads it).
-- KEYS: stream, delayed set, last-success hash, run-requests hash, then one run lock per entry.
-- ARGV: group, consumer, lock ttl ms, lease ms, then five per entry: entry id, task id, request stamp (its first
--       entry's id as ms * 1000 + seq), retry, '1' for a user's request ('' otherwise).
-- Returns {Redis time ms, then one verdict per entry}: 'run' (the entry now holds its task's run lock),
-- 'healed' (the same, taking over a lock that named no live run), 'duplicate' (a live run of the task is
-- queued, parked or in flight), 'behind' (a user's first request while a run added before it is delivered
-- and alive: it may have started before the request, so the request waits for it), 'satisfied' (a crawl that started after this request was made has
-- already succeeded), 'gone' (the entry is no longer pending to this consumer: nothing taken).
-- Safe to run twice: an entry that holds the lock gets 'run' again. Entries of one task in one batch:
-- the first runs, the others are duplicates.
local stream, delayed = KEYS[1], KEYS[2]
local group, consumer, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[4])

-- The holder may have started crawling before the request was made: an entry delivered, renewed within
-- the lease (a holder idle longer is dead or abandoned: waiting for it could take until its lock's TTL),
-- and added before the request (one added after it starts after it, and answers it).
local function started_before(owner, made)
  local ms, seq = string.match(owner, '^(%d+)-(%d+)$')
  if not ms or tonumber(ms) * 1000 + math.min(tonumber(seq), 999) > made then return false end
  local p = redis.pcall('XPENDING', stream, group, 'IDLE', 0, owner, owner, 1)
  if type(p) ~= 'table' or p.err or not p[1] then return false end
  return tonumber(p[1][3]) < lease_ms
end
local out = {now_ms()}
local entries = {}
for i = 5, #KEYS do entries[#entries + 1] = ARGV[(i - 5) * 5 + 5] end
local held = pending_to_me(stream, group, consumer, entries)
for i = 5, #KEYS do
  local a = (i - 5) * 5 + 5
  local entry, task, made, retry = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local made_ms = math.floor(made / 1000)
  local verdict
  if not held[entry] then
    verdict = 'gone'
  else
    if ARGV[a + 4] == '1' and made > (tonumber(redis.call('HGET', KEYS[4], task)) or 0) then
      redis.call('HSET', KEYS[4], task, ARGV[a + 2])
    end
    local owner = redis.call('GET', KEYS[i])
    if owner == entry then
      verdict = 'run'
    elseif owner and lock_live(stream, group, delayed, owner) then
      -- a retry parked by the previous release ('retry:<entry>', not re-pointed when moved) is taken
      -- over by the retried message, as that release did
      if retry > 0 and string.sub(owner, 1, 6) == 'retry:' and not string.find(owner, ':', 7, true) then
        verdict = 'run'
      elseif ARGV[a + 4] == '1' and retry == 0 and started_before(owner, made) then
        -- a user's request behind a run already delivered and alive, whose crawl may have started
        -- before the request was made: it waits for that run to end (then 'satisfied', or it runs)
        local last = redis.call('HGET', KEYS[3], task)
        verdict = (last and tonumber(last) >= made_ms) and 'satisfied' or 'behind'
      else
        verdict = 'duplicate'  -- queued or parked: that run starts after this request, and answers it
      end
    else
      verdict = owner and 'healed' or 'run'
      if retry == 0 then
        local last = redis.call('HGET', KEYS[3], task)
        if last and tonumber(last) >= made_ms then
          verdict = 'satisfied'
        end
      end
    end
    if verdict == 'run' or verdict == 'healed' then
      redis.call('SET', KEYS[i], entry, 'PX', ARGV[3])
    end
  end
  out[#out + 1] = verdict
end
return out
