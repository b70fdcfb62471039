-- presence_kit: the presence feed (Settings.feed): one entry per change, written by the
-- script that makes the change. Prepended after index.lua (it uses scalar_end).
-- An entry's fields are flat strings (docs: the feed's field reference). On a
-- standalone Redis the script adds it to the org's feed stream (trimmed by MINID as
-- entries are added); on a cluster the stream is in another slot, so the script
-- appends it to the user's feed queue (a list in the user's slot), which the kit then
-- moves to the stream (at least once).

-- a JSON scalar as text, and its type: 'i' (int), 's' (str), '-' (null)
local function id_text(json)
  if json == nil or json == 'null' then return '', '-' end
  if string.sub(json, 1, 1) == '"' then return cjson.decode(json), 's' end
  return json, 'i'
end

-- the elements of a record ([org, user, lesson, role, owner, room?, namespace?]) as
-- their JSON texts
local function record_elements(record)
  local parts, i = {}, 2
  while i <= #record do
    local e = scalar_end(record, i)
    if not e then break end
    parts[#parts + 1] = string.sub(record, i, e)
    if string.sub(record, e + 1, e + 1) ~= ',' then break end
    i = e + 2
  end
  return parts
end

-- feed = {target, cluster (bool), retention_ms, observed_ms} or nil (off)
local function feed_add(feed, kind, sid, record, reason, version, now_ms)
  if not feed then return end
  local p = record_elements(record)
  local org, org_t = id_text(p[1])
  local user, user_t = id_text(p[2])
  local lesson, lesson_t = id_text(p[3])
  local role = id_text(p[4])
  local owner = id_text(p[5])
  local room, room_t = id_text(p[6])
  local node = string.match(owner, '^(.*)/[^/]*$') or owner
  local fields = {
    'schema', '1', 'kind', kind, 'org_id', org, 'user_id', user, 'role', role,
    'sid', sid, 'lesson_id', lesson, 'room_id', room, 'reason', reason or '',
    'version', version and tostring(version) or '', 'node', node,
    'at_ms', tostring(now_ms), 'observed_ms', feed[4],
    'id_types', org_t .. user_t .. lesson_t .. room_t,
  }
  if feed[2] then
    redis.call('RPUSH', feed[1], cjson.encode(fields))
  else
    local oldest = now_ms - tonumber(feed[3])
    redis.call('XADD', feed[1], 'MINID', '~', oldest .. '-0', '*', unpack(fields))
  end
end

-- the feed of a script call from its arguments: target key, mode ('' off, 's'
-- standalone, 'c' cluster), retention (ms), observed (ms)
local function feed_of(target, mode, retention_ms, observed_ms)
  if mode == '' or mode == nil then return nil end
  return {target, mode == 'c', retention_ms, observed_ms}
end
