"""The Lua run by the Redis limiter: one script counts a call against all its rules, one settles.

The arithmetic is `memory.py`'s; the shared test suite holds the two to the same behaviour.
"""

from __future__ import annotations

from gateway.limits.base import BUDGET_GRACE_S, CONCURRENCY_RETRY_S, EPSILON

# Numbers go back to Redis through %.17g: Lua's own number-to-string keeps 14 digits, which would
# round epoch seconds to 0.1 ms.
_PRELUDE = """
local function fmt(x) return string.format('%.17g', x) end
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function drained(key, rate)
  local s = redis.call('HMGET', key, 'l', 't')
  local level, last = tonumber(s[1]) or 0, tonumber(s[2]) or now
  if now > last then level = math.max(level - (now - last) * rate, 0) end
  return level
end
"""

# KEYS: one per rule (a budget's key lacks its period, appended here).
# ARGV: now or '', tokens, cost, reservation id, lease_s; per rule: kind, capacity, rate|period.
# Returns {0, rule index, wait ('-1': never)} or {1, per rule: remaining, reset, budget key|''}.
_ACQUIRE_SOURCE = (
    _PRELUDE
    + """
local tokens, cost, id, lease = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local MONTH_DAYS = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31}
local function period(name)
  -- civil_from_days (H. Hinnant): the UTC date of `now`
  local days = math.floor(now / 86400)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  if name == 'day' then return string.format('%04d-%02d-%02d', y, m, d), (days + 1) * 86400 end
  local length = MONTH_DAYS[m]
  if m == 2 and ((y % 4 == 0 and y % 100 ~= 0) or y % 400 == 0) then length = 29 end
  return string.format('%04d-%02d', y, m), (days - d + 1 + length) * 86400
end
local n, cap_slack = #KEYS, 1 + EPSILON
local value, reset, keys = {}, {}, {}
local worst, worst_wait = 0, -2
for i = 1, n do
  local a = 5 + 3 * (i - 1)
  local kind, cap = ARGV[a + 1], tonumber(ARGV[a + 2])
  local wait = -2
  reset[i], keys[i] = 0, ''
  if kind == 'requests' or kind == 'tokens' then
    local rate = tonumber(ARGV[a + 3])
    local amount = kind == 'requests' and 1 or tokens
    value[i] = drained(KEYS[i], rate) + amount
    reset[i] = value[i] / rate
    if value[i] > cap * cap_slack then
      if amount > cap * cap_slack then wait = -1 else wait = (value[i] - cap) / rate end
    end
  elseif kind == 'concurrency' then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', fmt(now))
    local held = redis.call('ZCARD', KEYS[i])
    value[i] = held + 1
    if held >= cap then wait = CONCURRENCY_RETRY_S end
  else
    local label, ends = period(ARGV[a + 3])
    keys[i] = KEYS[i] .. ':' .. ARGV[a + 3] .. ':' .. label
    local spent = tonumber(redis.call('GET', keys[i])) or 0
    value[i], reset[i] = spent + cost, ends - now
    if spent >= cap or value[i] > cap * cap_slack then
      if cost > cap * cap_slack then wait = -1 else wait = ends - now end
    end
  end
  if wait == -1 then
    if worst_wait ~= -1 then worst, worst_wait = i, -1 end
  elseif wait > -2 and worst_wait ~= -1 and wait > worst_wait then
    worst, worst_wait = i, wait
  end
end
if worst > 0 then return {0, worst, fmt(worst_wait)} end
local out = {1}
for i = 1, n do
  local a = 5 + 3 * (i - 1)
  local kind, cap = ARGV[a + 1], tonumber(ARGV[a + 2])
  if kind == 'requests' or kind == 'tokens' then
    redis.call('HSET', KEYS[i], 'l', fmt(value[i]), 't', fmt(now))
    redis.call('PEXPIRE', KEYS[i], math.ceil(reset[i] * 1000) + 1000)
  elseif kind == 'concurrency' then
    redis.call('ZADD', KEYS[i], fmt(now + lease), id)
    redis.call('PEXPIRE', KEYS[i], math.ceil(lease * 1000))
  else
    redis.call('SET', keys[i], fmt(value[i]), 'PX', math.ceil((reset[i] + BUDGET_GRACE_S) * 1000))
  end
  out[#out + 1] = fmt(cap - value[i])
  out[#out + 1] = fmt(reset[i])
  out[#out + 1] = keys[i]
end
return out
"""
)

# KEYS: what the reservation touched. ARGV: now or '', reservation id, tokens delta, cost delta;
# per key: kind, rate.
_SETTLE_SOURCE = (
    _PRELUDE
    + """
local id, tokens_delta, cost_delta = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 1, #KEYS do
  local kind, rate = ARGV[3 + 2 * i], tonumber(ARGV[4 + 2 * i])
  if kind == 'tokens' then
    -- a refund cannot move the TAT before now: what has drained is gone
    local level = math.max(drained(KEYS[i], rate) + tokens_delta, 0)
    if level > 0 then
      redis.call('HSET', KEYS[i], 'l', fmt(level), 't', fmt(now))
      redis.call('PEXPIRE', KEYS[i], math.ceil(level / rate * 1000) + 1000)
    else
      redis.call('DEL', KEYS[i])
    end
  elseif kind == 'concurrency' then
    redis.call('ZREM', KEYS[i], id)
  else
    local spent = tonumber(redis.call('GET', KEYS[i]))
    if spent then redis.call('SET', KEYS[i], fmt(math.max(spent + cost_delta, 0)), 'KEEPTTL') end
  end
end
return 1
"""
)


def _script(source: str) -> str:
    for name, value in (
        ("CONCURRENCY_RETRY_S", CONCURRENCY_RETRY_S),
        ("BUDGET_GRACE_S", BUDGET_GRACE_S),
        ("EPSILON", EPSILON),
    ):
        source = source.replace(name, repr(value))
    return source


ACQUIRE = _script(_ACQUIRE_SOURCE)
SETTLE = _script(_SETTLE_SOURCE)
