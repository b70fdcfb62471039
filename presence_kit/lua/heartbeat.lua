-- presence_kit: a node's heartbeat, stamped with the Redis clock.
-- KEYS[1] live nodes (sorted set: node/incarnation -> last heartbeat ms)
-- KEYS[2] node info (hash: node/incarnation -> JSON)
-- ARGV[1] node/incarnation  ARGV[2] first heartbeat of this incarnation (0/1)  ARGV[3] info
-- ARGV[4] score offset (ms; negative at a graceful shutdown: "dead in shutdown_grace")
-- Returns {status, now_ms}: 'ok', or 'fenced' when this incarnation was swept (it was
-- presumed dead: it must take a new incarnation and register its sockets again).
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[2] ~= '1' and not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return {'fenced', now_ms}
end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[4]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return {'ok', now_ms}
