-- KEYS: pending zset, waiters hash, endpoints set, counter, results list. ARGV: endpoint id,
-- ticket id, result TTL ms, '1' on the first chunk of a submission, '1' for priority "high",
-- then the paths to send. Returns the entry (sequence number) each path joined, or {'lost'}
-- when a later chunk finds the submission's results gone (Redis lost its data in between).
-- An entry's score is its place in line: its sequence number, minus FRONT when it is "high".
local pend, wait, eps, ctr, res = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ticket = ARGV[2]
local high = ARGV[5] == '1'
local FRONT = 1125899906842624
if redis.call('EXISTS', res) == 0 then
  if ARGV[4] ~= '1' then return {'lost'} end
  redis.call('RPUSH', res, 'ticket')
end
redis.call('PEXPIRE', res, ARGV[3])
local function cover(path)
  if redis.call('ZSCORE', pend, path) then return path end
  if redis.call('ZSCORE', pend, '*') then return '*' end
  local from = 1
  while true do
    local cut = string.find(path, '/', from, true)
    if not cut then return nil end
    local wc = string.sub(path, 1, cut) .. '*'
    if wc ~= path and redis.call('ZSCORE', pend, wc) then return wc end
    from = cut + 1
  end
end
local joined = {}
local out = {}
for i = 6, #ARGV do
  local path = ARGV[i]
  local key = cover(path)
  if key then
    local w = redis.call('HGET', wait, key)
    local seq = string.match(w, '^%S+')
    out[#out + 1] = seq
    if not joined[key] then
      joined[key] = true
      if not string.find(string.sub(w, #seq + 1) .. ' ', ' ' .. ticket .. ' ', 1, true) then
        redis.call('HSET', wait, key, w .. ' ' .. ticket)
      end
      if high and tonumber(redis.call('ZSCORE', pend, key)) > 0 then
        redis.call('ZADD', pend, tonumber(seq) - FRONT, key)
      end
    end
  else
    local seq = redis.call('INCR', ctr)
    local score = seq
    if high then score = seq - FRONT end
    redis.call('ZADD', pend, score, path)
    redis.call('HSET', wait, path, seq .. ' ' .. ticket)
    joined[path] = true
    out[#out + 1] = tostring(seq)
  end
end
redis.call('SADD', eps, ARGV[1])
return out
