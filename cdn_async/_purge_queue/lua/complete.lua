-- KEYS: in-flight hash, lease, pending zset, endpoints set, then one results list per waiting
-- ticket. ARGV: batch id, lease token, outcome JSON, result TTL ms, lease TTL ms, endpoint
-- id, then the tickets (as KEYS[5..]). Returns 1, or 0 when the batch is no longer in flight
-- (completed by another, or lost). An endpoint left with nothing pending is idle.
local fl, lease, pend, eps = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local head = redis.call('HGET', fl, '')
if not head or string.match(head, '^%S+') ~= ARGV[1] then return 0 end
local per = {}
local f = redis.call('HGETALL', fl)
for i = 1, #f, 2 do
  if f[i] ~= '' then
    local seq = nil
    for word in string.gmatch(f[i + 1], '%S+') do
      if not seq then seq = word
      elseif per[word] then per[word] = per[word] .. ' ' .. seq
      else per[word] = seq end
    end
  end
end
for k = 5, #KEYS do
  local seqs = per[ARGV[k + 2]]
  if seqs and redis.call('EXISTS', KEYS[k]) == 1 then
    redis.call('RPUSH', KEYS[k], ARGV[3] .. '\n' .. seqs)
    redis.call('PEXPIRE', KEYS[k], ARGV[4])
  end
end
redis.call('DEL', fl)
if redis.call('ZCARD', pend) == 0 then redis.call('SREM', eps, ARGV[6]) end
if redis.call('GET', lease) == ARGV[2] then redis.call('PEXPIRE', lease, ARGV[5]) end
return 1
