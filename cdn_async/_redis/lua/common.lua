-- Shared by every operation: loaded in front of each operation's script (one chunk).
--
-- KEYS[1] = epoch hash, KEYS[2] = give-back tombstones; then per budget key i: KEYS[4i-1] =
-- in-flight zset, KEYS[4i] = released zset, KEYS[4i+1] = meta hash, KEYS[4i+2] = gone zset
-- (releases that left the window less than a period ago, scored by when they left: sync).
-- ARGV[1..HEADER] (every operation): epoch id to create if none, recovery grace ms, epoch
-- TTL ms, in-flight timeout ms. The operation's own arguments follow, from ARGV[HEADER+1].
-- Times are Redis TIME in ms, written with 3 decimals: Lua's default number formatting keeps
-- 14 digits, too few for epoch milliseconds.
local HEADER = 4
local new_epoch, grace_ms, marker_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local inflight = tonumber(ARGV[4])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local nkeys = (#KEYS - 2) / 4
local X = KEYS[2]

local function fmt(x) return string.format('%.3f', x) end
local function units_of(m) return tonumber(string.match(m, ':(%d+)$')) end
local function id_of(m) return string.match(m, '^(.*):%d+$') end

local e = redis.call('HMGET', KEYS[1], 'id', 'ru', 'rs')
local epoch = e[1]
local ru = tonumber(e[2]) or 0
local rs = tonumber(e[3]) or 0
if not epoch then
  -- Empty Redis: a first use, or a restart that lost every window. Admit nothing until
  -- every live process had time to re-seed what it holds, and remember when this Redis
  -- started: every unit it may have lost was stamped before then.
  epoch = new_epoch
  ru = now + grace_ms
  rs = now
  local info = redis.pcall('INFO', 'server')
  if type(info) == 'string' then
    -- A difference of whole-second clocks: the real uptime may be up to 1 s shorter.
    local up = tonumber(string.match(info, 'uptime_in_seconds:(%d+)'))
    if up and up > 1 then rs = now - (up - 1) * 1000 end
  end
  redis.call('HSET', KEYS[1], 'id', epoch, 'ru', fmt(ru), 'rs', fmt(rs))
end
if redis.call('PTTL', KEYS[1]) < marker_ms then redis.call('PEXPIRE', KEYS[1], marker_ms) end

local function tombstone(id)
  redis.call('ZREMRANGEBYSCORE', X, '-inf', fmt(now))
  redis.call('ZADD', X, fmt(now + inflight), id)
  redis.call('PEXPIRE', X, math.ceil(inflight + 1000))
end

local function expire(i, period)
  local f, r, m, g = KEYS[4*i-1], KEYS[4*i], KEYS[4*i+1], KEYS[4*i+2]
  local cut = fmt(now)
  local dead = redis.call('ZRANGEBYSCORE', f, '-inf', cut, 'WITHSCORES')
  if #dead > 0 then
    local n = 0
    for j = 1, #dead, 2 do
      local u = units_of(dead[j])
      n = n + u
      -- Its process stopped answering: count it as answered at its deadline.
      local exp = tonumber(dead[j+1]) + period
      if exp > now and redis.call('ZADD', r, 'GT', fmt(exp), dead[j]) == 1 then
        redis.call('HINCRBY', m, 'r', u)
      end
    end
    redis.call('ZREMRANGEBYSCORE', f, '-inf', cut)
    redis.call('HINCRBY', m, 'f', -n)
  end
  local gone = redis.call('ZRANGEBYSCORE', r, '-inf', cut, 'WITHSCORES')
  if #gone > 0 then
    local n = 0
    for j = 1, #gone, 2 do
      n = n + units_of(gone[j])
      redis.call('ZADD', g, gone[j+1], gone[j])
    end
    redis.call('ZREMRANGEBYSCORE', r, '-inf', cut)
    redis.call('HINCRBY', m, 'r', -n)
  end
  redis.call('ZREMRANGEBYSCORE', g, '-inf', fmt(now - period))
  -- Self-healing sums: an empty set counts nothing, whatever the hash says.
  if redis.call('ZCARD', f) == 0 then redis.call('HSET', m, 'f', 0) end
  if redis.call('ZCARD', r) == 0 then redis.call('HSET', m, 'r', 0) end
end

local function state(i, period)
  local m = KEYS[4*i+1]
  local v = redis.call('HMGET', m, 'f', 'r', 'h', 'hu', 'p')
  local hu = tonumber(v[4]) or 0
  local p = tonumber(v[5]) or 0
  -- No hold or pause outlasts one period of the key, whoever wrote it: cap it for good.
  if hu > now + period then hu = now + period; redis.call('HSET', m, 'hu', fmt(hu)) end
  if p > now + period then p = now + period; redis.call('HSET', m, 'p', fmt(p)) end
  local h = 0
  if hu > now then h = tonumber(v[3]) or 0 end
  return tonumber(v[1]) or 0, tonumber(v[2]) or 0, h, hu, p
end

local function touch(i, period)
  local _, _, _, hu, p = state(i, period)
  local ttl = math.ceil(math.max(period + inflight, hu - now, p - now) + 1000)
  for k = 4*i-1, 4*i+2 do redis.call('PEXPIRE', KEYS[k], ttl) end
end

-- The reply of every operation but acquire.
local function done() return {epoch} end

-- ------------------------------------------------------------------------------------------
-- The operation.
