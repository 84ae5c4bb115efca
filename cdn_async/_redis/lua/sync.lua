-- sync: the server's ratelimit headers for one key; hold what it counts beyond Redis.
-- ARGV after the header: limit, remaining, reset ms, period ms, and how long ago the answered
-- request was admitted (ms; -1: unknown). The server counted at its stamp, after that
-- admission: units that left the window since then may be in its count, and are not taken
-- for another client's (else one unit expiring during a round trip would hold a unit back
-- for a whole period).
local limit = tonumber(ARGV[HEADER + 1])
local remaining = tonumber(ARGV[HEADER + 2])
local period = tonumber(ARGV[HEADER + 4])
local reset = math.min(tonumber(ARGV[HEADER + 3]), period)
local age = tonumber(ARGV[HEADER + 5]) or -1

expire(1, period)
local f, r, h, hu = state(1, period)
local left = 0
if age >= 0 then
  for _, mem in ipairs(redis.call('ZRANGEBYSCORE', KEYS[6], '(' .. fmt(now - age), '+inf')) do
    left = left + units_of(mem)
  end
end
remaining = math.min(math.max(remaining, 0), limit)
local phantom = (limit - remaining) - (f + r + left)
-- Answers arrive out of order: a live hold is only ever raised (as in the memory store).
if phantom > 0 and reset > 0 then
  if h > 0 then
    redis.call('HSET', KEYS[5], 'h', math.max(h, phantom), 'hu', fmt(math.max(hu, now + reset)))
  else
    redis.call('HSET', KEYS[5], 'h', phantom, 'hu', fmt(now + reset))
  end
end
touch(1, period)
return done()
