-- KEYS: lease, pending zset, waiters hash, in-flight hash, endpoints set, counter. ARGV:
-- endpoint id, lease token (one per drain task), lease TTL ms, batch size. Returns:
--   {0, lease PTTL}: the lease is held, by another drainer, or by this one while the batch it
--     took is still in flight (a batch is never handed back to the drainer that holds it: it
--     may be on the wire; only once its lease expires, or is given back unsent, is it taken);
--   {1, batch id, high, resend, path, "seq tickets", ...}: a batch to send, with the lease:
--     the oldest `size` pending paths, or the batch in flight whose lease expired (resend
--     '1': it may have been sent) or was given back unsent (resend '0'); high '1' when it
--     holds a path submitted at priority "high";
--   {3}: nothing to send (lease released, endpoint idle).
-- The in-flight hash's field '' is "<batch id> <high 0/1> <s: taken | u: given back unsent>".
local lease, pend, wait, fl, eps, ctr = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local cur = redis.call('GET', lease)
local f = redis.call('HGETALL', fl)
if cur and (cur ~= ARGV[2] or #f > 0) then return {0, redis.call('PTTL', lease)} end
redis.call('SET', lease, ARGV[2], 'PX', ARGV[3])
if #f > 0 then
  local out = {1, '', '0', '1'}
  for i = 1, #f, 2 do
    if f[i] == '' then
      local bid, high, state = string.match(f[i + 1], '^(%S+) ?(%S*) ?(%S*)')
      out[2] = bid or ''
      if high == '1' then out[3] = '1' end
      if state == 'u' then out[4] = '0' end
      redis.call('HSET', fl, '', out[2] .. ' ' .. out[3] .. ' s')
    else
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
local out = {1, bid, '0', '0'}
for i = 1, #items, 2 do
  local path = items[i]
  if tonumber(items[i + 1]) < 0 then out[3] = '1' end
  local v = redis.call('HGET', wait, path) or items[i + 1]
  redis.call('HDEL', wait, path)
  redis.call('HSET', fl, path, v)
  out[#out + 1] = path
  out[#out + 1] = v
end
redis.call('HSET', fl, '', bid .. ' ' .. out[3] .. ' s')
return out
