-- presence_kit: remove one connection, atomically for its user; idempotent per sid.
-- Returns {status, last (0/1), version, at_ms, record, deferred (0/1), attempt}; on a
-- repeat, attempt is the first call's (so a replay knows whether that was its own try).
local alive_key = KEYS[1]       -- alive hash
local records_key = KEYS[2]     -- record hash (see connect.lua)
local tombstone_key = KEYS[3]   -- tombstone of this sid
local held_key = KEYS[4]        -- held-back leave of this (user, role)
local org_index_key = KEYS[5]   -- org index, only with with_index
local queue_key = KEYS[6]       -- leave queue, only with with_index
local node_index_key = KEYS[7]  -- index of the node that held the connection, only
                                -- with with_index
local sid = ARGV[1]
local tracks = ARGV[2] == '1'   -- this role drives the alive hash
local state_field = ARGV[3]
local disconnect_state = ARGV[4]
local offline_ttl = ARGV[5]     -- seconds
local reason = ARGV[6]
local tombstone_ttl = ARGV[7]   -- seconds
local grace_ms = tonumber(ARGV[8])  -- leave grace (0 = announce at once)
local queue_member = ARGV[9]    -- leave-queue member
local with_index = ARGV[10] == '1'  -- update the org and node indexes and queue a
                                    -- held-back leave here (standalone)
local remember = ARGV[11] == '1'    -- leave a tombstone that refuses a late connect
                                    -- ('+' first); a sweep of a lost node leaves a soft
                                    -- one ('~' first): its repeats get the outcome, but
                                    -- a node that was only cut off can register the sid
                                    -- again
local this_attempt = ARGV[12]   -- this call's attempt id ([A-Za-z0-9.-]*), kept in the
                                -- tombstone
local owner = ARGV[13]          -- remove the record only if this node incarnation wrote
                                -- it (a sweep's or reconcile's removal; '' = whoever)
local counts = ARGV[14]         -- the prefix of the org's counts (index.lua)
local feed = feed_of(KEYS[8], ARGV[15], ARGV[16], ARGV[17])  -- the feed (feed.lua)

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local done = redis.call('GET', tombstone_key)
local mark = done and string.sub(done, 1, 1)
if mark == '~' and remember then
  -- a sweep's, and a handler call after it: no connect may revive the sid now
  redis.call('SET', tombstone_key, '+' .. string.sub(done, 2), 'EX', tombstone_ttl)
end
if mark == '~' or mark == '+' then
  -- '<mark><the removed connect's outcome>:<the removal's outcome>'
  done = string.match(done, '^.%d:%d+:[^:]*:(.*)$')
end
if done then
  -- a repeat: what the first call did ("last:version:at_ms:deferred:attempt:record";
  -- tombstones written before attempts were kept lack that field: attempt '?')
  local last, v, at, deferred, attempt, record =
    string.match(done, '^(%d):(%d+):(%d+):(%d):([%w%.%-]*):(.*)$')
  if not last then
    last, v, at, deferred, record = string.match(done, '^(%d):(%d+):(%d+):(%d):(.*)$')
    attempt = '?'
  end
  return {'repeat', tonumber(last), tonumber(v), tonumber(at), record, tonumber(deferred),
    attempt}
end

local field = 'c:' .. sid
local outcome_field = 'o:' .. sid  -- the connect's outcome (see connect.lua)
local stored = redis.call('HMGET', records_key, field, outcome_field)
local record, connected = stored[1], stored[2] or '0:0:'
if record and owner ~= '' then
  local parsed, fields = pcall(cjson.decode, record)
  if parsed and fields[5] ~= owner then
    -- the node moved it to a later incarnation (it was swept while alive): not ours
    record = nil
  end
end
if with_index then redis.call('HDEL', node_index_key, sid) end
if not record then
  return {'unknown', 0, 0, now_ms, '', 0, this_attempt}
end
local last = 0
-- the record, its connect's outcome, its meta and its last update's outcome go
local fields = {field, outcome_field, 'm:' .. sid, 'u:' .. sid}
if redis.call('HINCRBY', records_key, 'n', -1) <= 0 then
  last = 1
  fields[5] = 'n'
end
redis.call('HDEL', records_key, unpack(fields))
local deferred = 0
local v = 0
if tracks then
  if last == 0 or grace_ms > 0 then
    v = tonumber(redis.call('HGET', alive_key, 'version') or '0')
  end
  if last == 1 and grace_ms > 0 then
    -- hold the leave back: the alive key stays 'connect' until the grace ends
    local due = now_ms + grace_ms
    redis.call('HSET', held_key, 'sid', sid, 'record', record, 'reason', reason, 'due', due)
    redis.call('PEXPIRE', held_key, grace_ms + tonumber(offline_ttl) * 1000)
    if with_index then redis.call('ZADD', queue_key, due, queue_member) end
    last, deferred = 0, 1
  elseif last == 1 then
    v = redis.call('HINCRBY', alive_key, 'version', 1)
    redis.call('HSET', alive_key, state_field, disconnect_state, 'reason', reason,
      'since', now_ms)
    redis.call('EXPIRE', alive_key, offline_ttl)
  end
end
if with_index and deferred == 0 then index_del(org_index_key, counts, sid) end
feed_add(feed, 'leave', sid, record, reason, nil, now_ms)
if tracks and last == 1 then feed_add(feed, 'offline', sid, record, reason, v, now_ms) end
local stone = last .. ':' .. v .. ':' .. now_ms .. ':' .. deferred .. ':' .. this_attempt ..
  ':' .. record
-- with the removed connect's outcome first, for a replay of that connect
stone = (remember and '+' or '~') .. connected .. ':' .. stone
redis.call('SET', tombstone_key, stone, 'EX', tombstone_ttl)
return {'removed', last, v, now_ms, record, deferred, this_attempt}
