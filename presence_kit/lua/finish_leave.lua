-- presence_kit: run a held-back leave whose grace has ended, at most once.
-- Returns {status, version, at_ms, sid, record, reason, due_ms}: status 'left' (this call
-- claimed and ran the leave), 'gone' (nothing held back: cancelled or already run),
-- or 'later' (not due yet; due_ms says when).
local alive_key = KEYS[1]       -- alive hash
local records_key = KEYS[2]     -- record hash (see connect.lua)
local held_key = KEYS[3]        -- held-back leave
local org_index_key = KEYS[4]   -- org index, only with with_index
local queue_key = KEYS[5]       -- leave queue, only with with_index
local state_field = ARGV[1]
local disconnect_state = ARGV[2]
local offline_ttl = ARGV[3]     -- seconds
local queue_member = ARGV[4]    -- leave-queue member
local with_index = ARGV[5] == '1'  -- update the org index and dequeue here (standalone)
local counts = ARGV[6]          -- the prefix of the org's counts (index.lua)
local feed = feed_of(KEYS[6], ARGV[7], ARGV[8], ARGV[9])  -- the feed (feed.lua)

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = redis.call('HMGET', held_key, 'sid', 'record', 'reason', 'due')
if not held[1] then
  if with_index then redis.call('ZREM', queue_key, queue_member) end
  return {'gone', 0, now_ms, '', '', '', 0}
end
local due = tonumber(held[4])
if due > now_ms then
  return {'later', 0, now_ms, '', '', '', due}
end
redis.call('DEL', held_key)
if with_index then
  redis.call('ZREM', queue_key, queue_member)
  index_del(org_index_key, counts, held[1])
end
if tonumber(redis.call('HGET', records_key, 'n') or '0') > 0 then
  -- a connection came back without cancelling (cannot happen through connect.lua)
  return {'gone', 0, now_ms, '', '', '', 0}
end
local v = redis.call('HINCRBY', alive_key, 'version', 1)
redis.call('HSET', alive_key, state_field, disconnect_state, 'reason', held[3], 'since', now_ms)
redis.call('EXPIRE', alive_key, offline_ttl)
feed_add(feed, 'offline', held[1], held[2], held[3], v, now_ms)
return {'left', v, now_ms, held[1], held[2], held[3], due}
