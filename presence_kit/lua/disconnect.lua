-- presence_kit: remove one connection, atomically for its user; idempotent per sid.
-- KEYS[1] alive hash   KEYS[2] connections hash   KEYS[3] tombstone of this sid
-- ARGV[1] sid  ARGV[2] tracks alive (0/1)  ARGV[3] state field  ARGV[4] disconnect state
-- ARGV[5] offline TTL (s)  ARGV[6] reason  ARGV[7] tombstone TTL (s)
-- Returns {status, last (0/1), version, at_ms, record}; integers and strings only.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local done = redis.call('GET', KEYS[3])
if done then
  -- a repeat: return what the first call did ("last:version:at_ms:record")
  local last, v, at, record = string.match(done, '^(%d):(%d+):(%d+):(.*)$')
  return {'repeat', tonumber(last), tonumber(v), tonumber(at), record}
end

local record = redis.call('HGET', KEYS[2], ARGV[1])
if not record then
  return {'unknown', 0, 0, now_ms, ''}
end
redis.call('HDEL', KEYS[2], ARGV[1])
local last = redis.call('EXISTS', KEYS[2]) == 0 and 1 or 0
local v = 0
if ARGV[2] == '1' then
  if last == 1 then
    v = redis.call('HINCRBY', KEYS[1], 'version', 1)
    redis.call('HSET', KEYS[1], ARGV[3], ARGV[4], 'reason', ARGV[6], 'since', now_ms)
    redis.call('EXPIRE', KEYS[1], ARGV[5])
  else
    v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
  end
end
redis.call('SET', KEYS[3], last .. ':' .. v .. ':' .. now_ms .. ':' .. record, 'EX', ARGV[7])
return {'removed', last, v, now_ms, record}
