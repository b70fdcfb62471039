-- presence_kit: the held-back leaves whose grace has ended (by the Redis clock).
-- KEYS[1] leave queue (sorted set: member -> due ms)   ARGV[1] at most this many
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
