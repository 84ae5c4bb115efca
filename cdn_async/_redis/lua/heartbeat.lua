-- heartbeat: a live process moves its in-flight deadlines forward.
-- ARGV after the header, per key i: period ms, n, then the n in-flight members.
local c = HEADER + 1
for i = 1, nkeys do
  local period, n = tonumber(ARGV[c]), tonumber(ARGV[c+1])
  c = c + 2
  for j = 1, n do
    redis.call('ZADD', KEYS[4*i-1], 'XX', 'GT', fmt(now + inflight), ARGV[c])
    c = c + 1
  end
  touch(i, period)
end
return done()
