-- presence_kit: a node's heartbeat, stamped with the Redis clock.
-- Returns {status, now_ms}: 'ok', or 'fenced' when this incarnation was swept (it was
-- presumed dead: it must take a new incarnation and register its sockets again).
local live_key = KEYS[1]        -- live nodes (sorted set: node/incarnation -> last beat ms)
local info_key = KEYS[2]        -- node info (hash: node/incarnation -> JSON)
local member = ARGV[1]          -- node/incarnation
local first = ARGV[2] == '1'    -- first heartbeat of this incarnation
local info = ARGV[3]
local offset_ms = tonumber(ARGV[4])  -- score offset (negative at a graceful shutdown:
                                     -- "dead in shutdown_grace")

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if not first and not redis.call('ZSCORE', live_key, member) then
  return {'fenced', now_ms}
end
redis.call('ZADD', live_key, now_ms + offset_ms, member)
redis.call('HSET', info_key, member, info)
return {'ok', now_ms}
