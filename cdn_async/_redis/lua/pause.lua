-- pause: the server answered 429 on one key; admit nothing on it until then (extends only).
-- ARGV after the header: resume ms, period ms.
local resume = tonumber(ARGV[HEADER + 1])
local period = tonumber(ARGV[HEADER + 2])

local _, _, _, _, p = state(1, period)
local until_ = now + math.min(resume, period)
if until_ > p then redis.call('HSET', KEYS[5], 'p', fmt(until_)) end
touch(1, period)
return done()
