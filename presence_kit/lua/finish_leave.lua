-- presence_kit: run a held-back leave whose grace has ended, at most once.
-- KEYS[1] alive hash   KEYS[2] record hash (see connect.lua)   KEYS[3] held-back leave
-- KEYS[4] org index, only when ARGV[5] == '1'; KEYS[5] leave queue, only when ARGV[6] == '1'
-- ARGV[1] state field  ARGV[2] disconnect state  ARGV[3] offline TTL (s)
-- ARGV[4] leave-queue member  ARGV[5] update the org index here  ARGV[6] dequeue here
-- Returns {status, version, at_ms, sid, record, reason, due_ms}: status 'left' (this call
-- claimed and ran the leave), 'gone' (nothing held back: cancelled or already run),
-- or 'later' (not due yet; due_ms says when).
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = redis.call('HMGET', KEYS[3], 'sid', 'record', 'reason', 'due')
if not held[1] then
  if ARGV[6] == '1' then redis.call('ZREM', KEYS[5], ARGV[4]) end
  return {'gone', 0, now_ms, '', '', '', 0}
end
local due = tonumber(held[4])
if due > now_ms then
  return {'later', 0, now_ms, '', '', '', due}
end
redis.call('DEL', KEYS[3])
if ARGV[6] == '1' then redis.call('ZREM', KEYS[5], ARGV[4]) end
if ARGV[5] == '1' then redis.call('HDEL', KEYS[4], held[1]) end
if tonumber(redis.call('HGET', KEYS[2], 'n') or '0') > 0 then
  -- a connection came back without cancelling (cannot happen through connect.lua)
  return {'gone', 0, now_ms, '', '', '', 0}
end
local v = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], 'reason', held[3], 'since', now_ms)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {'left', v, now_ms, held[1], held[2], held[3], due}
