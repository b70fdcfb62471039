-- presence_kit: extend a sweeper's claim on a dead node (Redis clock), in one call.
-- KEYS[1] claimed nodes (member -> claim expiry ms)   ARGV[1] member   ARGV[2] TTL (ms)
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZADD', KEYS[1], 'XX', now_ms + tonumber(ARGV[2]), ARGV[1])
