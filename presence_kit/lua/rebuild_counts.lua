-- presence_kit: rebuild an organisation's counts in a role from its index (for indexes
-- written before the counts were kept, or to check them). Atomic, so safe while nodes
-- serve; its cost grows with the org's index (presence-kit rebuild-counts runs it once
-- per org and role). Returns {connections, users, changed (0/1)}.
local index_key = KEYS[1]
local prefix = ARGV[1]
local users_key, totals_key = prefix .. ':users', prefix .. ':conns'
local before = redis.call('HGETALL', totals_key)
-- the lessons counted now: their keys go
for i = 1, #before, 2 do
  local field = before[i]
  if string.sub(field, 1, 2) == 'l:' then
    redis.call('DEL', users_key .. ':' .. string.sub(field, 3))
  end
end
redis.call('DEL', users_key, totals_key)
local entries = redis.call('HVALS', index_key)
for _, entry in ipairs(entries) do
  local user, lesson = entry_ids(entry)
  if user then count_add(prefix, user, lesson, 1, false) end
end
local after = redis.call('HGETALL', totals_key)
local same = #before == #after
if same then
  local old = {}
  for i = 1, #before, 2 do old[before[i]] = before[i + 1] end
  for i = 1, #after, 2 do
    if old[after[i]] ~= after[i + 1] then same = false end
  end
end
return {tonumber(redis.call('HGET', totals_key, 'org') or '0'), redis.call('HLEN', users_key),
  same and 0 or 1}
