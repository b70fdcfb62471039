-- presence_kit: claim one dead node to sweep, atomically (or take over a stale claim).
-- KEYS[1] live nodes (member -> last heartbeat ms)
-- KEYS[2] claimed nodes (member -> claim expiry ms)
-- ARGV[1] node timeout (ms)  ARGV[2] claim TTL (ms)
-- Returns {member, 'dead' | 'takeover'} or {} when there is nothing to sweep.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms, 'LIMIT', 0, 1)
if stale[1] then
  -- its sweeper died (or stalled) midway: take the rest over
  redis.call('ZADD', KEYS[2], now_ms + ttl, stale[1])
  return {stale[1], 'takeover'}
end
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms - tonumber(ARGV[1]), 'LIMIT', 0, 1)
if dead[1] then
  redis.call('ZREM', KEYS[1], dead[1])
  redis.call('ZADD', KEYS[2], now_ms + ttl, dead[1])
  return {dead[1], 'dead'}
end
return {}
