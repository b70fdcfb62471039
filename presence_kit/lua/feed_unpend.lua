-- presence_kit: forget a feed queue's registration (lua/feed.lua, on a cluster) if it
-- is still the one read before its entries were moved: a call that registered it
-- again meanwhile moves its own entries (or leaves them to another node's step).
-- KEYS[1] the registrations, ARGV[1] the member, ARGV[2] the score read (integer ms).
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
