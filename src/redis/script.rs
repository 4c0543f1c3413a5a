//! The Lua scripts: each update of the fleet's keys is one atomic script, and each answers with
//! the Redis server's time, so that every instance reads deadlines on one clock (the server's)
//! whatever its own clock says.
//!
//! Values under our keys that are not ours (another type, or text that is not a record) never
//! make a script fail: reads use `redis.pcall`, and the state record is matched before it is
//! trusted; the client parses it again strictly (`codec.rs`).

use redis::Script;

/// The server's time in milliseconds, as every script computes it first.
const NOW: &str = "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// One tick of one or more breakers: adds each one's counts since the last tick to its current
/// bucket (unless its fleet state is open), and answers each one's fleet state and window sums.
///
/// KEYS: the breakers' state keys. ARGV: bucket length (ms), number of buckets, a bucket's expiry
/// (ms), a closed record's expiry (ms); then five per breaker: its buckets' key prefix, calls,
/// failed, slow, the longest opening of this kind of breaker (ms: an open record further ahead is
/// foreign). Answers `{now}` followed, per breaker, by `state or "", malformed counts (0/1),
/// calls, failed, slow`.
const SYNC: &str = "local width = tonumber(ARGV[1])
local count = tonumber(ARGV[2])
local bucket = math.floor(now / width)
local fields = {'c', 'f', 's'}
local reply = {now}
for k = 1, #KEYS do
  local a = 4 + (k - 1) * 5
  local state = redis.pcall('GET', KEYS[k])
  if type(state) ~= 'string' then state = '' end
  local epoch = '0'
  local ahead = string.match(state, '^1 open (%d+) ')
  local open = ahead ~= nil and tonumber(ahead) <= now + tonumber(ARGV[a + 5])
  local since = string.match(state, '^1 closed (%d+) ')
  if since then
    epoch = since
    redis.pcall('PEXPIRE', KEYS[k], ARGV[4])
  end
  local base = ARGV[a + 1] .. epoch .. ':'
  local bad = 0
  if not open then
    local key = base .. string.format('%d', bucket)
    local wrote = false
    for i = 1, 3 do
      local n = tonumber(ARGV[a + 1 + i])
      if n > 0 then
        wrote = true
        local r = redis.pcall('HINCRBY', key, fields[i], n)
        if type(r) == 'table' and r.err then bad = 1 end
      end
    end
    if wrote then redis.pcall('PEXPIRE', key, ARGV[3]) end
  end
  local sums = {0, 0, 0}
  if not open then
    for b = bucket - count + 1, bucket do
      local v = redis.pcall('HMGET', base .. string.format('%d', b), 'c', 'f', 's')
      if type(v) == 'table' and not v.err then
        local row = {}
        local good = true
        for i = 1, 3 do
          local n = tonumber(v[i] or '0')
          if n == nil or n < 0 or n ~= math.floor(n) then good = false else row[i] = n end
        end
        if good then
          for i = 1, 3 do sums[i] = sums[i] + row[i] end
        else
          bad = 1
        end
      else
        bad = 1
      end
    end
  end
  table.insert(reply, state)
  table.insert(reply, bad)
  for i = 1, 3 do table.insert(reply, sums[i]) end
end
return reply
";

/// An opening: the state becomes `open until ARGV[2]` unless it is open until then or later
/// already; the probe lease of the previous episode goes; the record is published.
///
/// KEYS[1]: state, KEYS[2]: probe lease. ARGV: origin, until (ms), expiry after `until` (ms),
/// channel, the longest opening (ms: an open record further ahead is foreign, and replaced).
/// Answers `{now, state}` (the record in force afterwards).
const OPEN: &str = "local deadline = tonumber(ARGV[2])
local cur = redis.pcall('GET', KEYS[1])
if type(cur) ~= 'string' then cur = '' end
local u = string.match(cur, '^1 open (%d+) ')
if u and tonumber(u) > now + tonumber(ARGV[5]) then u = nil end
if (u and tonumber(u) >= deadline) or deadline <= now then return {now, cur} end
local rec = '1 open ' .. ARGV[2] .. ' ' .. ARGV[1]
redis.call('SET', KEYS[1], rec, 'PX', string.format('%d', deadline - now + tonumber(ARGV[3])))
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[4], rec)
return {now, rec}
";

/// A closing: the state becomes `closed since now` (a new epoch of window counts), unless it is
/// closed already, or open until a time still to come (a newer opening wins over the end of an
/// older episode) and the closing is not an operator's reset (ARGV[4] = 1).
///
/// KEYS[1]: state, KEYS[2]: probe lease. ARGV: origin, expiry (ms), channel, reset (0/1), the
/// longest opening (ms).
/// Answers `{now, state}`.
const CLOSE: &str = "local cur = redis.pcall('GET', KEYS[1])
if type(cur) ~= 'string' then cur = '' end
if string.match(cur, '^1 closed (%d+) ') then return {now, cur} end
local u = string.match(cur, '^1 open (%d+) ')
if u and tonumber(u) > now + tonumber(ARGV[5]) then u = nil end
if u and tonumber(u) > now and ARGV[4] ~= '1' then return {now, cur} end
local rec = '1 closed ' .. string.format('%d', now) .. ' ' .. ARGV[1]
redis.call('SET', KEYS[1], rec, 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[3], rec)
return {now, rec}
";

/// A claim of the probe lease of the coming half-open episode: granted if free, if ours, or if
/// what holds it is not a lease of ours (another type, not an instance id, no expiry).
///
/// KEYS[1]: state, KEYS[2]: probe lease. ARGV: origin, lease (ms).
/// Answers `{now, state, granted (0/1), lease left (ms)}`.
const CLAIM: &str = "local state = redis.pcall('GET', KEYS[1])
if type(state) ~= 'string' then state = '' end
local cur = redis.pcall('GET', KEYS[2])
local left = redis.call('PTTL', KEYS[2])
if cur == ARGV[1] then return {now, state, 1, left} end
local foreign = type(cur) ~= 'string' or #cur > 64 or string.match(cur, '^%x+$') == nil or left < 0
if foreign then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return {now, state, 1, tonumber(ARGV[2])}
end
return {now, state, 0, left}
";

/// The four scripts, hashed once (a script is sent by its hash, and in full again after a
/// restart of Redis forgot it: `Script::invoke_async` does both).
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) sync: Script,
    pub(crate) open: Script,
    pub(crate) close: Script,
    pub(crate) claim: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        let with_now = |body: &str| Script::new(&format!("{NOW}{body}"));
        Scripts {
            sync: with_now(SYNC),
            open: with_now(OPEN),
            close: with_now(CLOSE),
            claim: with_now(CLAIM),
        }
    }
}
