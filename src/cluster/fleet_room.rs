//! A waiting room shared by every node of a fleet: one ticket counter, one admission
//! frontier, one capacity, held in Redis and changed only by Lua scripts (atomic, so two
//! nodes never hand out the same number or overrun the capacity).
//!
//! Redis round trips happen per student, never per request of a session: a newcomer takes
//! a number (`ARRIVE`), a waiting ticket near the front polls through `CLAIM` (which lets
//! it in when its turn has come). Polls of tickets further back, and every request of an
//! admitted session, are answered from this node's copy of the room (refreshed at each
//! sync). Sessions moving
//! between activity buckets are counted locally and flushed in one batch per sync
//! (`MOVES`); admissions advance in `TICK`, run by whichever node syncs (the script
//! ignores ticks closer than 200 ms, so N nodes tick no faster than one).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use redis::Script;

use crate::policy::estimate::{estimate, Speed, Wait};
use crate::policy::waiting_room::{
    place_in_order, ClassPolicy, Method, RoomParams, Standing, PREQUEUE_BIT,
};

/// Activity buckets per idle timeout (as the local room).
const BUCKETS: u64 = 16;

/// Common Lua helpers: sum of active buckets in the window (dropping old ones), sum of
/// pending grants (dropping expired ones, counted as abandoned).
const LUA_COMMON: &str = r#"
local function active_sum(akey, cur)
  local t = redis.call('HGETALL', akey)
  local sum = 0
  for i = 1, #t, 2 do
    local b = tonumber(t[i])
    if b + 16 <= cur then
      redis.call('HDEL', akey, t[i])
    else
      sum = sum + tonumber(t[i + 1])
    end
  end
  return sum
end
local function pending_sum(pkey, rkey, now)
  local sum = 0
  while true do
    local head = redis.call('LINDEX', pkey, 0)
    if not head then break end
    local d, c = string.match(head, '(%d+):(%d+)')
    d = tonumber(d); c = tonumber(c)
    if d <= now then
      redis.call('LPOP', pkey)
      redis.call('HINCRBY', rkey, 'abandoned', c)
    else
      break
    end
  end
  for _, e in ipairs(redis.call('LRANGE', pkey, 0, -1)) do
    local _, c = string.match(e, '(%d+):(%d+)')
    sum = sum + tonumber(c)
  end
  return sum
end
local function num(v, d) if v then return tonumber(v) else return d end end
"#;

/// KEYS: room, active, pending, returning. ARGV: now, cap, per_min, burst, grace_ms, bucket_ms,
/// policies ("d", "b", "s0.25", one per class, comma-separated), and this node's last view
/// to start again from if Redis lost the room: "frontier:next" per class
/// (comma-separated, empty for none), active, pending, paused; then "1" when that view is
/// the room this node ran alone during an outage: ticket counters are raised to it (the
/// numbers it handed out are taken); then the
/// scheduled opening (unix ms, 0 for none): until then nobody is admitted, and at it the
/// pre-queue is frozen (its size per class, over which its tickets are shuffled); then
/// when this node's view was read (unix ms, 0 for never). After a Sentinel failover the
/// caller passes "1" before the opening, with its view's counters plus a margin for
/// other nodes' last numbers: the new master may lack the old one's last `ARRIVE`s.
/// Returns {frontier_0, next_0, prequeue_0, frontier_1, …, rate*1000, paused, active,
/// pending, tokens*1000, admitted, abandoned, issued, direct, opened, spread*1000,
/// seconds*1000, Redis' clock} (spread and seconds of measure: how sure the rate is, see
/// `policy::estimate`; Redis' clock in unix ms, for the claim fence).
const LUA_TICK: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local now = tonumber(ARGV[1]); local cap = tonumber(ARGV[2]); local per_ms = tonumber(ARGV[3]) / 60000
local burst = tonumber(ARGV[4]); local grace = tonumber(ARGV[5]); local bucket_ms = tonumber(ARGV[6])
local pol = {}
for p in string.gmatch(ARGV[7], '[^,]+') do table.insert(pol, p) end
local r = KEYS[1]
-- Redis restarted empty (or was flushed): start again from the room as this node last
-- saw it, so numbers already handed out are neither reused nor overtaken. The sessions
-- it saw inside are counted in a seed bucket, which their moves and ends draw from.
-- A node's view may be old (it was in fallback for a while): for SETTLE ms, a fresher
-- view taken before the restore (ARGV[14]: when the view was read) replaces it
-- (frontier and counter only go up), and nobody is admitted until then.
local settle = 2000
local restored = tonumber(redis.call('HGET', r, 'restored') or '0')
local view_at = tonumber(ARGV[14])
if ARGV[8] ~= '' and redis.call('EXISTS', r) == 1 and now - restored < settle
    and view_at < restored and view_at > tonumber(redis.call('HGET', r, 'restored_view_at') or '0') then
  local i = 0
  for f, n in string.gmatch(ARGV[8], '(%d+):(%d+)') do
    f = tonumber(f); n = tonumber(n)
    if n > num(redis.call('HGET', r, 'next:' .. i), 0) then redis.call('HSET', r, 'next:' .. i, n) end
    if f > num(redis.call('HGET', r, 'frontier:' .. i), 0) then redis.call('HSET', r, 'frontier:' .. i, f) end
    i = i + 1
  end
  -- The seed is raised or lowered by the difference between the views, never set:
  -- sessions may already have moved out of it (or ended) since the restore, and setting
  -- it would count them twice.
  local sb = redis.call('HGET', r, 'seed_bucket')
  local d = tonumber(ARGV[9]) - num(redis.call('HGET', r, 'seeded'), 0)
  if d ~= 0 and sb then
    redis.call('HSET', KEYS[2], sb, math.max(0, num(redis.call('HGET', KEYS[2], sb), 0) + d))
  end
  redis.call('DEL', KEYS[3])
  local pd = tonumber(ARGV[10])
  if pd > 0 then redis.call('RPUSH', KEYS[3], (restored + grace) .. ':' .. pd) end
  redis.call('HSET', r, 'restored_view_at', view_at, 'paused', ARGV[11], 'seeded', ARGV[9])
elseif ARGV[8] ~= '' and redis.call('EXISTS', r) == 0 then
  local i = 0
  for f, n in string.gmatch(ARGV[8], '(%d+):(%d+)') do
    redis.call('HSET', r, 'frontier:' .. i, f, 'next:' .. i, n)
    i = i + 1
  end
  local a = tonumber(ARGV[9])
  local seed = tostring(math.floor(now / bucket_ms))
  if a > 0 then
    redis.call('HINCRBY', KEYS[2], seed, a)
  end
  local pd = tonumber(ARGV[10])
  if pd > 0 then redis.call('RPUSH', KEYS[3], (now + grace) .. ':' .. pd) end
  redis.call('HSET', r, 'paused', ARGV[11], 'restored', now, 'seed_bucket', seed,
    'restored_view_at', ARGV[14], 'seeded', a)
  restored = now
elseif ARGV[12] == '1' then
  -- Numbers handed out alone are taken. The frontier stays: those the node let in are
  -- inside (their turn, passed again, goes unclaimed), the others keep their order.
  local i = 0
  for _, n in string.gmatch(ARGV[8], '(%d+):(%d+)') do
    n = tonumber(n)
    if n > num(redis.call('HGET', r, 'next:' .. i), 0) then redis.call('HSET', r, 'next:' .. i, n) end
    i = i + 1
  end
end
local opens = tonumber(ARGV[13])
local opened = 1
if opens > 0 and redis.call('HGET', r, 'opened_for') ~= ARGV[13] then
  if now >= opens then
    for i = 1, #pol do
      redis.call('HSET', r, 'prequeue:' .. (i - 1), num(redis.call('HGET', r, 'next:' .. (i - 1)), 0))
    end
    redis.call('HSET', r, 'opened_for', ARGV[13])
  else
    opened = 0
  end
end
local last = num(redis.call('HGET', r, 'last_tick'), nil)
local tokens = num(redis.call('HGET', r, 'tokens'), burst)
local rate = num(redis.call('HGET', r, 'rate'), 0)
local paused = num(redis.call('HGET', r, 'paused'), 0)
local cur = math.floor(now / bucket_ms)
local active = active_sum(KEYS[2], cur)
local pending = pending_sum(KEYS[3], r, now)
if last == nil or now - last >= 200 then
  local dt = 0
  if last ~= nil then dt = math.max(0, now - last) end
  tokens = math.min(tokens + per_ms * dt, burst)
  local total = 0
  if paused == 0 and opened == 1 and now - restored >= settle then
    local free = math.max(cap - active - pending, 0)
    local budget = math.min(free, math.floor(tokens))
    local left = budget
    -- Tickets back after their turn passed (a phone asleep) go first: their turn came
    -- already; their admissions were counted, then abandoned, when it passed.
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
    local back = math.min(left, redis.call('ZCARD', KEYS[4]))
    if back > 0 then
      redis.call('ZPOPMIN', KEYS[4], back)
      left = left - back
      local a = num(redis.call('HGET', r, 'abandoned'), 0)
      redis.call('HSET', r, 'abandoned', math.max(a - back, 0))
    end
    -- Reserved shares first, then every class in order (work-conserving).
    for i, p in ipairs(pol) do
      if string.sub(p, 1, 1) == 's' then
        local share = tonumber(string.sub(p, 2))
        local f = num(redis.call('HGET', r, 'frontier:' .. (i - 1)), 0)
        local n = num(redis.call('HGET', r, 'next:' .. (i - 1)), 0)
        local give = math.min(math.ceil(budget * share), n - f, left)
        if give > 0 then
          redis.call('HINCRBY', r, 'frontier:' .. (i - 1), give)
          left = left - give
        end
      end
    end
    for i, p in ipairs(pol) do
      if p ~= 'b' then
        local f = num(redis.call('HGET', r, 'frontier:' .. (i - 1)), 0)
        local n = num(redis.call('HGET', r, 'next:' .. (i - 1)), 0)
        local give = math.min(n - f, left)
        if give > 0 then
          redis.call('HINCRBY', r, 'frontier:' .. (i - 1), give)
          left = left - give
        end
      end
    end
    total = budget - left
    if total > 0 then
      tokens = tokens - total
      redis.call('RPUSH', KEYS[3], (now + grace) .. ':' .. total)
      redis.call('HINCRBY', r, 'admitted', total - back)
      pending = pending + total
    end
    total = total - back
  end
  -- The queue's speed over about 30 s of a standing queue, a moving average divided by
  -- its weight (so a new queue's first estimates are not several times too long);
  -- unknown again once nobody waits.
  local waiting = 0
  for i = 1, #pol do
    waiting = waiting + num(redis.call('HGET', r, 'next:' .. (i - 1)), 0)
      - num(redis.call('HGET', r, 'frontier:' .. (i - 1)), 0)
  end
  -- Beside it, the average of the squared rates and the sum of the squared weights:
  -- the spread of the recent rates and the samples the average rests on (how sure the
  -- wait is; the same sums as src/policy/estimate.rs). A queue not allowed to move
  -- (before the opening, paused) is not measured.
  local ema = num(redis.call('HGET', r, 'rate_ema'), 0)
  local w = num(redis.call('HGET', r, 'rate_w'), 0)
  local ema2 = num(redis.call('HGET', r, 'rate_ema2'), 0)
  local w2 = num(redis.call('HGET', r, 'rate_w2'), 0)
  local tick = num(redis.call('HGET', r, 'rate_tick'), 0)
  if waiting <= 0 and total == 0 then
    ema = 0; w = 0; rate = 0; ema2 = 0; w2 = 0; tick = 0
  elseif dt > 0 and paused == 0 and opened == 1 then
    local inst = total * 1000 / dt
    local alpha = math.min(dt / 30000, 1)
    ema = alpha * inst + (1 - alpha) * ema
    ema2 = alpha * inst * inst + (1 - alpha) * ema2
    w = alpha + (1 - alpha) * w
    w2 = alpha * alpha + (1 - alpha) * (1 - alpha) * w2
    tick = alpha * dt / 1000 + (1 - alpha) * tick
    rate = ema / w
  end
  redis.call('HSET', r, 'last_tick', now, 'tokens', tostring(tokens), 'rate', tostring(rate),
    'rate_ema', tostring(ema), 'rate_w', tostring(w), 'rate_ema2', tostring(ema2),
    'rate_w2', tostring(w2), 'rate_tick', tostring(tick))
end
local spread = 0
local seconds = 1
do
  local w = num(redis.call('HGET', r, 'rate_w'), 0)
  local w2 = num(redis.call('HGET', r, 'rate_w2'), 0)
  local tick = num(redis.call('HGET', r, 'rate_tick'), 0)
  if w > 0 then
    local samples = 1
    if w2 > 0 then samples = math.max(w * w / w2, 1) end
    local t = 1
    if tick > 0 then t = math.min(math.max(tick / w, 0.001), 60) end
    seconds = samples * t
    local var = math.max(num(redis.call('HGET', r, 'rate_ema2'), 0) / w - rate * rate, 0) * t
    var = math.max(var, rate * 3 / (seconds + 3))
    spread = math.sqrt(var)
  end
end
local out = {}
for i = 1, #pol do
  table.insert(out, num(redis.call('HGET', r, 'frontier:' .. (i - 1)), 0))
  table.insert(out, num(redis.call('HGET', r, 'next:' .. (i - 1)), 0))
  table.insert(out, num(redis.call('HGET', r, 'prequeue:' .. (i - 1)), 0))
end
table.insert(out, math.floor(rate * 1000))
table.insert(out, paused)
table.insert(out, active)
table.insert(out, pending)
table.insert(out, math.floor(tokens * 1000))
for _, k in ipairs({'admitted', 'abandoned', 'issued', 'direct'}) do
  table.insert(out, num(redis.call('HGET', r, k), 0))
end
table.insert(out, opened)
table.insert(out, math.floor(spread * 1000))
table.insert(out, math.floor(seconds * 1000))
local t = redis.call('TIME')
table.insert(out, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
return out
"#;

/// KEYS: room, active, pending, returning. ARGV: now, class, policy, cap, bucket_ms, opens (unix ms,
/// 0 for none), pre-queue window start, the highest number this node handed out alone in
/// the class (0 for none: the counter is raised to it first, so that a number is never
/// handed out again even before the node's next sync reports it). Returns {1, number, bucket} (let in),
/// {0, number, frontier} (queued), {2, number} (pre-queued before a scheduled opening),
/// {3} (before the pre-queue window: no ticket).
const LUA_ARRIVE: &str = r#"
local now = tonumber(ARGV[1]); local c = ARGV[2]; local policy = ARGV[3]
local cap = tonumber(ARGV[4]); local bucket_ms = tonumber(ARGV[5])
local r = KEYS[1]
local cur = math.floor(now / bucket_ms)
local floor = tonumber(ARGV[8] or '0')
if floor > num(redis.call('HGET', r, 'next:' .. c), 0) then redis.call('HSET', r, 'next:' .. c, floor) end
if policy == 'b' then
  local n = redis.call('HINCRBY', r, 'next:' .. c, 1)
  redis.call('HSET', r, 'frontier:' .. c, n)
  redis.call('HINCRBY', KEYS[2], cur, 1)
  redis.call('HINCRBY', r, 'direct', 1)
  return {1, n, cur}
end
if ARGV[6] ~= '0' and redis.call('HGET', r, 'opened_for') ~= ARGV[6] then
  if now < tonumber(ARGV[7]) then return {3} end
  local n = redis.call('HINCRBY', r, 'next:' .. c, 1)
  redis.call('HINCRBY', r, 'issued', 1)
  return {2, n}
end
local active = active_sum(KEYS[2], cur)
local pending = pending_sum(KEYS[3], r, now)
local f = num(redis.call('HGET', r, 'frontier:' .. c), 0)
local nx = num(redis.call('HGET', r, 'next:' .. c), 0)
local tokens = num(redis.call('HGET', r, 'tokens'), 1)
local paused = num(redis.call('HGET', r, 'paused'), 0)
if paused == 0 and nx - f == 0 and active + pending < cap and tokens >= 1
    and redis.call('EXISTS', KEYS[4]) == 0 then
  local n = redis.call('HINCRBY', r, 'next:' .. c, 1)
  redis.call('HSET', r, 'frontier:' .. c, n, 'tokens', tostring(tokens - 1))
  redis.call('HINCRBY', KEYS[2], cur, 1)
  redis.call('HINCRBY', r, 'direct', 1)
  redis.call('HINCRBY', r, 'admitted', 1)
  return {1, n, cur}
end
local n = redis.call('HINCRBY', r, 'next:' .. c, 1)
redis.call('HINCRBY', r, 'issued', 1)
return {0, n, f}
"#;

/// KEYS: room, active, pending, claimed-marker, returning. ARGV: now, class, number, cap,
/// bucket_ms, ticket lifetime ms, claim grace ms, and a deadline on Redis' clock (unix ms,
/// 0 for none) past which the claim does nothing and returns {4}: the node that sent it
/// gave up waiting (Redis frozen, the commands queued in its socket run when it thaws)
/// and answered from its own room, so a claim run then would use the ticket (and count a
/// session) behind the student's back. A late ticket that finds the room full
/// joins the returning tickets, served first by `TICK`. Returns {1, bucket} (admitted), {0, position} (waiting),
/// {2} (this ticket was already used).
const LUA_CLAIM: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local deadline = tonumber(ARGV[8] or '0')
if deadline > 0 then
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > deadline then return {4} end
end
local now = tonumber(ARGV[1]); local c = ARGV[2]; local number = tonumber(ARGV[3])
local cap = tonumber(ARGV[4]); local bucket_ms = tonumber(ARGV[5]); local abandon = tonumber(ARGV[6])
local r = KEYS[1]
if redis.call('EXISTS', KEYS[4]) == 1 then return {2} end
local f = num(redis.call('HGET', r, 'frontier:' .. c), 0)
if number > f then return {0, number - f} end
local cur = math.floor(now / bucket_ms)
local active = active_sum(KEYS[2], cur)
local pending = pending_sum(KEYS[3], r, now)
local claimed = false
local head = redis.call('LINDEX', KEYS[3], 0)
if head then
  local d, k = string.match(head, '(%d+):(%d+)')
  k = tonumber(k)
  if k > 1 then redis.call('LSET', KEYS[3], 0, d .. ':' .. (k - 1)) else redis.call('LPOP', KEYS[3]) end
  claimed = true
end
if claimed or active + pending < cap then
  if not claimed then
    local a = num(redis.call('HGET', r, 'abandoned'), 0)
    if a > 0 then redis.call('HINCRBY', r, 'abandoned', -1) end
  end
  redis.call('HINCRBY', KEYS[2], cur, 1)
  redis.call('SET', KEYS[4], 1, 'PX', abandon)
  redis.call('ZREM', KEYS[5], c .. ':' .. number)
  return {1, cur}
end
if redis.call('ZSCORE', KEYS[5], c .. ':' .. number) or redis.call('ZCARD', KEYS[5]) < 100000 then
  redis.call('ZADD', KEYS[5], now + tonumber(ARGV[7]), c .. ':' .. number)
end
return {0, 1}
"#;

/// KEYS: active, room. ARGV: triples old, new, count: a move, old -1 (a session let in
/// by this node alone, during an outage), or new -1 (an end). Sessions whose old bucket
/// is gone (Redis lost the room) are taken from the seed bucket instead. Returns 0, doing
/// nothing, when the room itself is gone (Redis restarted empty): the moves wait until
/// the next tick has put the room back.
const LUA_MOVES: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local seed = redis.call('HGET', KEYS[2], 'seed_bucket')
for i = 1, #ARGV, 3 do
  local old = ARGV[i]; local new = ARGV[i + 1]; local c = tonumber(ARGV[i + 2])
  if old ~= '-1' then
    local v = tonumber(redis.call('HGET', KEYS[1], old) or '0')
    local take = math.min(v, c)
    if take > 0 then redis.call('HINCRBY', KEYS[1], old, -take) end
    local rest = c - take
    if rest > 0 and seed and seed ~= old then
      -- Sessions counted before Redis lost the room: they were in the seed bucket.
      local s = tonumber(redis.call('HGET', KEYS[1], seed) or '0')
      if s > 0 then redis.call('HINCRBY', KEYS[1], seed, -math.min(s, rest)) end
    end
  end
  if new ~= '-1' then redis.call('HINCRBY', KEYS[1], new, c) end
end
return 1
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{LUA_COMMON}\n{body}"))
}

/// This node's copy of the shared room, refreshed at each sync.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// (frontier, next) per class.
    pub queues: Vec<(u64, u64)>,
    /// Pre-queue size per class, frozen at a scheduled opening.
    pub prequeue: Vec<u64>,
    /// The scheduled opening has passed (or there is none).
    pub opened: bool,
    /// When this view was read (unix ms; 0: never).
    pub at: u64,
    /// Frontier advances per second.
    pub rate: f64,
    /// Spread of the number admitted per second and the seconds of measure `rate`
    /// rests on (see `policy::estimate`).
    pub spread: f64,
    pub seconds: f64,
    pub paused: bool,
    pub active: u64,
    pub pending: u64,
    pub tokens: f64,
    /// admitted, abandoned, issued, direct (fleet-wide totals).
    pub counters: [u64; 4],
    /// Per class, numbers to leave for other nodes' tickets should Redis become
    /// unreachable now: twice what the fleet handed out since the previous view.
    pub margin: Vec<u64>,
    /// Redis' clock minus this node's (ms), as read at the last sync (`None`: never).
    pub clock_offset: Option<i64>,
}

impl View {
    /// Whether admissions have started (no scheduled opening, or it has passed).
    pub fn is_open(&self, p: &RoomParams) -> bool {
        p.opens_at.is_none() || self.opened
    }

    /// The place a ticket stands at in its class's order, once open: pre-queue tickets
    /// are shuffled over the pre-queue by the room's key, the same on every node.
    pub fn place(&self, p: &RoomParams, class: usize, number: u64) -> u64 {
        place_in_order(p, number, self.prequeue.get(class).copied().unwrap_or(0))
    }

    pub fn waiting(&self) -> u64 {
        self.queues.iter().map(|(f, n)| n.saturating_sub(*f)).sum()
    }

    /// The wait for `position`, one figure or a range (see `policy::estimate`).
    pub fn wait(&self, p: &RoomParams, position: u64, now: u64) -> Option<Wait> {
        if self.paused {
            return None;
        }
        let speed = Speed {
            rate: self.rate,
            spread: self.spread,
            seconds: self.seconds,
        };
        estimate(&speed, position, &p.limits(self.is_open(p), now))
    }

    /// Estimated wait for `position`, from the measured admission rate.
    pub fn eta(&self, position: u64) -> Option<Duration> {
        if self.paused || self.rate <= 0.01 {
            return None;
        }
        Some(Duration::from_secs_f64(position as f64 / self.rate))
    }
}

pub enum Arrived {
    Admit {
        number: u64,
        bucket: u64,
    },
    /// `position`: `None` for a pre-queue ticket (shuffled at the opening).
    Queue {
        number: u64,
        position: Option<u64>,
    },
    /// Before the pre-queue window of a scheduled opening: no ticket.
    Closed,
}

/// Scheduled opening (unix ms, 0 for none) and the start of its pre-queue window.
fn opening(p: &RoomParams) -> (u64, u64) {
    match p.opens_at {
        Some(t) => (t.max(1), t.saturating_sub(p.prequeue.as_millis() as u64)),
        None => (0, 0),
    }
}

pub struct FleetRoom {
    pub name: String,
    room_key: String,
    active_key: String,
    pending_key: String,
    claimed_prefix: String,
    /// Tickets back after their turn passed, to be served first (scored by expiry).
    returning_key: String,
    tick: Script,
    arrive: Script,
    claim: Script,
    moves_script: Script,
    pub view: Mutex<View>,
    /// Bucket moves not yet flushed, counted: (old or -1 for a session let in during an
    /// outage, new or -1 for an end). Ordered by old bucket: a session that moved twice
    /// leaves its first bucket before its second.
    moves: Mutex<BTreeMap<(i64, i64), u64>>,
    /// Sessions ended on this node (logout): their cookie is not honoured again here.
    ended: Mutex<HashMap<(u8, u64), u64>>,
    /// Times this node ran the room alone (Redis unreachable) since Redis last had it.
    diverged: AtomicU64,
    /// This node has seen the shared room once (before that, its own room is not the
    /// fleet's: nothing it does alone is sent).
    followed: AtomicBool,
    /// Waiting tickets let in by this node alone: marked used in Redis once it is back,
    /// so that a copy is not let in again (at most `MAX_OUTAGE_CLAIMS`).
    outage_claims: Mutex<Vec<(u8, u64)>>,
    /// The connection's master count at this room's last exchange (Sentinel failovers).
    masters_seen: AtomicU64,
    /// Per class, the highest number (without
    /// [`crate::policy::waiting_room::ALONE_BIT`]) this node handed out alone:
    /// Redis raises its counter to it at this node's next exchange and at each of its
    /// arrivals, and this node's own room never numbers below it again.
    alone_next: Mutex<Vec<u64>>,
    /// How long after a claim is sent Redis may still run it (ms; 0: no fence): the
    /// request timeout, after which the node has given up on it.
    claim_fence_ms: AtomicU64,
}

/// Waiting tickets let in during an outage, remembered for Redis at most.
const MAX_OUTAGE_CLAIMS: usize = 100_000;

fn bucket_ms(p: &RoomParams) -> u64 {
    (p.idle_timeout.as_millis() as u64 / BUCKETS).max(1000)
}

fn policies(p: &RoomParams) -> String {
    let v: Vec<String> = if p.classes.is_empty() {
        vec!["d".into()]
    } else {
        p.classes
            .iter()
            .map(|c| match c {
                ClassPolicy::Default => "d".to_string(),
                ClassPolicy::Bypass => "b".to_string(),
                ClassPolicy::Share(s) => format!("s{s}"),
            })
            .collect()
    };
    v.join(",")
}

fn burst(p: &RoomParams) -> f64 {
    (f64::from(p.new_users_per_minute) / 12.0).max(1.0)
}

impl FleetRoom {
    pub fn new(prefix: &str, name: &str) -> FleetRoom {
        // The room's own hash tag: all its keys in one slot (the Lua scripts touch them
        // together), and each room in a slot of its own, so a Redis Cluster spreads rooms
        // over its masters. Room names and the prefix never hold braces (checked at load).
        let base = format!("{{{prefix}:room:{name}}}");
        FleetRoom {
            name: name.to_string(),
            room_key: base.clone(),
            active_key: format!("{base}:active"),
            pending_key: format!("{base}:pending"),
            claimed_prefix: format!("{base}:claimed:"),
            returning_key: format!("{base}:returning"),
            tick: script(LUA_TICK),
            arrive: script(LUA_ARRIVE),
            claim: script(LUA_CLAIM),
            moves_script: script(LUA_MOVES),
            view: Mutex::new(View::default()),
            moves: Mutex::new(BTreeMap::new()),
            ended: Mutex::new(HashMap::new()),
            diverged: AtomicU64::new(0),
            followed: AtomicBool::new(false),
            outage_claims: Mutex::new(Vec::new()),
            masters_seen: AtomicU64::new(0),
            alone_next: Mutex::new(Vec::new()),
            claim_fence_ms: AtomicU64::new(0),
        }
    }

    /// Claims run by Redis more than `timeout` (the request timeout: the node has given
    /// up on them) after they were sent, on Redis' clock, do nothing. The clock offset
    /// is read when an answer comes back, so it errs early by up to a round trip, and
    /// the claim is dated before it is sent: the fence is strict, never late (a claim
    /// refused that way waits at the front and is tried at its next poll).
    pub fn set_claim_fence(&self, timeout: Duration) {
        self.claim_fence_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    /// This node handed out ticket `number` in `class` alone (Redis unreachable).
    pub fn note_alone(&self, class: usize, number: u64) {
        let n = number & !PREQUEUE_BIT & !crate::policy::waiting_room::ALONE_BIT;
        let mut g = self.alone_next.lock().unwrap_or_else(|p| p.into_inner());
        if class >= 256 {
            return;
        }
        if g.len() <= class {
            g.resize(class + 1, 0);
        }
        g[class] = g[class].max(n);
    }

    /// Per class, the highest number this node handed out alone (empty: none).
    pub fn alone_next(&self) -> Vec<u64> {
        self.alone_next
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// This node runs the room alone (Redis unreachable): what it does is sent to Redis
    /// at the next exchange.
    pub fn mark_diverged(&self) {
        if self.followed.load(Ordering::Relaxed) {
            self.diverged.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether this node ran the room alone since Redis last had it: `Some(mark)` to
    /// pass to [`Self::synced_since`] once Redis has it.
    pub fn diverged_mark(&self) -> Option<u64> {
        let m = self.diverged.load(Ordering::Relaxed);
        (m > 0).then_some(m)
    }

    /// Redis has the room as it was at `mark` (unless it ran alone again since).
    pub fn synced_since(&self, mark: u64) {
        let _ = self
            .diverged
            .compare_exchange(mark, 0, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn push_move(&self, old: i64, new: i64) {
        *self
            .moves
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((old, new))
            .or_insert(0) += 1;
    }

    /// A session let in by this node alone (outage), counted in `bucket`: added to the
    /// fleet's count when Redis is back. `claimed`: the waiting ticket it came with.
    pub fn record_outage_admission(&self, bucket: u64, claimed: Option<(u8, u64)>) {
        self.mark_diverged();
        self.push_move(-1, bucket as i64);
        if let Some(c) = claimed {
            let mut g = self.outage_claims.lock().unwrap_or_else(|p| p.into_inner());
            if g.len() < MAX_OUTAGE_CLAIMS {
                g.push(c);
            }
        }
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One admission tick and a fresh view; flushes this node's bucket moves first.
    /// `ran_alone`: (frontier, next) per class of the room this node ran during an
    /// outage, for Redis to raise its own to.
    pub async fn sync(
        &self,
        conn: &mut super::redis_conn::RedisConn,
        p: &RoomParams,
        now: u64,
        ran_alone: Option<&[(u64, u64)]>,
    ) -> redis::RedisResult<u64> {
        // What is sent leaves this node only once Redis has it: a failed exchange, or
        // one given up half way (timed out), sends it again next time.
        let moves: BTreeMap<(i64, i64), u64> =
            self.moves.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut sent = 0;
        if !moves.is_empty() {
            let mut inv = self.moves_script.key(&self.active_key);
            inv.key(&self.room_key);
            for ((old, new), n) in &moves {
                inv.arg(*old).arg(*new).arg(*n);
            }
            let done = inv.invoke_async::<i64>(conn).await? == 1;
            let mut g = self.moves.lock().unwrap_or_else(|p| p.into_inner());
            for (k, n) in moves.into_iter().filter(|_| done) {
                if let Some(left) = g.get_mut(&k) {
                    *left = left.saturating_sub(n);
                    if *left == 0 {
                        g.remove(&k);
                    }
                }
            }
            sent += 1;
        }
        let claims: Vec<(u8, u64)> = self
            .outage_claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if !claims.is_empty() {
            let mut pipe = redis::pipe();
            for (c, n) in &claims {
                pipe.cmd("SET")
                    .arg(format!("{}{c}:{n}", self.claimed_prefix))
                    .arg(1)
                    .arg("PX")
                    .arg(p.waiting_ticket_lifetime().as_millis() as u64)
                    .ignore();
            }
            pipe.query_async::<()>(conn).await?;
            let mut g = self.outage_claims.lock().unwrap_or_else(|p| p.into_inner());
            let n = claims.len().min(g.len());
            g.drain(..n);
            sent += claims.len() as u64;
        }
        let alone = self.alone_next();
        // A new master (Sentinel failover) since this room's last exchange: it may lack
        // the old master's last writes.
        let masters = conn.masters();
        let failover = masters > 1
            && masters != self.masters_seen.load(Ordering::Relaxed)
            && self.followed.load(Ordering::Relaxed);
        // The room as last seen here, for Redis to start again from if it lost it (or,
        // after an outage or a failover, to raise its own to).
        let (seen, active, pending, paused, view_at) = {
            let v = self.view();
            let classes = p.classes.len().max(1);
            let mut q: Vec<(u64, u64)> = if v.queues.len() == classes {
                v.queues.clone()
            } else {
                Vec::new()
            };
            if let Some(local) = ran_alone {
                q.resize(classes, (0, 0));
                for (a, b) in q.iter_mut().zip(local) {
                    *a = (a.0.max(b.0), a.1.max(b.1));
                }
            }
            // Numbers handed out alone, even those after the room above was read (the
            // node still alone while this exchange was under way): they are taken.
            // (Not without a view of the room: Redis would start again from it.)
            if !q.is_empty() {
                for (a, n) in q.iter_mut().zip(&alone) {
                    a.1 = a.1.max(*n);
                }
            }
            if failover {
                // Numbers the other nodes handed out just before the failover, which the
                // new master may have lost, are past this node's view by less than
                // the margin (twice what the fleet handed out between two views).
                for (i, a) in q.iter_mut().enumerate() {
                    a.1 += v.margin.get(i).copied().unwrap_or(4);
                }
            }
            let seen = q
                .iter()
                .map(|(f, n)| format!("{f}:{n}"))
                .collect::<Vec<_>>()
                .join(",");
            (seen, v.active, v.pending, u8::from(v.paused), v.at)
        };
        let out: Vec<i64> = self
            .tick
            .key(&self.room_key)
            .key(&self.active_key)
            .key(&self.pending_key)
            .key(&self.returning_key)
            .arg(now)
            .arg(p.active_users)
            .arg(p.new_users_per_minute)
            .arg(burst(p))
            .arg(p.claim_grace().as_millis() as u64)
            .arg(bucket_ms(p))
            .arg(policies(p))
            .arg(seen)
            .arg(active)
            .arg(pending)
            .arg(paused)
            .arg(if ran_alone.is_some() || failover || !alone.is_empty() {
                "1"
            } else {
                "0"
            })
            .arg(opening(p).0)
            .arg(view_at)
            .invoke_async(conn)
            .await?;
        let read_at = crate::clock::now_ms();
        sent += 1;
        if failover {
            log::warn!(
                "cluster: room {}: new master after a Sentinel failover; ticket counters raised to this node's view",
                self.name
            );
        }
        self.masters_seen.store(masters, Ordering::Relaxed);
        let classes = p.classes.len().max(1);
        if out.len() == classes * 3 + 13 {
            let mut v = self.view();
            let g = |i: usize| out[i].max(0) as u64;
            let queues: Vec<(u64, u64)> = (0..classes).map(|i| (g(3 * i), g(3 * i + 1))).collect();
            v.prequeue = (0..classes).map(|i| g(3 * i + 2)).collect();
            v.margin = queues
                .iter()
                .enumerate()
                .map(|(i, (_, n))| {
                    let before = v.queues.get(i).map_or(*n, |q| q.1);
                    2 * n.saturating_sub(before) + 4
                })
                .collect();
            v.queues = queues;
            let b = classes * 3;
            v.rate = out[b] as f64 / 1000.0;
            v.paused = out[b + 1] != 0;
            v.active = out[b + 2].max(0) as u64;
            v.pending = out[b + 3].max(0) as u64;
            v.tokens = out[b + 4] as f64 / 1000.0;
            for i in 0..4 {
                v.counters[i] = out[b + 5 + i].max(0) as u64;
            }
            v.opened = out[b + 9] != 0;
            v.spread = out[b + 10].max(0) as f64 / 1000.0;
            v.seconds = (out[b + 11] as f64 / 1000.0).max(0.001);
            // Read when the answer came back: Redis' clock may look a round trip
            // early, never late (the fence errs on the strict side by that much).
            v.clock_offset = Some(out[b + 12] - read_at as i64);
            v.at = now;
            self.followed.store(true, Ordering::Relaxed);
        }
        let now_ended = now;
        self.ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, until| *until > now_ended);
        Ok(sent)
    }

    /// Whether a newcomer would be queued (from this node's view; the exact decision is
    /// `arrive`'s).
    pub fn would_queue(&self, p: &RoomParams, class: usize, now: u64) -> bool {
        if p.classes.get(class) == Some(&ClassPolicy::Bypass) {
            return false;
        }
        let v = self.view();
        if !v.is_open(p) {
            // Closed before the pre-queue window: no ticket, so nothing to limit.
            return now >= opening(p).1;
        }
        let waiting = v
            .queues
            .get(class)
            .map(|(f, n)| n.saturating_sub(*f))
            .unwrap_or(0);
        v.paused || waiting > 0 || v.active + v.pending >= u64::from(p.active_users)
    }

    pub async fn arrive(
        &self,
        conn: &mut super::redis_conn::RedisConn,
        p: &RoomParams,
        class: usize,
        now: u64,
    ) -> redis::RedisResult<Arrived> {
        let policy = match p.classes.get(class) {
            Some(ClassPolicy::Bypass) => "b",
            _ => "d",
        };
        let floor = self.alone_next().get(class).copied().unwrap_or(0);
        let out: Vec<i64> = self
            .arrive
            .key(&self.room_key)
            .key(&self.active_key)
            .key(&self.pending_key)
            .key(&self.returning_key)
            .arg(now)
            .arg(class)
            .arg(policy)
            .arg(p.active_users)
            .arg(bucket_ms(p))
            .arg(opening(p).0)
            .arg(opening(p).1)
            .arg(floor)
            .invoke_async(conn)
            .await?;
        let g = |i: usize| out.get(i).copied().unwrap_or(0).max(0) as u64;
        let mut v = self.view();
        if let Some(q) = v.queues.get_mut(class) {
            q.1 = q.1.max(g(1));
        }
        Ok(match out.first() {
            Some(1) => Arrived::Admit {
                number: g(1),
                bucket: g(2),
            },
            Some(2) => Arrived::Queue {
                number: match p.method {
                    Method::Random => PREQUEUE_BIT | g(1),
                    Method::Fifo => g(1),
                },
                position: None,
            },
            Some(3) => Arrived::Closed,
            _ => Arrived::Queue {
                number: g(1),
                position: Some(g(1).saturating_sub(g(2)).max(1)),
            },
        })
    }

    /// A waiting ticket polls; true when Redis was asked. Far behind the frontier as last
    /// seen: answered from this node's view. Near it (within what one admission tick can
    /// let in), Redis is asked: another node's tick may have let it in since this node's
    /// view, and asking there keeps one order whichever node a student polls.
    pub async fn poll(
        &self,
        conn: &mut super::redis_conn::RedisConn,
        p: &RoomParams,
        class: usize,
        number: u64,
        now: u64,
    ) -> redis::RedisResult<(Standing, bool)> {
        let fence = self.claim_fence_ms.load(Ordering::Relaxed);
        let (frontier, place, deadline) = {
            let v = self.view();
            let f = v.queues.get(class).map(|q| q.0).unwrap_or(0);
            let deadline = match v.clock_offset {
                Some(o) if fence > 0 => (now as i64)
                    .saturating_add(o)
                    .saturating_add(fence as i64)
                    .max(1),
                _ => 0,
            };
            (f, v.is_open(p).then(|| v.place(p, class, number)), deadline)
        };
        // Pre-queued: shuffled at the opening, no place before it.
        let Some(place) = place else {
            return Ok((Standing::Waiting { position: None }, false));
        };
        if place > frontier + burst(p).ceil() as u64 {
            return Ok((
                Standing::Waiting {
                    position: Some(place - frontier),
                },
                false,
            ));
        }
        let out: Vec<i64> = self
            .claim
            .key(&self.room_key)
            .key(&self.active_key)
            .key(&self.pending_key)
            .key(format!("{}{class}:{number}", self.claimed_prefix))
            .key(&self.returning_key)
            .arg(now)
            .arg(class)
            .arg(place)
            .arg(p.active_users)
            .arg(bucket_ms(p))
            .arg(p.waiting_ticket_lifetime().as_millis() as u64)
            .arg(p.claim_grace().as_millis() as u64)
            .arg(deadline)
            .invoke_async(conn)
            .await?;
        let g = |i: usize| out.get(i).copied().unwrap_or(0).max(0) as u64;
        let standing = match out.first() {
            Some(1) => Standing::Admitted { bucket: g(1) },
            Some(2) => Standing::Used,
            // Past the fence (only if the clocks jumped: the node waits less than that):
            // nothing done, the ticket waits at the front.
            Some(4) => Standing::Waiting {
                position: Some(place.saturating_sub(frontier).max(1)),
            },
            _ => Standing::Waiting {
                position: Some(g(1).max(1)),
            },
        };
        Ok((standing, true))
    }

    /// An admitted session makes a request: decided here, the move counted at the next
    /// sync. `None`: ended on this node, or idle past the window.
    pub fn touch(&self, p: &RoomParams, class: u8, number: u64, old: u64, now: u64) -> Option<u64> {
        if self
            .ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&(class, number))
        {
            return None;
        }
        let cur = now / bucket_ms(p);
        if cur != old {
            if old + BUCKETS <= cur {
                return None;
            }
            self.push_move(old as i64, cur as i64);
        }
        Some(cur)
    }

    /// The origin ended a session: free its place (at the next sync), once.
    pub fn end(&self, p: &RoomParams, class: u8, number: u64, bucket: u64, now: u64) {
        let until = now + p.idle_timeout.as_millis() as u64;
        let fresh = self
            .ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((class, number), until)
            .is_none();
        if fresh {
            self.push_move(bucket as i64, -1);
        }
    }

    pub fn eta(&self, position: u64) -> Option<Duration> {
        self.view().eta(position)
    }

    pub fn wait(&self, p: &RoomParams, position: u64, now: u64) -> Option<Wait> {
        self.view().wait(p, position, now)
    }

    /// Pause or resume admissions fleet-wide.
    pub async fn set_paused(
        &self,
        conn: &mut super::redis_conn::RedisConn,
        paused: bool,
    ) -> redis::RedisResult<()> {
        let _: () = redis::cmd("HSET")
            .arg(&self.room_key)
            .arg("paused")
            .arg(i32::from(paused))
            .query_async(conn)
            .await?;
        self.view().paused = paused;
        Ok(())
    }

    pub fn paused(&self) -> bool {
        self.view().paused
    }
}
