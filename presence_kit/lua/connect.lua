-- presence_kit: record one connection, atomically for its user.
-- KEYS[1] alive hash (the spec's key)   KEYS[2] connections hash (sid -> record)
-- KEYS[3] tombstone of this sid
-- ARGV[1] sid  ARGV[2] record  ARGV[3] tracks alive (0/1)  ARGV[4] state field
-- ARGV[5] connect state  ARGV[6] connection TTL (s)
-- Returns {status, first (0/1), connections, version, now_ms}; integers and strings only.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tracks = ARGV[3] == '1'

local function version()
  if not tracks then return 0 end
  return tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
end

if redis.call('EXISTS', KEYS[3]) == 1 then
  -- this sid already disconnected: a late (or retried) connect must not revive it
  return {'stale', 0, redis.call('HLEN', KEYS[2]), 0, now_ms}
end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  local n = redis.call('HLEN', KEYS[2])
  return {'repeat', n == 1 and 1 or 0, n, version(), now_ms}
end

redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[6])
local n = redis.call('HLEN', KEYS[2])
local first = n == 1 and 1 or 0
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
return {'new', first, n, v, now_ms}
