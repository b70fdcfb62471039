-- presence_kit: run one of our scripts for many calls in one EVALSHA (a coalesced
-- burst, a sweep). The script's text replaces the BODY line below, as the function
-- `one`, whose parameters shadow KEYS and ARGV.
-- ARGV[1] keys per call  ARGV[2] args per call; then the calls' keys (KEYS) and args
-- (ARGV[3..]), call after call. Returns one reply per call, in order. A call that fails
-- gets an error reply and the others still run, as separate EVALSHAs would.
local function one(KEYS, ARGV)
-- BODY
end

local nkeys, nargs = tonumber(ARGV[1]), tonumber(ARGV[2])
local replies = {}
for i = 0, (#ARGV - 2) / nargs - 1 do
  local keys, argv = {}, {}
  for j = 1, nkeys do keys[j] = KEYS[i * nkeys + j] end
  for j = 1, nargs do argv[j] = ARGV[2 + i * nargs + j] end
  local ok, reply = pcall(one, keys, argv)
  if ok then
    replies[i + 1] = reply
  elseif type(reply) == 'table' and reply.err then
    replies[i + 1] = reply
  else
    replies[i + 1] = redis.error_reply(tostring(reply))
  end
end
return replies
