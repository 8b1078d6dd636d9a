"""The Lua run by the Redis limiter: one script counts a call against all its rules, one settles.

The arithmetic is `memory.py`'s (the algorithms are described in `base.py`); the shared test suite
holds the two to the same behaviour. Sliding windows cost O(log n) per call in a window of n
entries, plus O(1) amortised for each entry that expires; a refused token call walks the oldest
entries until enough would leave.
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
-- A sliding window is a sorted set (reservation id -> admitted at); a token window also keeps a
-- hash (id -> amount, 'used' -> their sum). An entry counts while now - admitted at < span.
local function expire_tokens(key, amounts, span)
  local cutoff = fmt(now - span)
  local used = tonumber(redis.call('HGET', amounts, 'used')) or 0
  local changed = false
  while true do  -- in batches: unpack has a stack limit
    local gone = redis.call('ZRANGEBYSCORE', key, '-inf', cutoff, 'LIMIT', 0, 256)
    if #gone == 0 then break end
    local values = redis.call('HMGET', amounts, unpack(gone))
    for j = 1, #gone do used = used - (tonumber(values[j]) or 0) end
    redis.call('HDEL', amounts, unpack(gone))
    redis.call('ZREM', key, unpack(gone))
    changed = true
  end
  if changed then redis.call('HSET', amounts, 'used', fmt(used)) end
  return used
end
local function keep_window(key, span)  -- idle state expires once its newest entry has left
  redis.call('PEXPIRE', key, math.ceil(span * 1000) + 1000)
end
"""

# KEYS: per rule its key, and a sliding token window's amounts after it (a budget's key lacks
# its period, appended here).
# ARGV: now or '', reservation id, lease_s; per rule: mode, amount, capacity, param, where mode
# is 'requests' | 'tokens' (sliding windows; param: span) | 'gcra' (param: rate) | 'concurrency'
# | 'budget' (param: period).
# Returns {0, rule index, wait ('-1': never)} or {1, per rule: remaining, reset, budget key|''}.
_ACQUIRE_SOURCE = (
    _PRELUDE
    + """
local id, lease = ARGV[2], tonumber(ARGV[3])
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
-- seconds until enough of the oldest entries leave for `need` more units to fit
local function tokens_wait(key, amounts, need, span)
  local start = 0
  while true do
    local batch = redis.call('ZRANGE', key, start, start + 63, 'WITHSCORES')
    if #batch == 0 then return 0 end  -- unreachable: the call alone fits
    local ids = {}
    for j = 1, #batch, 2 do ids[#ids + 1] = batch[j] end
    local values = redis.call('HMGET', amounts, unpack(ids))
    for j = 1, #ids do
      need = need - (tonumber(values[j]) or 0)
      if need <= 0 then return tonumber(batch[2 * j]) + span - now end
    end
    start = start + 64
  end
end
local function oldest_reset(key, span, amount)
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #first > 0 then return tonumber(first[2]) + span - now end
  if amount > 0 then return span end  -- this call's entry is the oldest
  return 0
end
local n, cap_slack = (#ARGV - 3) / 4, 1 + EPSILON
local value, reset, keys, key_of, aux_of = {}, {}, {}, {}, {}
local worst, worst_wait, k = 0, -2, 1
for i = 1, n do
  local a = 3 + 4 * (i - 1)
  local mode, amount, cap = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local param = ARGV[a + 4]
  local wait = -2
  key_of[i], reset[i], keys[i] = KEYS[k], 0, ''
  k = k + 1
  if mode == 'requests' then
    local span = tonumber(param)
    redis.call('ZREMRANGEBYSCORE', key_of[i], '-inf', fmt(now - span))
    local used = redis.call('ZCARD', key_of[i])
    value[i] = used + amount
    if value[i] > cap then
      if amount > cap then
        wait = -1
      else  -- the entry whose leaving makes room
        local at = math.ceil(value[i] - cap) - 1
        local e = redis.call('ZRANGE', key_of[i], at, at, 'WITHSCORES')
        wait = tonumber(e[2]) + span - now
      end
    end
    reset[i] = oldest_reset(key_of[i], span, amount)
  elseif mode == 'tokens' then
    local span = tonumber(param)
    aux_of[i] = KEYS[k]
    k = k + 1
    value[i] = expire_tokens(key_of[i], aux_of[i], span) + amount
    if value[i] > cap then
      if amount > cap then wait = -1 else
        wait = tokens_wait(key_of[i], aux_of[i], value[i] - cap, span)
      end
    end
    reset[i] = oldest_reset(key_of[i], span, amount)
  elseif mode == 'gcra' then
    local rate = tonumber(param)
    value[i] = drained(key_of[i], rate) + amount
    reset[i] = value[i] / rate
    if value[i] > cap * cap_slack then
      if amount > cap * cap_slack then wait = -1 else wait = (value[i] - cap) / rate end
    end
  elseif mode == 'concurrency' then
    redis.call('ZREMRANGEBYSCORE', key_of[i], '-inf', fmt(now))
    local held = redis.call('ZCARD', key_of[i])
    value[i] = held + 1
    if held >= cap then wait = CONCURRENCY_RETRY_S end
  else
    local label, ends = period(param)
    keys[i] = key_of[i] .. ':' .. param .. ':' .. label
    local spent = tonumber(redis.call('GET', keys[i])) or 0
    value[i], reset[i] = spent + amount, ends - now
    if spent >= cap or value[i] > cap * cap_slack then
      if amount > cap * cap_slack then wait = -1 else wait = ends - now end
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
  local a = 3 + 4 * (i - 1)
  local mode, amount, cap = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local key = key_of[i]
  if mode == 'requests' or mode == 'tokens' then
    if amount > 0 then  -- an entry of nothing would change no sum
      local span = tonumber(ARGV[a + 4])
      redis.call('ZADD', key, fmt(now), id)
      keep_window(key, span)
      if mode == 'tokens' then
        redis.call('HSET', aux_of[i], id, fmt(amount), 'used', fmt(value[i]))
        keep_window(aux_of[i], span)
      end
    end
  elseif mode == 'gcra' then
    redis.call('HSET', key, 'l', fmt(value[i]), 't', fmt(now))
    redis.call('PEXPIRE', key, math.ceil(reset[i] * 1000) + 1000)
  elseif mode == 'concurrency' then
    redis.call('ZADD', key, fmt(now + lease), id)
    redis.call('PEXPIRE', key, math.ceil(lease * 1000))
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

# KEYS: what the reservation touched (a sliding token window: its key, then its amounts).
# ARGV: now or '', reservation id, tokens delta, cost delta; per rule: mode, param (the span for
# 'tokens', the rate for 'gcra').
_SETTLE_SOURCE = (
    _PRELUDE
    + """
local id, tokens_delta, cost_delta = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local k = 1
for i = 1, (#ARGV - 4) / 2 do
  local mode, param = ARGV[3 + 2 * i], tonumber(ARGV[4 + 2 * i])
  local key = KEYS[k]
  k = k + 1
  if mode == 'tokens' then
    local amounts = KEYS[k]
    k = k + 1
    local used = expire_tokens(key, amounts, param)
    local amount = tonumber(redis.call('HGET', amounts, id))
    if amount then
      local settled = math.max(amount + tokens_delta, 0)
      used = used + settled - amount
      if settled > 0 then
        redis.call('HSET', amounts, id, fmt(settled), 'used', fmt(used))
      else
        redis.call('HDEL', amounts, id)
        redis.call('HSET', amounts, 'used', fmt(used))
        redis.call('ZREM', key, id)
      end
    elseif tokens_delta > 0 then
      -- its entry has left the window (or it reserved nothing): the extra counts from now
      redis.call('ZADD', key, fmt(now), id)
      redis.call('HSET', amounts, id, fmt(tokens_delta), 'used', fmt(used + tokens_delta))
      keep_window(key, param)
      keep_window(amounts, param)
    end
  elseif mode == 'gcra' then
    -- a refund cannot move the TAT before now: what has drained is gone
    local level = math.max(drained(key, param) + tokens_delta, 0)
    if level > 0 then
      redis.call('HSET', key, 'l', fmt(level), 't', fmt(now))
      redis.call('PEXPIRE', key, math.ceil(level / param * 1000) + 1000)
    else
      redis.call('DEL', key)
    end
  elseif mode == 'concurrency' then
    redis.call('ZREM', key, id)
  else
    local spent = tonumber(redis.call('GET', key))
    if spent then redis.call('SET', key, fmt(math.max(spent + cost_delta, 0)), 'KEEPTTL') end
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
