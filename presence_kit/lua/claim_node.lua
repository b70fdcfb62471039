-- presence_kit: claim one dead node to sweep, atomically (or take over a stale claim).
-- Returns {member, 'dead' | 'takeover'} or {} when there is nothing to sweep.
local live_key = KEYS[1]        -- live nodes (member -> last heartbeat ms)
local claimed_key = KEYS[2]     -- claimed nodes (member -> claim expiry ms)
local timeout_ms = tonumber(ARGV[1])  -- node timeout
local ttl = tonumber(ARGV[2])   -- claim TTL (ms)

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stale = redis.call('ZRANGEBYSCORE', claimed_key, '-inf', now_ms, 'LIMIT', 0, 1)
if stale[1] then
  -- its sweeper died (or stalled) midway: take the rest over
  redis.call('ZADD', claimed_key, now_ms + ttl, stale[1])
  return {stale[1], 'takeover'}
end
local dead = redis.call('ZRANGEBYSCORE', live_key, '-inf', now_ms - timeout_ms, 'LIMIT', 0, 1)
if dead[1] then
  redis.call('ZREM', live_key, dead[1])
  redis.call('ZADD', claimed_key, now_ms + ttl, dead[1])
  return {dead[1], 'dead'}
end
return {}
