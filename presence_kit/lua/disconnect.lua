-- presence_kit: remove one connection, atomically for its user; idempotent per sid.
-- KEYS[1] alive hash   KEYS[2] record hash (see connect.lua)   KEYS[3] tombstone of this sid
-- KEYS[4] held-back leave of this (user, role)
-- KEYS[5] org index, only when ARGV[10] == '1'; KEYS[6] leave queue, only when ARGV[11] == '1'
-- KEYS[7] index of the node that held the connection, only when ARGV[10] == '1'
-- ARGV[1] sid  ARGV[2] tracks alive (0/1)  ARGV[3] state field  ARGV[4] disconnect state
-- ARGV[5] offline TTL (s)  ARGV[6] reason  ARGV[7] tombstone TTL (s)
-- ARGV[8] leave grace (ms; 0 = announce at once)  ARGV[9] leave-queue member
-- ARGV[10] update the org and node indexes here (0/1)  ARGV[11] queue a held-back leave here
-- ARGV[12] remember the outcome for repeats (0/1; a sweep of a lost node does not, so that
--          a node that was only stalled can register its sockets again)
-- ARGV[13] this call's attempt id ([A-Za-z0-9.-]*), kept in the tombstone
-- Returns {status, last (0/1), version, at_ms, record, deferred (0/1), attempt}; on a
-- repeat, attempt is the first call's (so a replay knows whether that was its own try).
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local done = redis.call('GET', KEYS[3])
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

local field = 'c:' .. ARGV[1]
local record = redis.call('HGET', KEYS[2], field)
if ARGV[10] == '1' then redis.call('HDEL', KEYS[7], ARGV[1]) end
if not record then
  return {'unknown', 0, 0, now_ms, '', 0, ARGV[13]}
end
redis.call('HDEL', KEYS[2], field)
local last = 0
if redis.call('HINCRBY', KEYS[2], 'n', -1) <= 0 then
  last = 1
  redis.call('HDEL', KEYS[2], 'n')
end
local deferred = 0
local v = 0
local grace = tonumber(ARGV[8])
if ARGV[2] == '1' then
  v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
  if last == 1 and grace > 0 then
    -- hold the leave back: the alive key stays 'connect' until the grace ends
    local due = now_ms + grace
    redis.call('HSET', KEYS[4], 'sid', ARGV[1], 'record', record, 'reason', ARGV[6], 'due', due)
    redis.call('PEXPIRE', KEYS[4], grace + tonumber(ARGV[5]) * 1000)
    if ARGV[11] == '1' then redis.call('ZADD', KEYS[6], due, ARGV[9]) end
    last, deferred = 0, 1
  elseif last == 1 then
    v = redis.call('HINCRBY', KEYS[1], 'version', 1)
    redis.call('HSET', KEYS[1], ARGV[3], ARGV[4], 'reason', ARGV[6], 'since', now_ms)
    redis.call('EXPIRE', KEYS[1], ARGV[5])
  end
end
if ARGV[10] == '1' and deferred == 0 then redis.call('HDEL', KEYS[5], ARGV[1]) end
if ARGV[12] == '1' then
  redis.call('SET', KEYS[3],
    last .. ':' .. v .. ':' .. now_ms .. ':' .. deferred .. ':' .. ARGV[13] .. ':' .. record,
    'EX', ARGV[7])
end
return {'removed', last, v, now_ms, record, deferred, ARGV[13]}
