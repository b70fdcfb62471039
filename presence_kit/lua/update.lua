-- presence_kit: change one connection's lesson, room or meta, atomically for its user.
-- Never records a connection: an update of a sid that has none (never connected, or
-- disconnected: a tombstone) is 'unknown' and writes nothing. Updates of one sid are
-- ordered by the kit's sequence number: an older one than the last applied is 'stale',
-- the same one again gets its first outcome back (kept as 'u:<sid>' ->
-- 'seq:status:lesson_changed:version').
-- Returns {status, lesson_changed (0/1), version, now_ms, previous record, record, meta,
-- repeat (0/1), previous meta}.
local alive_key = KEYS[1]       -- alive hash
local records_key = KEYS[2]     -- the user's connection records in this role
local tombstone_key = KEYS[3]   -- tombstone of this sid
local org_index_key = KEYS[4]   -- org index, only with with_index
local sid = ARGV[1]
local record_head = ARGV[2]     -- the new record up to its owner ('node/incarnation')
local owner = ARGV[3]           -- the owner the kit would write (kept if another wrote it)
local record_tail = ARGV[4]     -- the new record after its owner
local tracks = ARGV[5] == '1'   -- this role drives the alive hash
local seq_text = ARGV[6]        -- the update's sequence number (< 2^53: exact in Lua)
local seq = tonumber(seq_text)
local meta_given = ARGV[7] == '1'  -- set the meta to ARGV[8] ('' clears it); else keep it
local meta = ARGV[8]
local with_index = ARGV[9] == '1'  -- update the org index here (standalone)
local entry = ARGV[10]          -- the new org index entry; with index_meta, without its ']'
local index_meta = ARGV[11] == '1'  -- the org index keeps the meta
local identity = ARGV[12]       -- '[<org>,<user>,': how every record of the sid starts
local counts = ARGV[13]         -- the prefix of the org's counts (index.lua)
local record_ttl = ARGV[14]     -- safety TTL (s) of a separate record hash
local feed = feed_of(KEYS[5], ARGV[15], ARGV[16], ARGV[17])  -- the feed (feed.lua)

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local field, meta_field, update_field = 'c:' .. sid, 'm:' .. sid, 'u:' .. sid

local function version()
  if not tracks then return 0 end
  return tonumber(redis.call('HGET', alive_key, 'version') or '0')
end

if redis.call('EXISTS', tombstone_key) == 1 then
  -- disconnected (or swept): an update never brings the connection back
  return {'unknown', 0, 0, now_ms, '', '', '', 0, ''}
end
local stored = redis.call('HMGET', records_key, field, update_field, meta_field)
local current, stored_meta = stored[1], stored[3] or ''
if not current or string.sub(current, 1, #identity) ~= identity then
  return {'unknown', 0, 0, now_ms, '', '', '', 0, ''}
end
if stored[2] then
  local last, status, changed, v = string.match(stored[2], '^(%d+):(%a+):(%d):(%d+)$')
  last = tonumber(last)
  if seq < last then
    return {'stale', 0, version(), now_ms, current, current, stored_meta, 0, stored_meta}
  end
  if seq == last then
    -- this update again (a retry whose reply was lost): what its first try did
    return {status, tonumber(changed), tonumber(v), now_ms, '', current, stored_meta, 1, ''}
  end
end

-- the record keeps the owner that wrote it (a record moves to another incarnation
-- only through connect.lua, with its node index entry)
local parsed, fields = pcall(cjson.decode, current)
if parsed and type(fields[5]) == 'string' then owner = fields[5] end
local record = record_head .. '"' .. owner .. '"' .. record_tail
local new_meta = meta_given and meta or stored_meta

local function lesson_of(text)
  local e = scalar_end(text, #identity + 1)
  return e and string.sub(text, #identity + 1, e)
end

if record == current and new_meta == stored_meta then
  local v = version()
  redis.call('HSET', records_key, update_field, seq_text .. ':unchanged:0:' .. v)
  return {'unchanged', 0, v, now_ms, current, current, stored_meta, 0, stored_meta}
end
local changed = lesson_of(record) ~= lesson_of(current) and 1 or 0
redis.call('HSET', records_key, field, record)
if new_meta ~= stored_meta then
  if new_meta == '' then
    redis.call('HDEL', records_key, meta_field)
  else
    redis.call('HSET', records_key, meta_field, new_meta)
  end
end
local v = 0
if tracks then v = redis.call('HINCRBY', alive_key, 'version', 1) end
redis.call('HSET', records_key, update_field, seq_text .. ':updated:' .. changed .. ':' .. v)
if records_key ~= alive_key then redis.call('EXPIRE', records_key, record_ttl) end
if with_index then
  if index_meta then
    entry = entry .. (new_meta ~= '' and (',' .. new_meta) or '') .. ']'
  end
  index_set(org_index_key, counts, sid, entry, true)
end
feed_add(feed, 'update', sid, record, nil, tracks and v or nil, now_ms)
return {'updated', changed, v, now_ms, current, record, new_meta, 0, stored_meta}
