-- presence_kit: the held-back leaves whose grace has ended (by the Redis clock).
local queue_key = KEYS[1]       -- leave queue (sorted set: member -> due ms)
local limit = tonumber(ARGV[1]) -- at most this many

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', queue_key, '-inf', now_ms, 'LIMIT', 0, limit)
