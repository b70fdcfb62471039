-- presence_kit: record one connection, atomically for its user.
-- KEYS[1] alive hash (the spec's key)
-- KEYS[2] the user's connection records in this role: fields 'c:<sid>' -> record and
--         'n' (their count). For roles that drive the alive hash it IS the alive hash.
-- KEYS[3] tombstone of this sid         KEYS[4] held-back leave of this (user, role)
-- KEYS[5] org index (sid -> entry), only when ARGV[8] == '1' (same node: standalone)
-- KEYS[6] org index to snapshot, only when ARGV[9] == '1'
-- KEYS[7] this node's index (sid -> [org_id, user_id, role]), only when ARGV[8] == '1'
-- ARGV[1] sid  ARGV[2] record  ARGV[3] tracks alive (0/1)  ARGV[4] state field
-- ARGV[5] connect state  ARGV[6] safety TTL (s) of a separate record hash  ARGV[7] org index entry
-- ARGV[8] write the org and node indexes here (0/1)  ARGV[9] return a snapshot (0/1)
-- ARGV[10] node index entry
-- Returns {status, first (0/1), connections, version, now_ms, resumed (0/1), snapshot}
-- with integers and strings only (snapshot: an array of index entries).
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tracks = ARGV[3] == '1'
local with_index = ARGV[8] == '1'
local field = 'c:' .. ARGV[1]

local function count()
  return tonumber(redis.call('HGET', KEYS[2], 'n') or '0')
end

local function version()
  if not tracks then return 0 end
  return tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
end

local function snapshot()
  if ARGV[9] == '1' then return redis.call('HVALS', KEYS[6]) end
  return {}
end

if redis.call('EXISTS', KEYS[3]) == 1 then
  -- this sid already disconnected: a late (or retried) connect must not revive it
  return {'stale', 0, count(), 0, now_ms, 0, snapshot()}
end
if redis.call('HEXISTS', KEYS[2], field) == 1 then
  local n = count()
  return {'repeat', n == 1 and 1 or 0, n, version(), now_ms, 0, snapshot()}
end

redis.call('HSET', KEYS[2], field, ARGV[2])
local n = redis.call('HINCRBY', KEYS[2], 'n', 1)
if KEYS[2] ~= KEYS[1] then redis.call('EXPIRE', KEYS[2], ARGV[6]) end
if with_index then
  redis.call('HSET', KEYS[5], ARGV[1], ARGV[7])
  redis.call('HSET', KEYS[7], ARGV[1], ARGV[10])
end
local first = n == 1 and 1 or 0
local resumed = 0
local held = redis.call('HGET', KEYS[4], 'sid')
if held then
  -- a leave held back by the grace period: cancel it; the user never went offline
  redis.call('DEL', KEYS[4])
  if with_index then redis.call('HDEL', KEYS[5], held) end
  first, resumed = 0, 1
end
local v = 0
if tracks then
  if first == 1 then
    v = redis.call('HINCRBY', KEYS[1], 'version', 1)
    redis.call('HSET', KEYS[1], ARGV[4], ARGV[5], 'since', now_ms)
  else
    redis.call('HSET', KEYS[1], ARGV[4], ARGV[5])
    v = version()
  end
  redis.call('PERSIST', KEYS[1])
end
return {'new', first, n, v, now_ms, resumed, snapshot()}
