-- restore: re-seed this process's mirror after a restart or an outage. Idempotent: members
-- are unique lease ids.
-- ARGV after the header, per key i: period ms, server-counted units, hold ms, pause ms, nf, nr,
-- ng, then nf in-flight members, nr (member, ms left) pairs, ng members given back.
local c = HEADER + 1
for i = 1, nkeys do
  local fz, rz, m = KEYS[4*i-1], KEYS[4*i], KEYS[4*i+1]
  local period, used = tonumber(ARGV[c]), tonumber(ARGV[c+1])
  local hold_ms = math.min(tonumber(ARGV[c+2]), period)
  local pause_ms = math.min(tonumber(ARGV[c+3]), period)
  local nf, nr, ng = tonumber(ARGV[c+4]), tonumber(ARGV[c+5]), tonumber(ARGV[c+6])
  c = c + 7
  expire(i, period)
  for j = 1, nf do
    local mem = ARGV[c]
    c = c + 1
    if not redis.call('ZSCORE', rz, mem) then
      if redis.call('ZADD', fz, 'GT', fmt(now + inflight), mem) == 1 then
        redis.call('HINCRBY', m, 'f', units_of(mem))
      end
    end
  end
  for j = 1, nr do
    local mem, left = ARGV[c], tonumber(ARGV[c+1])
    c = c + 2
    local u = units_of(mem)
    if redis.call('ZREM', fz, mem) == 1 then redis.call('HINCRBY', m, 'f', -u) end
    if redis.call('ZADD', rz, 'GT', fmt(now + left), mem) == 1 then
      redis.call('HINCRBY', m, 'r', u)
    end
  end
  for j = 1, ng do
    local mem = ARGV[c]
    c = c + 1
    local u = units_of(mem)
    if redis.call('ZREM', fz, mem) == 1 then redis.call('HINCRBY', m, 'f', -u) end
    if redis.call('ZREM', rz, mem) == 1 then redis.call('HINCRBY', m, 'r', -u) end
    tombstone(id_of(mem))
  end
  local f, r, h, hu, p = state(i, period)
  if hold_ms > 0 then
    local phantom = used - (f + r)
    if phantom > h then
      redis.call('HSET', m, 'h', phantom, 'hu', fmt(math.max(hu, now + hold_ms)))
    end
  end
  if pause_ms > 0 and now + pause_ms > p then
    redis.call('HSET', m, 'p', fmt(now + pause_ms))
  end
  touch(i, period)
end
return done()
