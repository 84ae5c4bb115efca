-- KEYS: lease, pending zset, waiters hash, in-flight hash, endpoints set, counter. ARGV:
-- endpoint id, lease token (one per drain task), lease TTL ms, batch size. Returns:
--   {0, lease PTTL}: the lease is held, by another drainer, or by this one while the batch it
--     took is still in flight (a batch is never handed back to the drainer that holds it: it
--     may be on the wire; only once its lease expires, or is given back unsent, is it taken);
--   {1, batch id, high, resend, path, "seq tickets", ...}: a batch to send, with the lease:
--     the batch in flight whose lease expired (resend '1': it may have been sent) or was
--     given back unsent (resend '0'); high '1' when it holds a path submitted at "high";
--   {2, size, high}: the lease, to send the first `size` pending paths (at most the batch
--     size): the paths stay pending, shared by later submissions, until the budgets admit the
--     request and seal.lua takes them out (a batch is fixed only then, as in one process);
--     high '1' when the first pending path was submitted at "high";
--   {3}: nothing to send (lease released, endpoint idle).
-- The in-flight hash's field '' is "<batch id> <high 0/1> <s: taken | u: given back unsent>".
local lease, pend, fl, eps = KEYS[1], KEYS[2], KEYS[4], KEYS[5]
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
local n = redis.call('ZCARD', pend)
if n == 0 then
  redis.call('DEL', lease)
  redis.call('SREM', eps, ARGV[1])
  return {3}
end
local first = redis.call('ZRANGE', pend, 0, 0, 'WITHSCORES')
local high = '0'
if tonumber(first[2]) < 0 then high = '1' end
return {2, tostring(math.min(n, tonumber(ARGV[4]))), high}
