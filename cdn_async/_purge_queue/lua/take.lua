-- KEYS: lease, pending zset, waiters hash, in-flight hash, endpoints set, counter. ARGV:
-- endpoint id, drainer id, lease TTL ms, batch size. Returns {0, lease PTTL} (another drainer
-- holds the lease), {1, batch id, '1' if it holds a "high" entry, path, "seq tickets", ...} (a
-- new batch), {2, ...} (the batch in flight, sent again) or {3} (nothing to send: lease
-- released, endpoint idle).
local lease, pend, wait, fl, eps, ctr = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local cur = redis.call('GET', lease)
if cur and cur ~= ARGV[2] then return {0, redis.call('PTTL', lease)} end
redis.call('SET', lease, ARGV[2], 'PX', ARGV[3])
local f = redis.call('HGETALL', fl)
if #f > 0 then
  local out = {2, '0', '0'}
  for i = 1, #f, 2 do
    if f[i] == '' then out[2] = f[i + 1] else
      out[#out + 1] = f[i]
      out[#out + 1] = f[i + 1]
    end
  end
  return out
end
local items = redis.call('ZPOPMIN', pend, tonumber(ARGV[4]))
if #items == 0 then
  redis.call('DEL', lease)
  redis.call('SREM', eps, ARGV[1])
  return {3}
end
local bid = tostring(redis.call('INCR', ctr))
redis.call('HSET', fl, '', bid)
local out = {1, bid, '0'}
for i = 1, #items, 2 do
  local path = items[i]
  if tonumber(items[i + 1]) < 0 then out[3] = '1' end
  local v = redis.call('HGET', wait, path) or items[i + 1]
  redis.call('HDEL', wait, path)
  redis.call('HSET', fl, path, v)
  out[#out + 1] = path
  out[#out + 1] = v
end
return out
