-- Put one dead letter back on the task stream, atomically: the new entry and the removal from the
-- dead-letter stream happen together or not at all, so a replay of an id already replayed (or a second
-- operator replaying at the same time) adds nothing.
-- KEYS: dead-letter stream, task stream.  ARGV: dead-letter entry id, the payload to enqueue (the caller
-- has decoded it and reset its retry to 0).
-- Returns the new stream entry id, or false when the dead letter no longer exists.
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then
  return false
end
local id = redis.call('XADD', KEYS[2], '*', 'data', ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[1])
return id
