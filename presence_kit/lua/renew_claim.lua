-- presence_kit: extend a sweeper's claim on a dead node (Redis clock), in one call.
local claimed_key = KEYS[1]     -- claimed nodes (member -> claim expiry ms)
local member = ARGV[1]
local ttl = tonumber(ARGV[2])   -- ms

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZADD', claimed_key, 'XX', now_ms + ttl, member)
