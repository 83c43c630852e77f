-- Shared by the scripts that end entries or take run locks (prepended by scripts.py).

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Redis' clock in microseconds: the scale of request stamps (an entry id as ms * 1000 + seq)
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- An entry id's two parts as decimal strings without leading zeros (nil, nil: not an entry id that Redis
-- would take, 64-bit parts at most). Compared as strings: Lua's doubles lose digits past 2^53.
local U64_MAX = '18446744073709551615'
local function id_parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  if not ms then return nil, nil end
  -- Redis writes no leading zeros: the strip runs only where there are some ('0' itself keeps its zero)
  if #ms > 1 and string.byte(ms) == 48 then ms = string.match(ms, '^0*(%d+)$') end
  if #seq > 1 and string.byte(seq) == 48 then seq = string.match(seq, '^0*(%d+)$') end
  if #ms > 20 or #seq > 20 or (#ms == 20 and ms > U64_MAX) or (#seq == 20 and seq > U64_MAX) then
    return nil, nil
  end
  return ms, seq
end

local function part_before(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end

-- (ams, aseq) before (bms, bseq): parts as id_parts returns them
local function parts_before(ams, aseq, bms, bseq)
  if ams ~= bms then return part_before(ams, bms) end
  return part_before(aseq, bseq)
end

local function id_before(a, b)
  local ams, aseq = id_parts(a)
  local bms, bseq = id_parts(b)
  if not ams or not bms then return false end
  return parts_before(ams, aseq, bms, bseq)
end

-- The consumer an entry is pending to, or nil (acknowledged, never delivered, gone, or no group).
local function pending_to(stream, group, entry)
  local p = redis.pcall('XPENDING', stream, group, entry, entry, 1)
  if type(p) ~= 'table' or p.err or not p[1] then return nil end
  return p[1][2]
end

-- Which of these entries are pending to this consumer: a set (entry id -> true), exact, in one XPENDING
-- over the batch's id range instead of one per entry. Asked one by one: the entries past a full page
-- (the range holds many more of this consumer's entries than the batch), or all of them when XPENDING
-- refused the range (no stream, no group, a bound Redis rejects).
local function pending_to_me(stream, group, consumer, ids)
  local held, parsed, lo, hi = {}, {}, nil, nil
  for _, id in ipairs(ids) do
    local ms, seq = id_parts(id)
    if ms then  -- anything else is no entry id: it cannot be pending
      local e = {id, ms, seq}
      parsed[#parsed + 1] = e
      if not lo or parts_before(ms, seq, lo[2], lo[3]) then lo = e end
      if not hi or parts_before(hi[2], hi[3], ms, seq) then hi = e end
    end
  end
  if not lo then return held end
  local page = #ids * 2 + 32
  local p = redis.pcall('XPENDING', stream, group, lo[1], hi[1], page, consumer)
  local refused = type(p) ~= 'table' or p.err
  local last_ms, last_seq  -- the full page's last entry: the ones after it are not in the reply
  if not refused then
    for _, e in ipairs(p) do held[e[1]] = true end
    if #p < page then return held end
    last_ms, last_seq = id_parts(p[#p][1])
  end
  for _, e in ipairs(parsed) do
    if (refused or parts_before(last_ms, last_seq, e[2], e[3]))
        and pending_to(stream, group, e[1]) == consumer then
      held[e[1]] = true
    end
  end
  return held
end

-- Added to the stream and not yet delivered to the group (with no group yet, everything is undelivered:
-- the daemons create it from the start of the stream).
local function queued(stream, group, entry)
  local groups = redis.pcall('XINFO', 'GROUPS', stream)
  if type(groups) ~= 'table' or groups.err then return false end
  for _, g in ipairs(groups) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    if info['name'] == group and not id_before(info['last-delivered-id'], entry) then
      return false
    end
  end
  return #redis.call('XRANGE', stream, entry, entry) > 0
end

-- Does a run lock's value still name a live run? An entry id: that entry is queued or pending in the group.
-- 'retry:<entry>:<due ms>': that retry still waits in the delayed set. 'retry:<entry>' (written by the
-- previous release): the same, found by a scan. Anything else is a leak: the lock may be taken over.
local function lock_live(stream, group, delayed, value)
  if string.sub(value, 1, 6) == 'retry:' then
    local rest = string.sub(value, 7)
    local entry, due = string.match(rest, '^([%d%-]+):(%d+)$')
    local members
    if entry then
      members = redis.call('ZRANGEBYSCORE', delayed, due, due)
    else
      entry, members = rest, redis.call('ZRANGE', delayed, 0, -1)
    end
    local prefix = entry .. '|'
    for _, m in ipairs(members) do
      if string.sub(m, 1, #prefix) == prefix then return true end
    end
    return false
  end
  return pending_to(stream, group, value) ~= nil or queued(stream, group, value)
end
