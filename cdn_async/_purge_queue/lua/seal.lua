-- KEYS: lease, pending zset, waiters hash, in-flight hash, counter. ARGV: lease token, size.
-- Run when the budgets have admitted the request take.lua's {2, ...} answer was for, just
-- before it is sent: fix the batch, the first `size` pending paths (urgent ones first, and
-- whatever joined while the request waited), moving them to the in-flight hash; from here
-- on a submission of one of them is queued again, never joined. Returns take.lua's
-- {1, batch id, high, '0', path, "seq tickets", ...}, or {0} when the lease is no longer
-- this drainer's (it stalled longer than the lease: send nothing), or {3} when nothing is
-- pending any more.
local lease, pend, wait, fl, ctr = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
if redis.call('GET', lease) ~= ARGV[1] or redis.call('EXISTS', fl) == 1 then return {0} end
local items = redis.call('ZPOPMIN', pend, tonumber(ARGV[2]))
if #items == 0 then return {3} end
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
