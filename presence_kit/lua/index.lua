-- presence_kit: an organisation's index of connections in a role, and the counts kept
-- beside it (count_online), changed together. Prepended to the scripts that write the
-- index. An index entry is '[<user>,<lesson>' then ']' (or ',<meta>]'), ids as JSON.
-- The counts, under the prefix the kit passes (all in the org's slot):
--   <prefix>:users            hash user -> the user's connections in the index
--   <prefix>:users:<lesson>   the same, in one lesson
--   <prefix>:conns            hash 'org' -> connections, 'l:<lesson>' -> in one lesson
-- They change only when an entry does, in the same script: a retried or replayed call
-- finds the entry as it left it and changes nothing twice.

-- the end of the JSON scalar (a number, or a string) of text s starting at i
local function scalar_end(s, i)
  if string.sub(s, i, i) ~= '"' then
    local _, e = string.find(s, '^[^,%]]+', i)
    return e
  end
  local j = i + 1
  while true do
    local c = string.sub(s, j, j)
    if c == '\\' then j = j + 2
    elseif c == '"' then return j
    elseif c == '' then return nil
    else j = j + 1 end
  end
end

-- the user (as JSON: the counts' field) and the lesson (as text: the counts' key) of
-- an index entry; nil for an entry that is not ours
local function entry_ids(entry)
  local user_end = scalar_end(entry, 2)
  if not user_end then return nil end
  local lesson_end = scalar_end(entry, user_end + 2)
  if not lesson_end then return nil end
  local lesson = string.sub(entry, user_end + 2, lesson_end)
  if string.sub(lesson, 1, 1) == '"' then lesson = cjson.decode(lesson) end
  return string.sub(entry, 2, user_end), lesson
end

-- add d to a hash field, which goes at 0
local function add(key, field, d)
  if redis.call('HINCRBY', key, field, d) <= 0 then redis.call('HDEL', key, field) end
end

-- a connection of user in lesson counted (d = 1) or not (d = -1): in the org, unless
-- only_lesson (it moved from another lesson), and in the lesson
local function count_add(prefix, user, lesson, d, only_lesson)
  local users, totals = prefix .. ':users', prefix .. ':conns'
  if not only_lesson then
    add(users, user, d)
    add(totals, 'org', d)
  end
  add(users .. ':' .. lesson, user, d)
  add(totals, 'l:' .. lesson, d)
end

-- write sid's entry (only over an existing one with only_existing: an update never
-- brings an entry back); returns 1 if it changed
local function index_set(index_key, prefix, sid, entry, only_existing)
  local old = redis.call('HGET', index_key, sid)
  if old == entry or (only_existing and not old) then return 0 end
  redis.call('HSET', index_key, sid, entry)
  if prefix == '' then return 1 end
  local user, lesson = entry_ids(entry)
  local moved = false  -- the same user's connection, in another lesson
  if old then
    local old_user, old_lesson = entry_ids(old)
    if old_user == user and old_lesson == lesson then return 1 end
    moved = old_user ~= nil and old_user == user
    if old_user then count_add(prefix, old_user, old_lesson, -1, moved) end
  end
  if user then count_add(prefix, user, lesson, 1, moved) end
  return 1
end

-- remove sid's entry; returns 1 if there was one
local function index_del(index_key, prefix, sid)
  local old = redis.call('HGET', index_key, sid)
  if not old then return 0 end
  redis.call('HDEL', index_key, sid)
  if prefix ~= '' then
    local user, lesson = entry_ids(old)
    if user then count_add(prefix, user, lesson, -1, false) end
  end
  return 1
end
