-- acquire: take every key's units at once, or say how long until they could fit.
-- ARGV after the header: lease id; then per key i: limit, period ms, units, '1' if the key is
-- held while its history may be lost (a restart).
-- Reply: {admitted 0/1, wait ms, epoch, longest pause ms, index of that key, unknown 0/1
-- (only an answer can free the slot), restart hold ms}.
local lease = ARGV[HEADER + 1]
local function key_args(i)
  local b = HEADER + 2 + 4 * (i - 1)
  return tonumber(ARGV[b]), tonumber(ARGV[b+1]), tonumber(ARGV[b+2]), ARGV[b+3] == '1'
end

local function refused(wait, pmax, pidx, unknown, lost)
  return {0, fmt(wait), epoch, fmt(pmax), pidx, unknown, fmt(lost)}
end
local ADMITTED = {1, '0', epoch, '0', 0, 0, '0'}

-- Given back (its caller stopped waiting for this call) before the call ran.
if redis.call('ZSCORE', X, lease) then return refused(0, 0, 0, 0, 0) end
if ru > now then return refused(ru - now, 0, 0, 0, 0) end
-- A client retrying after a lost reply must not take the units twice.
local _, _, first_units = key_args(1)
if redis.call('ZSCORE', KEYS[3], lease .. ':' .. first_units) then return ADMITTED end

local wait, unknown, pmax, pidx, lost = 0, 0, 0, 0, 0
for i = 1, nkeys do
  local limit, period, units, held = key_args(i)
  expire(i, period)
  if held and rs + period > now then lost = math.max(lost, rs + period - now) end
  local f, r, h, hu, p = state(i, period)
  if p > now then
    wait = math.max(wait, p - now)
    if p - now > pmax then pmax = p - now; pidx = i end
  end
  local excess = f + r + h + units - limit
  if excess > 0 then
    if f + units > limit then
      unknown = 1
    else
      -- Walk the releases in expiry order (the hold ends at hu) until enough are free.
      local at = nil
      local hold = h
      local rows = redis.call('ZRANGE', KEYS[4*i], 0, excess - 1, 'WITHSCORES')
      for j = 1, #rows, 2 do
        local exp = tonumber(rows[j+1])
        if hold > 0 and hu <= exp then
          excess = excess - hold; hold = 0
          if excess <= 0 then at = hu; break end
        end
        excess = excess - units_of(rows[j])
        if excess <= 0 then at = exp; break end
      end
      if at == nil and hold > 0 then at = hu end
      if at == nil then unknown = 1 else wait = math.max(wait, at - now) end
    end
  end
end
wait = math.max(wait, lost)
if wait > 0 or unknown == 1 then return refused(wait, pmax, pidx, unknown, lost) end
for i = 1, nkeys do
  local _, period, units = key_args(i)
  if redis.call('ZADD', KEYS[4*i-1], fmt(now + inflight), lease .. ':' .. units) == 1 then
    redis.call('HINCRBY', KEYS[4*i+1], 'f', units)
  end
  touch(i, period)
end
return ADMITTED
