-- presence_kit: record one connection, atomically for its user.
-- Returns {status, first (0/1), connections, version, now_ms, resumed (0/1), snapshot,
-- attempt, earlier, cancelled} with integers and strings only (snapshot: an array of
-- index entries; cancelled: the sid of a held-back leave this call cancelled, or ''). On a repeat, first, version and attempt are the first call's (kept beside
-- the record as 'o:<sid>' -> 'first:version:attempt'), so a replay of a call whose
-- reply was lost announces what that call did, and nothing else does. earlier: when
-- this call is such a replay and its first try brought the user online at a version
-- that nobody announced before the connection was removed (its disconnect, or a sweep:
-- the tombstone keeps that try's outcome): that version (0: none).
local alive_key = KEYS[1]       -- alive hash (the spec's key)
local records_key = KEYS[2]     -- the user's connection records in this role: fields
                                -- 'c:<sid>' -> record and 'n' (their count); for roles
                                -- that drive the alive hash it IS the alive hash
local tombstone_key = KEYS[3]   -- tombstone of this sid
local held_key = KEYS[4]        -- held-back leave of this (user, role)
local org_index_key = KEYS[5]   -- org index (sid -> entry), only with with_index
local snapshot_key = KEYS[6]    -- org index to snapshot, only with with_snapshot
local node_index_key = KEYS[7]  -- this node's index (sid -> [org_id, user_id, role]),
                                -- only with with_index
local feed = feed_of(KEYS[8], ARGV[14], ARGV[15], ARGV[16])  -- the feed (feed.lua)
local sid = ARGV[1]
local record = ARGV[2]
local tracks = ARGV[3] == '1'   -- this role drives the alive hash
local state_field = ARGV[4]
local connect_state = ARGV[5]
local record_ttl = ARGV[6]      -- safety TTL (s) of a separate record hash
local index_entry = ARGV[7]     -- org index entry
local with_index = ARGV[8] == '1'     -- write the org and node indexes here (standalone)
local with_snapshot = ARGV[9] == '1'  -- return a snapshot
local node_entry = ARGV[10]     -- node index entry
local this_attempt = ARGV[11]   -- this call's attempt id ([A-Za-z0-9.-]*)
local counts = ARGV[12]         -- the prefix of the org's counts (index.lua), kept with
                                -- the org index
local meta = ARGV[13]           -- the connection's meta (JSON), '' for none

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local field = 'c:' .. sid
local outcome_field = 'o:' .. sid

local function count()
  return tonumber(redis.call('HGET', records_key, 'n') or '0')
end

local function version()
  if not tracks then return 0 end
  return tonumber(redis.call('HGET', alive_key, 'version') or '0')
end

local function snapshot()
  if with_snapshot then return redis.call('HVALS', snapshot_key) end
  return {}
end

local earlier = 0  -- see the header
local stone = redis.call('GET', tombstone_key)
if stone then
  -- the removed connection's connect outcome comes first (tombstones of 0.2 lack it)
  local first, v, attempt = string.match(stone, '^[~+](%d):(%d+):([^:]*):')
  if attempt == this_attempt and first == '1' then earlier = tonumber(v) end
  if string.sub(stone, 1, 1) ~= '~' then
    -- this sid already disconnected: a late (or retried) connect must not revive it
    return {'stale', 0, count(), 0, now_ms, 0, snapshot(), this_attempt, earlier, ''}
  end
  -- swept as a lost node's, which was only cut off: it registers the sid again
  redis.call('DEL', tombstone_key)
end
local stored = redis.call('HMGET', records_key, field, outcome_field)
if stored[1] then
  -- already recorded (a retried, replayed or repeated call): the first call's outcome
  if stored[1] ~= record then
    local parsed, fields = pcall(cjson.decode, stored[1])
    local mine = cjson.decode(record)[5]
    if not parsed or fields[5] ~= mine then
      -- written by an earlier incarnation of this node, before it learnt it had been
      -- swept: the connection is this incarnation's now, indexed where its sweep looks
      -- (a record this incarnation wrote, or updated since, stays as it is)
      redis.call('HSET', records_key, field, record)
      if with_index then redis.call('HSET', node_index_key, sid, node_entry) end
    end
  end
  local first, v, attempt = '0', version(), '?'  -- '?': recorded before outcomes were kept
  if stored[2] then first, v, attempt = string.match(stored[2], '^(%d):(%d+):(.*)$') end
  return {'repeat', tonumber(first), count(), tonumber(v), now_ms, 0, snapshot(), attempt, 0,
    ''}
end

local n = redis.call('HINCRBY', records_key, 'n', 1)
if records_key ~= alive_key then redis.call('EXPIRE', records_key, record_ttl) end
if with_index then
  index_set(org_index_key, counts, sid, index_entry, false)
  redis.call('HSET', node_index_key, sid, node_entry)
end
local first = n == 1 and 1 or 0
local resumed = 0
local held = redis.call('HGET', held_key, 'sid')
if held then
  -- a leave held back by the grace period: cancel it; the user never went offline
  redis.call('DEL', held_key)
  if with_index then index_del(org_index_key, counts, held) end
  first, resumed = 0, 1
end
local v = 0
if tracks then
  if first == 1 then
    v = redis.call('HINCRBY', alive_key, 'version', 1)
    redis.call('HSET', alive_key, state_field, connect_state, 'since', now_ms)
    redis.call('PERSIST', alive_key)  -- it expired offline_ttl after the last leave
  else
    -- online already (another connection, or a held-back leave cancelled above,
    -- neither of which set a TTL): the state is rewritten for readers that changed it
    redis.call('HSET', alive_key, state_field, connect_state)
    v = version()
  end
end
-- (HSETNX would save the HMGET, but needs a command the documented ACL lacks)
redis.call('HSET', records_key, field, record,
  outcome_field, first .. ':' .. v .. ':' .. this_attempt)
if meta ~= '' then redis.call('HSET', records_key, 'm:' .. sid, meta) end
feed_add(feed, 'join', sid, record, nil, nil, now_ms)
if tracks and first == 1 then feed_add(feed, 'online', sid, record, nil, v, now_ms) end
return {'new', first, n, v, now_ms, resumed, snapshot(), this_attempt, earlier, held or ''}
