-- KEYS: results lists. ARGV: result TTL ms, then each list's offset. Returns per list its
-- entries from the offset on, or nil when the list is gone (expired, or Redis lost it).
local out = {}
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
    out[i] = redis.call('LRANGE', KEYS[i], ARGV[i + 1], -1)
  else
    out[i] = false
  end
end
return out
