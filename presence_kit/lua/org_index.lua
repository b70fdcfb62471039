-- presence_kit: change an organisation's index and its counts on a Redis Cluster, where
-- they live in the org's slot, apart from the user's keys (see index.lua).
-- ARGV[1] the counts' prefix, ARGV[2] the operation: 'set' (then sid, entry pairs),
-- 'update' (the same, only over existing entries) or 'del' (then sids).
-- Returns how many entries changed.
local index_key = KEYS[1]
local prefix, op = ARGV[1], ARGV[2]
local changed = 0
if op == 'del' then
  for i = 3, #ARGV do changed = changed + index_del(index_key, prefix, ARGV[i]) end
else
  for i = 3, #ARGV, 2 do
    changed = changed + index_set(index_key, prefix, ARGV[i], ARGV[i + 1], op == 'update')
  end
end
return changed
