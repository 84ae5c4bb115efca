-- release: the request was answered (its units free one period after the answer), or given
-- back (never counted: its units free at once, and a tombstone stops a late acquire call).
-- ARGV after the header: lease id, '1' to give back, age ms; then per key i: period ms, units.
-- The age is how long before this call was sent its process got the answer (its own clock,
-- measured before sending, so it falls short of the true age by at least the trip here):
-- the units count until `now - age + period`, still at least one period after the answer.
local lease, give_back = ARGV[HEADER + 1], ARGV[HEADER + 2] == '1'
local answered = now - math.max(tonumber(ARGV[HEADER + 3]) or 0, 0)
local function key_args(i)
  local b = HEADER + 4 + 2 * (i - 1)
  return tonumber(ARGV[b]), tonumber(ARGV[b+1])
end

if give_back then tombstone(lease) end
for i = 1, nkeys do
  local period, units = key_args(i)
  expire(i, period)
  local mem = lease .. ':' .. units
  local m = KEYS[4*i+1]
  if redis.call('ZREM', KEYS[4*i-1], mem) == 1 then redis.call('HINCRBY', m, 'f', -units) end
  if give_back then
    if redis.call('ZREM', KEYS[4*i], mem) == 1 then redis.call('HINCRBY', m, 'r', -units) end
  elseif redis.call('ZADD', KEYS[4*i], 'GT', fmt(answered + period), mem) == 1 then
    -- Also when the entry is missing (lost in a restart): counting it is the safe side.
    redis.call('HINCRBY', m, 'r', units)
  end
  touch(i, period)
end
return done()
