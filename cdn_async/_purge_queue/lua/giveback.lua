-- KEYS: lease, in-flight hash. ARGV: lease token, batch id ('': whichever batch is in flight).
-- The drainer holding the lease did not send its batch (it never reached the wire): mark the
-- batch given back unsent, so the next taker sends it at once and not as a resend, and
-- release the lease. Returns 1, or 0 when the lease is not this drainer's (nothing changed).
-- Only for a batch that surely was not sent: one that may have been is left under its lease
-- until the lease expires.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local head = redis.call('HGET', KEYS[2], '')
if head then
  local bid, high = string.match(head, '^(%S+) ?(%S*)')
  if ARGV[2] == '' or bid == ARGV[2] then
    if high ~= '1' then high = '0' end
    redis.call('HSET', KEYS[2], '', bid .. ' ' .. high .. ' u')
  end
end
redis.call('DEL', KEYS[1])
return 1
