-- KEYS: lease. ARGV: lease token, lease TTL ms ('0': release). Renews (or releases) the lease
-- only while it is this drainer's. Returns 1 if the lease was ours.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
