//! The waiting room's server side: O(1) state per room, whatever the number of students.
//!
//! Per priority class: a ticket counter (`next`: tickets issued) and an admission frontier
//! (`frontier`: every ticket numbered at or below it may enter). Per room: admitted
//! sessions counted in activity buckets (a session is counted once, in the bucket of its
//! last activity, so the count is "sessions active within the idle timeout"), admissions
//! granted but not yet claimed (`pending`, with a deadline), a token bucket for
//! `new_users_per_minute`, and an estimate of the admission rate.
//!
//! Each tick the frontier advances by what capacity allows. Tickets whose owners left
//! never claim their admission: their pending slot expires after a grace period and the
//! next tick admits others. All times are unix milliseconds passed in by the caller, so
//! tests drive a fake clock.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::estimate::{estimate, Limits, SpeedMeter, Wait};

/// Pre-queue tickets (method `random`) carry this bit over their number in issue order;
/// their place is that number shuffled at the opening (see [`shuffled_place`]).
pub const PREQUEUE_BIT: u64 = 1 << 62;

/// Tickets handed out by a fleet node alone (Redis unreachable) carry this bit over
/// their number: their place is the number without it, their identity (the ticket a
/// copy of which is refused as used, the session a logout ends) keeps it. The node's
/// numbers are its own (`number % nodes == slot`), but Redis, once back, cannot know
/// every number every node handed out alone before that node reports them (a node may
/// still run alone, or be between its snapshot and its report): two students may then
/// stand at one place, but they never are one student.
pub const ALONE_BIT: u64 = 1 << 61;

/// The place of pre-queue ticket `index` (1-based, in issue order) among `size`, by a
/// permutation keyed by `key` (a four-round Feistel network over the smallest even
/// power of two holding `size`, walking the cycle back into range): every place from 1
/// to `size` is taken exactly once, so the frontier never passes an empty place or
/// lets two tickets in on one; the order cannot be guessed without the key.
pub fn shuffled_place(key: u64, index: u64, size: u64) -> u64 {
    if index == 0 || index > size || size <= 1 {
        return index.max(1);
    }
    let bits = 64 - (size - 1).leading_zeros();
    let half = bits.div_ceil(2).max(1);
    let mask = (1u64 << half) - 1;
    let mut x = index - 1;
    loop {
        let (mut l, mut r) = (x >> half, x & mask);
        for round in 1..=4u64 {
            let f = mix(key ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ r) & mask;
            (l, r) = (r, l ^ f);
        }
        x = (l << half) | r;
        if x < size {
            return x + 1;
        }
    }
}

/// Where ticket `number` stands in its class's order once open: its own number, or for a
/// pre-queue ticket its shuffled place among the `prequeue` frozen at the opening.
pub fn place_in_order(params: &RoomParams, number: u64, prequeue: u64) -> u64 {
    if number & PREQUEUE_BIT == 0 {
        return number & !ALONE_BIT;
    }
    shuffled_place(
        params.shuffle_key,
        number & (PREQUEUE_BIT - 1) & !ALONE_BIT,
        prequeue,
    )
}

/// SplitMix64's finalizer: a cheap bijective mixing of 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// How a priority class is treated by a room.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClassPolicy {
    /// The default queue (class 0).
    Default,
    /// Never queued (still counted as active).
    Bypass,
    /// Own queue with this share of each tick's admissions reserved (0 < share < 1).
    Share(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Fifo,
    /// Pre-queue arrivals are shuffled at opening.
    Random,
}

/// The room's settings, from the config (changeable live).
#[derive(Debug, Clone)]
pub struct RoomParams {
    pub active_users: u32,
    pub new_users_per_minute: u32,
    pub idle_timeout: Duration,
    pub abandon_timeout: Duration,
    /// How long after `abandon_timeout` a waiting ticket is still honoured: a phone that
    /// slept through its turn comes back ahead of the line (see [`RoomState::poll`]).
    pub return_grace: Duration,
    pub poll_interval: Duration,
    /// Class policies, index = ticket class (0 = default).
    pub classes: Vec<ClassPolicy>,
    pub method: Method,
    /// Scheduled opening (unix ms): nobody is admitted before it.
    pub opens_at: Option<u64>,
    /// How long before `opens_at` tickets are handed out.
    pub prequeue: Duration,
    /// Set while a node of a fleet runs its room without Redis (see [`FleetShare`]).
    pub fleet: Option<FleetShare>,
    /// Key of the pre-queue shuffle (derived from the room's signing key and opening).
    pub shuffle_key: u64,
}

/// A fleet node running its room while Redis is unreachable, as node `slot` of `nodes`.
/// Its capacity and pace are its share (already divided in the params); its room goes on
/// over the fleet's numbering (see [`RoomState::follow`]):
/// - new tickets take numbers interleaved by node (`number % nodes == slot`), so two
///   nodes never hand out the same number and the fleet's order stays one order;
/// - the frontier moves at the fleet's pace (this node's budget times `nodes`), since the
///   students it passes poll any node, while this node grants only its share of the
///   turns and never lets more in than its share of the capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetShare {
    pub slot: u32,
    pub nodes: u32,
}

impl FleetShare {
    fn spread(share: Option<FleetShare>) -> u64 {
        share.map_or(1, |s| u64::from(s.nodes.max(1)))
    }
}

/// The next number for a ticket of `q` (interleaved by node in a fleet outage).
fn take_number(q: &mut Queue, share: Option<FleetShare>) -> u64 {
    let mut n = q.next + 1;
    if share.is_some() {
        n += std::mem::take(&mut q.gap);
    }
    if let Some(s) = share.filter(|s| s.nodes > 1) {
        let m = u64::from(s.nodes);
        let k = u64::from(s.slot) % m;
        n += (k + m - n % m) % m;
    }
    q.next = n;
    n
}

/// A ticket's number as handed out: with [`ALONE_BIT`] by a fleet node alone.
fn alone_tag(number: u64, share: Option<FleetShare>) -> u64 {
    if share.is_some() {
        number | ALONE_BIT
    } else {
        number
    }
}

impl RoomParams {
    /// How long after its last poll a waiting ticket is honoured: the abandon timeout,
    /// then the return grace of a pupil whose phone slept through the turn.
    pub fn waiting_ticket_lifetime(&self) -> Duration {
        self.abandon_timeout + self.return_grace
    }

    /// How long an admission waits to be claimed by its ticket holder's next poll.
    pub fn claim_grace(&self) -> Duration {
        self.poll_interval * 2 + Duration::from_secs(5)
    }

    fn bucket_ms(&self) -> u64 {
        (self.idle_timeout.as_millis() as u64 / BUCKETS as u64).max(1000)
    }

    /// What the settings alone say of a wait: the frontier never moves faster than
    /// the pace (the fleet's, in an outage), nobody enters before the opening.
    pub fn limits(&self, opened: bool, now_ms: u64) -> Limits {
        let spread = FleetShare::spread(self.fleet) as f64;
        let until_open = match self.opens_at {
            Some(t) if !opened => Duration::from_millis(t.saturating_sub(now_ms)),
            _ => Duration::ZERO,
        };
        Limits {
            max_rate: Some(f64::from(self.new_users_per_minute) / 60.0 * spread),
            burst: self.burst() * spread,
            until_open,
        }
    }

    fn burst(&self) -> f64 {
        // Five seconds' worth, at least one.
        (f64::from(self.new_users_per_minute) / 12.0).max(1.0)
    }
}

const BUCKETS: usize = 16;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Queue {
    /// Tickets issued in this class.
    pub next: u64,
    /// Tickets admitted (every number <= frontier may enter).
    pub frontier: u64,
    /// Pre-queue tickets issued before the opening (fixed at opening).
    pub prequeue: u64,
    /// Fleet mode: numbers skipped by the first ticket this node hands out alone, left
    /// for tickets other nodes may have handed out since it last saw the fleet.
    #[serde(skip)]
    pub gap: u64,
}

impl Queue {
    pub fn waiting(&self) -> u64 {
        self.next.saturating_sub(self.frontier)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counters {
    pub issued: u64,
    pub admitted: u64,
    pub direct: u64,
    pub abandoned: u64,
    pub ended: u64,
}

/// Everything a room remembers. Serializable: snapshotted to disk for restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomState {
    pub queues: Vec<Queue>,
    /// Activity buckets: (bucket index, sessions whose last activity fell in it).
    active: VecDeque<(u64, u32)>,
    /// Admissions granted, not yet claimed: (deadline ms, count).
    pending: VecDeque<(u64, u32)>,
    tokens: f64,
    last_tick_ms: u64,
    /// Frontier advances per second while a queue stands, smoothed over about 30 s
    /// (the estimate of the wait divides a position by it).
    pub rate: f64,
    /// The measure behind `rate`: a bias-corrected moving average, with the spread of
    /// the recent rates and the number of samples it rests on (how sure the wait is,
    /// see [`crate::policy::estimate`]).
    #[serde(flatten)]
    meter: SpeedMeter,
    pub paused: bool,
    pub opened: bool,
    pub counters: Counters,
    /// Waiting tickets already admitted: a copy of a ticket gets in once, not once per
    /// copy. Not snapshotted (after a restart the window starts empty).
    #[serde(skip)]
    claimed: Recent,
    /// Sessions the origin ended: the (still signed) cookie is not honoured again.
    #[serde(skip)]
    ended: Recent,
    /// Fleet mode: the bucket counting the fleet's sessions this node took over when
    /// Redis became unreachable; their moves and ends draw from it.
    #[serde(default)]
    seed_bucket: Option<u64>,
    /// Tickets whose turn passed while they were away (a phone asleep) and came back to
    /// a full room: (until ms, class, number), served before the line at the next free
    /// places. Each stays while it keeps polling. Not snapshotted: they poll again.
    #[serde(skip)]
    returning: Returning,
}

/// Tickets back after their turn passed, first back first served.
#[derive(Debug, Clone, Default)]
struct Returning {
    order: VecDeque<(u8, u64)>,
    until: HashMap<(u8, u64), u64>,
}

impl Returning {
    /// At most this many at once (each is a signed ticket whose turn passed; more
    /// means a room far larger than any school's).
    const CAP: usize = 100_000;

    fn is_empty(&self) -> bool {
        self.until.is_empty()
    }

    fn len(&self) -> usize {
        self.until.len()
    }

    /// A returning ticket polled: it keeps its place among the returning until `until`.
    fn note(&mut self, class: u8, number: u64, until: u64) {
        if let Some(u) = self.until.get_mut(&(class, number)) {
            *u = until;
        } else if self.until.len() < Self::CAP {
            self.until.insert((class, number), until);
            self.order.push_back((class, number));
        }
    }

    fn remove(&mut self, class: u8, number: u64) {
        self.until.remove(&(class, number));
    }

    /// Forget those who stopped polling, and the order's leftovers.
    fn expire(&mut self, now_ms: u64) {
        self.until.retain(|_, u| *u > now_ms);
        let until = &self.until;
        self.order.retain(|k| until.contains_key(k));
    }

    /// Places for the first `n` of them; they claim them at their next poll.
    fn serve(&mut self, n: u64) {
        let mut left = n;
        while left > 0 {
            let Some(k) = self.order.pop_front() else {
                break;
            };
            if self.until.remove(&k).is_some() {
                left -= 1;
            }
        }
    }
}

/// Ticket numbers seen recently, each for a while, at most `CAP` of them (the oldest are
/// forgotten first): bounded replay protection.
#[derive(Debug, Clone, Default)]
struct Recent {
    order: VecDeque<(u64, u8, u64)>,
    set: HashSet<(u8, u64)>,
}

impl Recent {
    const CAP: usize = 1_000_000;

    fn contains(&self, class: u8, number: u64) -> bool {
        self.set.contains(&(class, number))
    }

    fn insert(&mut self, class: u8, number: u64, until_ms: u64) {
        if self.set.insert((class, number)) {
            self.order.push_back((until_ms, class, number));
            if self.order.len() > Self::CAP {
                if let Some((_, c, n)) = self.order.pop_front() {
                    self.set.remove(&(c, n));
                }
            }
        }
    }

    fn prune(&mut self, now_ms: u64) {
        while let Some(&(until, c, n)) = self.order.front() {
            if until > now_ms {
                break;
            }
            self.order.pop_front();
            self.set.remove(&(c, n));
        }
    }
}

/// What to do with a request that holds no valid ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Let in now: a new admitted session numbered `number`, counted in `bucket`.
    Admit { number: u64, bucket: u64 },
    /// Queued with this ticket number.
    Queue { number: u64 },
    /// Not open yet and outside the pre-queue window: no ticket.
    Closed,
}

/// Where a waiting ticket stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Standing {
    /// Its turn has come: admitted now, counted in `bucket`.
    Admitted { bucket: u64 },
    /// Still waiting: `position` 1 = next; `None` before the opening shuffle.
    Waiting { position: Option<u64> },
    /// This ticket was already used to get in (a copy): it gives no place.
    Used,
}

impl RoomState {
    pub fn new(params: &RoomParams, now_ms: u64) -> RoomState {
        RoomState {
            queues: vec![Queue::default(); params.classes.len().max(1)],
            active: VecDeque::new(),
            pending: VecDeque::new(),
            tokens: params.burst(),
            last_tick_ms: now_ms,
            rate: 0.0,
            meter: SpeedMeter::default(),
            paused: false,
            opened: params.opens_at.is_none(),
            counters: Counters::default(),
            claimed: Recent::default(),
            ended: Recent::default(),
            seed_bucket: None,
            returning: Returning::default(),
        }
    }

    /// Fleet mode, Redis answering: take the fleet's room as this node's own, so that if
    /// Redis becomes unreachable the room goes on from where the fleet was: every ticket
    /// keeps its number and its place, newcomers are numbered after them. `queues` is
    /// (frontier, next) per class; `margin` numbers per class are left for tickets other
    /// nodes may have handed out since the fleet was read. `active` and `pending` are this
    /// node's share of the fleet's sessions and unclaimed admissions: the sessions are
    /// counted in a seed bucket that their moves draw from. `prequeue` and `opened`: a
    /// scheduled opening's pre-queue size per class, and whether it has passed.
    #[allow(clippy::too_many_arguments)]
    pub fn follow(
        &mut self,
        params: &RoomParams,
        queues: &[(u64, u64)],
        prequeue: &[u64],
        opened: bool,
        margin: &[u64],
        active: u64,
        pending: u64,
        paused: bool,
        rate: f64,
        now_ms: u64,
    ) {
        if self.queues.len() < queues.len() {
            self.queues.resize(queues.len(), Queue::default());
        }
        for (i, (q, &(f, n))) in self.queues.iter_mut().zip(queues).enumerate() {
            q.frontier = f.min(n);
            q.next = n;
            q.gap = margin.get(i).copied().unwrap_or(0);
            q.prequeue = prequeue.get(i).copied().unwrap_or(0);
        }
        let seed = Self::bucket_of(params, now_ms);
        self.active.clear();
        if active > 0 {
            self.active
                .push_back((seed, active.min(u64::from(u32::MAX)) as u32));
        }
        self.seed_bucket = Some(seed);
        self.pending.clear();
        if pending > 0 {
            let deadline = now_ms + params.claim_grace().as_millis() as u64;
            self.pending
                .push_back((deadline, pending.min(u64::from(u32::MAX)) as u32));
        }
        self.paused = paused;
        self.opened = opened || params.opens_at.is_none();
        self.rate = rate;
        self.meter = SpeedMeter::seeded(rate);
        self.last_tick_ms = now_ms;
    }

    /// Take a session out of `bucket`, or out of the seed bucket (a fleet session
    /// counted there when this node took the room over).
    fn uncount_or_seed(&mut self, bucket: u64) -> bool {
        if self.uncount(bucket) {
            return true;
        }
        match self.seed_bucket {
            Some(seed) if seed != bucket => self.uncount(seed),
            _ => false,
        }
    }

    /// Adapt to new params after a reload (classes added or removed at the end).
    pub fn resize(&mut self, params: &RoomParams) {
        let n = params.classes.len().max(1);
        if self.queues.len() < n {
            self.queues.resize(n, Queue::default());
        }
    }

    fn bucket_of(params: &RoomParams, now_ms: u64) -> u64 {
        now_ms / params.bucket_ms()
    }

    fn drop_old_buckets(&mut self, params: &RoomParams, now_ms: u64) {
        let cur = Self::bucket_of(params, now_ms);
        while let Some(&(b, _)) = self.active.front() {
            if b + (BUCKETS as u64) <= cur {
                self.active.pop_front();
            } else {
                break;
            }
        }
    }

    fn count_in(&mut self, bucket: u64) {
        match self.active.iter_mut().find(|(b, _)| *b == bucket) {
            Some((_, n)) => *n += 1,
            None => {
                let pos = self.active.partition_point(|(b, _)| *b < bucket);
                self.active.insert(pos, (bucket, 1));
            }
        }
    }

    /// Take one session out of `bucket`; false when there was none to take (a replayed
    /// cookie whose move was already counted).
    fn uncount(&mut self, bucket: u64) -> bool {
        match self.active.iter_mut().find(|(b, _)| *b == bucket) {
            Some((_, n)) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    /// Sessions active within the idle timeout.
    pub fn active(&self) -> u64 {
        self.active.iter().map(|(_, n)| u64::from(*n)).sum()
    }

    /// Admissions granted and not yet claimed.
    pub fn pending(&self) -> u64 {
        self.pending.iter().map(|(_, n)| u64::from(*n)).sum()
    }

    pub fn waiting(&self) -> u64 {
        self.queues.iter().map(Queue::waiting).sum()
    }

    fn expire_pending(&mut self, now_ms: u64) {
        while let Some(&(deadline, n)) = self.pending.front() {
            if deadline <= now_ms {
                self.counters.abandoned += u64::from(n);
                self.pending.pop_front();
            } else {
                break;
            }
        }
    }

    fn claim_pending(&mut self) -> bool {
        while let Some(front) = self.pending.front_mut() {
            if front.1 > 0 {
                front.1 -= 1;
                if front.1 == 0 {
                    self.pending.pop_front();
                }
                return true;
            }
            self.pending.pop_front();
        }
        false
    }

    fn is_open(&self, params: &RoomParams, now_ms: u64) -> bool {
        params.opens_at.is_none_or(|t| now_ms >= t)
    }

    /// Advance the frontiers by what capacity and the admission rate allow. Call it
    /// about once a second. Returns the number of tickets admitted.
    pub fn tick(&mut self, params: &RoomParams, now_ms: u64) -> u64 {
        let dt_ms = now_ms.saturating_sub(self.last_tick_ms);
        self.last_tick_ms = now_ms.max(self.last_tick_ms);
        let per_ms = f64::from(params.new_users_per_minute) / 60_000.0;
        self.expire_pending(now_ms);
        self.drop_old_buckets(params, now_ms);
        self.claimed.prune(now_ms);
        self.ended.prune(now_ms);
        self.returning.expire(now_ms);
        // The pace's burst only builds up while there is room to use it: a full room
        // that empties all at once (a class logging out) lets newcomers in at the pace,
        // not as a burst saved up while nobody could enter.
        let full = self.active() + self.pending() >= u64::from(params.active_users);
        let cap = if full {
            self.tokens
                .max((per_ms * 1000.0).max(1.0))
                .min(params.burst())
        } else {
            params.burst()
        };
        self.tokens = (self.tokens + per_ms * dt_ms as f64).min(cap);

        if !self.opened && self.is_open(params, now_ms) {
            // Opening: freeze the pre-queue; later tickets are numbered after it.
            for q in &mut self.queues {
                q.prequeue = q.next;
            }
            self.opened = true;
        }
        let mut total = 0u64;
        let mut advanced = 0u64;
        if !self.paused && self.opened {
            let used = self.active() + self.pending();
            let free = u64::from(params.active_users).saturating_sub(used);
            let mut budget = free.min(self.tokens.floor() as u64);
            // Tickets back after their turn passed go first: their turn came already.
            // Their admissions were counted (and then abandoned) when it passed.
            let back = budget.min(self.returning.len() as u64);
            self.returning.serve(back);
            budget -= back;
            self.counters.abandoned = self.counters.abandoned.saturating_sub(back);
            // In a fleet outage the students passed poll any node: the frontier moves at
            // the fleet's pace, this node grants its share of the turns.
            let spread = FleetShare::spread(params.fleet);
            advanced = distribute(
                &mut self.queues,
                &params.classes,
                budget.saturating_mul(spread),
            );
            total = advanced.div_ceil(spread).min(budget);
            self.counters.admitted += total;
            total += back;
            if total > 0 {
                self.tokens -= total as f64;
                let deadline = now_ms + params.claim_grace().as_millis() as u64;
                self.pending
                    .push_back((deadline, total.min(u64::from(u32::MAX)) as u32));
            }
        }
        // The queue's speed (frontier advances per second), over roughly the last 30 s
        // of a standing queue; with nobody waiting it is unknown again, and the next
        // queue is measured afresh. A queue not allowed to move (before a scheduled
        // opening, paused) says nothing of its speed: measuring its zeros made the
        // first estimates after the opening or a resume far too long.
        if self.waiting() == 0 && advanced == 0 {
            self.meter.reset();
            self.rate = 0.0;
        } else if self.opened && !self.paused && dt_ms > 0 {
            self.meter.record(advanced, dt_ms);
            self.rate = self.meter.rate();
        }
        total
    }

    /// Whether a newcomer in `class` would get a ticket (rather than be let in at once):
    /// the caller then applies the per-address ticket rate first.
    pub fn would_queue(&self, params: &RoomParams, class: usize, now_ms: u64) -> bool {
        let class = class.min(self.queues.len() - 1);
        if params.classes.get(class) == Some(&ClassPolicy::Bypass) {
            return false;
        }
        if !self.opened {
            // Closed before the pre-queue window: no ticket, so nothing to limit.
            let window_opens = params
                .opens_at
                .map(|t| t.saturating_sub(params.prequeue.as_millis() as u64))
                .unwrap_or(0);
            return now_ms >= window_opens;
        }
        let used = self.active() + self.pending();
        self.paused
            || self.queues[class].waiting() > 0
            || !self.returning.is_empty()
            || used >= u64::from(params.active_users)
            || self.tokens < 1.0
    }

    /// A request without a valid ticket arrives in `class`.
    pub fn arrive(&mut self, params: &RoomParams, class: usize, now_ms: u64) -> Arrival {
        let class = class.min(self.queues.len() - 1);
        let policy = params
            .classes
            .get(class)
            .copied()
            .unwrap_or(ClassPolicy::Default);
        if policy == ClassPolicy::Bypass {
            let bucket = Self::bucket_of(params, now_ms);
            self.count_in(bucket);
            self.counters.direct += 1;
            let q = &mut self.queues[class];
            let number = take_number(q, params.fleet);
            q.frontier = q.frontier.max(number);
            let number = alone_tag(number, params.fleet);
            return Arrival::Admit { number, bucket };
        }
        if !self.opened {
            let window_opens = params
                .opens_at
                .map(|t| t.saturating_sub(params.prequeue.as_millis() as u64))
                .unwrap_or(0);
            if now_ms < window_opens {
                return Arrival::Closed;
            }
            let q = &mut self.queues[class];
            q.next += 1;
            self.counters.issued += 1;
            let number = match params.method {
                Method::Random => PREQUEUE_BIT | q.next,
                Method::Fifo => q.next,
            };
            return Arrival::Queue { number };
        }
        self.drop_old_buckets(params, now_ms);
        let used = self.active() + self.pending();
        let q = &self.queues[class];
        if !self.paused
            && q.waiting() == 0
            && self.returning.is_empty()
            && used < u64::from(params.active_users)
            && self.tokens >= 1.0
        {
            // Spare capacity and nobody waiting: no queue page at all.
            self.tokens -= 1.0;
            let bucket = Self::bucket_of(params, now_ms);
            self.count_in(bucket);
            self.counters.direct += 1;
            self.counters.admitted += 1;
            let q = &mut self.queues[class];
            let number = take_number(q, params.fleet);
            q.frontier = number;
            let number = alone_tag(number, params.fleet);
            return Arrival::Admit { number, bucket };
        }
        let number = take_number(&mut self.queues[class], params.fleet);
        self.counters.issued += 1;
        Arrival::Queue {
            number: alone_tag(number, params.fleet),
        }
    }

    /// The number a ticket stands at in its queue (pre-queue tickets are shuffled at
    /// the opening), or `None` before the opening.
    pub fn effective_number(&self, params: &RoomParams, class: usize, number: u64) -> Option<u64> {
        if number & PREQUEUE_BIT == 0 {
            return Some(number & !ALONE_BIT);
        }
        if !self.opened {
            return None;
        }
        let size = self.queues.get(class).map(|q| q.prequeue).unwrap_or(0);
        Some(place_in_order(params, number, size))
    }

    /// A waiting ticket polls (or reloads the page).
    pub fn poll(
        &mut self,
        params: &RoomParams,
        class: usize,
        number: u64,
        now_ms: u64,
    ) -> Standing {
        let class = class.min(self.queues.len() - 1);
        let tag = class.min(255) as u8;
        if self.claimed.contains(tag, number) {
            return Standing::Used;
        }
        let Some(n) = self.effective_number(params, class, number) else {
            return Standing::Waiting { position: None };
        };
        let frontier = self.queues[class].frontier;
        if n <= frontier && self.opened {
            // Claim the admission granted to this ticket. A late holder whose grant
            // expired is let in only if there is room, so capacity is never exceeded.
            let claimed = self.claim_pending();
            let room = self.active() + self.pending() < u64::from(params.active_users);
            if claimed || room {
                if !claimed {
                    // Counted as abandoned when its grant expired; it came back after all.
                    self.counters.abandoned = self.counters.abandoned.saturating_sub(1);
                }
                let bucket = Self::bucket_of(params, now_ms);
                self.drop_old_buckets(params, now_ms);
                self.count_in(bucket);
                // Its waiting cookie stays signed for its lifetime: remember it.
                let until = now_ms + params.waiting_ticket_lifetime().as_millis() as u64;
                self.claimed.insert(tag, number, until);
                self.returning.remove(tag, number);
                return Standing::Admitted { bucket };
            }
            // Its turn passed while it was away (a phone asleep) and the room is full:
            // it takes the next free place, before the line. Admissions went on while
            // it was away; its grant expired and was counted as abandoned.
            let until = now_ms + params.claim_grace().as_millis() as u64;
            self.returning.note(tag, number, until);
            return Standing::Waiting { position: Some(1) };
        }
        Standing::Waiting {
            position: Some(n.saturating_sub(frontier).max(1)),
        }
    }

    /// An admitted session (class, number, counted in `old_bucket`) makes a request.
    /// Returns the bucket it is now counted in (the caller re-signs the cookie when it
    /// changed), or `None` when the cookie must not be honoured: the session was ended, or
    /// its old bucket has nothing left to move (a stale copy replayed after the real
    /// cookie moved on, or a session idle past the window). A session is moved, never
    /// added: replaying a cookie cannot raise the active count.
    ///
    /// In a fleet outage (`params.fleet`), sessions admitted by the fleet were never
    /// counted in this room's buckets: they are taken from the seed bucket, and when
    /// that is spent (the other nodes took their share) counted from now on anyway. A
    /// student let in by the fleet stays in; counting too many only slows admissions.
    pub fn touch(
        &mut self,
        params: &RoomParams,
        class: u8,
        number: u64,
        old_bucket: u64,
        now_ms: u64,
    ) -> Option<u64> {
        if self.ended.contains(class, number) {
            return None;
        }
        let cur = Self::bucket_of(params, now_ms);
        if cur != old_bucket {
            self.drop_old_buckets(params, now_ms);
            if old_bucket + (BUCKETS as u64) <= cur {
                return None;
            }
            if params.fleet.is_some() {
                // A fleet node alone counts its share of the fleet's sessions (the seed)
                // and those it moved itself. A session that moved on another node since
                // (sessions go from node to node behind a load balancer) is in that
                // node's count: counting it here again would fill every node with the
                // whole fleet's sessions and stop admissions for the outage's length.
                if self.uncount_or_seed(old_bucket) {
                    self.count_in(cur);
                }
            } else if !self.uncount(old_bucket) {
                return None;
            } else {
                self.count_in(cur);
            }
        }
        Some(cur)
    }

    /// The origin ended a session (logout): free its place now, once.
    pub fn end(&mut self, params: &RoomParams, class: u8, number: u64, bucket: u64, now_ms: u64) {
        if self.ended.contains(class, number) {
            return;
        }
        self.ended.insert(
            class,
            number,
            now_ms + params.idle_timeout.as_millis() as u64,
        );
        let cur = Self::bucket_of(params, now_ms);
        if bucket + (BUCKETS as u64) > cur && self.uncount_or_seed(bucket) {
            self.counters.ended += 1;
        }
    }

    /// The wait for `position` as a single figure or a range (see
    /// [`crate::policy::estimate`]); `None` while the speed is unknown (nothing admitted
    /// yet) or the room is paused.
    pub fn wait(&self, params: &RoomParams, position: u64, now_ms: u64) -> Option<Wait> {
        if self.paused {
            return None;
        }
        estimate(
            &self.meter.speed(),
            position,
            &params.limits(self.opened, now_ms),
        )
    }

    /// Estimated wait for `position`, from the measured frontier speed; `None` while the
    /// speed is unknown (nothing admitted yet) or the room is paused.
    pub fn eta(&self, position: u64) -> Option<Duration> {
        // (Written so that a NaN rate gives no estimate rather than a panic.)
        if self.paused || self.rate.is_nan() || self.rate < 0.01 {
            return None;
        }
        Duration::try_from_secs_f64(position as f64 / self.rate).ok()
    }
}

/// Split `budget` admissions over the class queues: classes with a share get their
/// reserved part first, the default queue the rest, and what a queue cannot use goes to
/// the others (nothing is wasted while anyone waits). Returns the total admitted.
fn distribute(queues: &mut [Queue], classes: &[ClassPolicy], budget: u64) -> u64 {
    let mut left = budget;
    let policy = |i: usize| classes.get(i).copied().unwrap_or(ClassPolicy::Default);
    // Reserved shares.
    for (i, q) in queues.iter_mut().enumerate() {
        if let ClassPolicy::Share(s) = policy(i) {
            let want = ((budget as f64) * s).ceil() as u64;
            let give = want.min(q.waiting()).min(left);
            q.frontier += give;
            left -= give;
        }
    }
    // Then everyone in class order (default first), work-conserving.
    for (i, q) in queues.iter_mut().enumerate() {
        if policy(i) == ClassPolicy::Bypass {
            continue;
        }
        let give = q.waiting().min(left);
        q.frontier += give;
        left -= give;
    }
    budget - left
}

/// Position as shown to a student: exact below 100, then rounded (never to 0).
pub fn round_position(p: u64) -> u64 {
    match p {
        0..=99 => p.max(1),
        100..=999 => p.div_ceil(10) * 10,
        _ => p.div_ceil(100) * 100,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params(active: u32, per_min: u32) -> RoomParams {
        RoomParams {
            active_users: active,
            new_users_per_minute: per_min,
            idle_timeout: Duration::from_secs(600),
            abandon_timeout: Duration::from_secs(60),
            return_grace: Duration::from_secs(900),
            poll_interval: Duration::from_secs(5),
            classes: vec![ClassPolicy::Default],
            method: Method::Fifo,
            opens_at: None,
            prequeue: Duration::ZERO,
            fleet: None,
            shuffle_key: 7,
        }
    }

    #[test]
    fn spare_capacity_means_no_queue() {
        let p = params(10, 600);
        let mut r = RoomState::new(&p, 0);
        for i in 1..=10 {
            assert!(matches!(r.arrive(&p, 0, 0), Arrival::Admit { number, .. } if number == i));
        }
        assert_eq!(r.active(), 10);
        assert_eq!(r.arrive(&p, 0, 0), Arrival::Queue { number: 11 });
        // The queue is not empty: newcomers queue behind, even once there is room.
        r.end(&p, 0, 1, 0, 0);
        assert_eq!(r.arrive(&p, 0, 0), Arrival::Queue { number: 12 });
        assert_eq!(r.tick(&p, 1000), 1);
        assert_eq!(
            r.poll(&p, 0, 12, 1000),
            Standing::Waiting { position: Some(1) }
        );
        assert!(matches!(r.poll(&p, 0, 11, 1000), Standing::Admitted { .. }));
    }

    #[test]
    fn abandoned_tickets_free_their_turn() {
        let p = params(1, 6000);
        let mut r = RoomState::new(&p, 0);
        assert!(matches!(r.arrive(&p, 0, 0), Arrival::Admit { .. }));
        for _ in 0..3 {
            r.arrive(&p, 0, 0);
        }
        // The admitted student leaves; ticket 2's owner is gone too.
        r.end(&p, 0, 1, 0, 0);
        assert_eq!(r.tick(&p, 1000), 1, "ticket 2 admitted");
        // Nobody claims it: after the grace period the next tick admits ticket 3.
        let after = 1000 + p.claim_grace().as_millis() as u64;
        assert_eq!(r.tick(&p, after), 1);
        assert_eq!(r.counters.abandoned, 1);
        assert!(matches!(
            r.poll(&p, 0, 3, after + 10),
            Standing::Admitted { .. }
        ));
    }

    #[test]
    fn a_ticket_back_after_its_turn_goes_first_once() {
        let p = params(1, 6000);
        let mut r = RoomState::new(&p, 0);
        let Arrival::Admit { bucket, .. } = r.arrive(&p, 0, 0) else {
            panic!("admitted")
        };
        for _ in 0..3 {
            r.arrive(&p, 0, 0);
        }
        // Ticket 2's phone sleeps through its turn: the grant expires, ticket 3 gets in.
        r.end(&p, 0, 1, bucket, 0);
        assert_eq!(r.tick(&p, 1000), 1);
        let t = 1000 + p.claim_grace().as_millis() as u64;
        assert_eq!(r.tick(&p, t), 1, "admissions go on while it is away");
        let Standing::Admitted { bucket: b3 } = r.poll(&p, 0, 3, t) else {
            panic!("ticket 3 let in")
        };
        // Ticket 2 wakes up to a full room: next in line, ahead of ticket 4.
        let back = t + 60_000;
        assert_eq!(
            r.poll(&p, 0, 2, back),
            Standing::Waiting { position: Some(1) }
        );
        assert!(
            r.would_queue(&p, 0, back),
            "a newcomer does not overtake it"
        );
        r.end(&p, 0, 3, b3, back);
        r.tick(&p, back + 1000);
        assert_eq!(
            r.poll(&p, 0, 4, back + 1000),
            Standing::Waiting { position: Some(1) },
            "ticket 4 waits: the free place is ticket 2's"
        );
        assert!(matches!(
            r.poll(&p, 0, 2, back + 1000),
            Standing::Admitted { .. }
        ));
        assert_eq!(r.counters.abandoned, 0, "it came back after all");
        // A copy of ticket 2 gains nothing.
        assert_eq!(r.poll(&p, 0, 2, back + 2000), Standing::Used);
        assert!(r.active() <= 1);
    }

    #[test]
    fn a_returning_ticket_that_stops_polling_frees_the_place() {
        let p = params(1, 6000);
        let mut r = RoomState::new(&p, 0);
        let Arrival::Admit { bucket, .. } = r.arrive(&p, 0, 0) else {
            panic!("admitted")
        };
        for _ in 0..3 {
            r.arrive(&p, 0, 0);
        }
        // Ticket 2 never claims its turn; ticket 3 gets in.
        r.end(&p, 0, 1, bucket, 0);
        r.tick(&p, 1000);
        let t = 1000 + p.claim_grace().as_millis() as u64;
        r.tick(&p, t);
        let Standing::Admitted { bucket: b3 } = r.poll(&p, 0, 3, t) else {
            panic!("ticket 3 let in")
        };
        // Ticket 2 comes back once to a full room, then stops polling.
        assert_eq!(r.poll(&p, 0, 2, t), Standing::Waiting { position: Some(1) });
        r.end(&p, 0, 3, b3, t);
        // Its returning place lapses; the free place goes to ticket 4.
        let later = t + p.claim_grace().as_millis() as u64 + 1;
        assert_eq!(r.tick(&p, later), 1);
        assert!(matches!(r.poll(&p, 0, 4, later), Standing::Admitted { .. }));
    }

    #[test]
    fn a_new_queue_is_estimated_from_its_first_seconds() {
        // A full room where one place frees every second: the queue moves at 1/s, and
        // its first estimates say so (an average started from zero said 6x that).
        let p = params(1, 6000);
        let mut r = RoomState::new(&p, 0);
        let Arrival::Admit { mut bucket, .. } = r.arrive(&p, 0, 0) else {
            panic!("admitted")
        };
        for _ in 0..40 {
            r.arrive(&p, 0, 0);
        }
        let mut inside = 1;
        for k in 1..=5u64 {
            let now = k * 1000;
            r.end(&p, 0, inside, bucket, now);
            assert_eq!(r.tick(&p, now), 1);
            inside += 1;
            let Standing::Admitted { bucket: b } = r.poll(&p, 0, inside, now) else {
                panic!("next in")
            };
            bucket = b;
        }
        let eta = r.eta(10).expect("an estimate").as_secs_f64();
        assert!((8.0..=12.5).contains(&eta), "10 places at 1/s: {eta} s");
    }

    #[test]
    fn a_new_queue_shows_a_range_then_one_figure() {
        // A full room where one place frees every second. Its first seconds give a
        // range around the estimate; two minutes of the same give one figure.
        let p = params(1, 6000);
        let mut r = RoomState::new(&p, 0);
        let Arrival::Admit { mut bucket, .. } = r.arrive(&p, 0, 0) else {
            panic!("admitted")
        };
        for _ in 0..200 {
            r.arrive(&p, 0, 0);
        }
        let mut inside = 1;
        let mut widths = Vec::new();
        for k in 1..=120u64 {
            let now = k * 1000;
            r.end(&p, 0, inside, bucket, now);
            assert_eq!(r.tick(&p, now), 1);
            inside += 1;
            let Standing::Admitted { bucket: b } = r.poll(&p, 0, inside, now) else {
                panic!("next in")
            };
            bucket = b;
            let w = r.wait(&p, 10, now).expect("an estimate");
            assert!(w.low <= w.estimate && w.estimate <= w.high, "{w:?}");
            assert_eq!(Some(w.estimate), r.eta(10), "the same figure as before");
            widths.push((w.high - w.low).as_secs_f64());
        }
        assert!(widths[4] > 2.0, "after 5 s, a range: {widths:?}");
        assert_eq!(widths[119], 0.0, "after 2 min, one figure: {widths:?}");
        assert!(
            widths.windows(2).all(|w| w[1] <= w[0] + 1e-9),
            "never wider as measures accumulate: {widths:?}"
        );
    }

    #[test]
    fn a_scheduled_opening_is_measured_from_the_opening() {
        // Fifty seconds of a pre-queue that may not move, then the opening at a pace of
        // 10 a second: the speed is measured from the opening, not averaged with the
        // zeros of a queue that was not allowed to move.
        let mut p = params(10_000, 600);
        p.opens_at = Some(100_000);
        p.prequeue = Duration::from_secs(60);
        let mut r = RoomState::new(&p, 0);
        for _ in 0..500 {
            assert!(matches!(r.arrive(&p, 0, 50_000), Arrival::Queue { .. }));
        }
        for k in 50..100u64 {
            assert_eq!(r.tick(&p, k * 1000), 0);
        }
        assert_eq!(r.wait(&p, 100, 99_000), None, "nothing measured before");
        for k in 100..=105u64 {
            r.tick(&p, k * 1000);
        }
        assert!(r.rate > 8.0, "10 a second and a burst: {}", r.rate);
        let w = r.wait(&p, 100, 105_000).expect("an estimate");
        assert!(w.is_range(), "five seconds measured: {w:?}");
        // The room cannot go faster than its pace: 100 places take at least
        // (100 - burst) / 10 s.
        assert!(w.low >= Duration::from_secs(5), "{w:?}");
    }

    #[test]
    fn paused_room_admits_nobody_and_has_no_eta() {
        let p = params(5, 600);
        let mut r = RoomState::new(&p, 0);
        r.paused = true;
        assert!(matches!(r.arrive(&p, 0, 0), Arrival::Queue { .. }));
        assert_eq!(r.tick(&p, 10_000), 0);
        assert_eq!(r.eta(1), None);
        r.paused = false;
        assert_eq!(r.tick(&p, 11_000), 1);
    }

    #[test]
    fn prequeue_is_shuffled_at_opening_then_fifo() {
        let mut p = params(1000, 60_000);
        p.method = Method::Random;
        p.opens_at = Some(100_000);
        p.prequeue = Duration::from_secs(60);
        let mut r = RoomState::new(&p, 0);
        assert_eq!(
            r.arrive(&p, 0, 10_000),
            Arrival::Closed,
            "before the pre-queue window"
        );
        let tickets: Vec<u64> = (0..3)
            .map(|_| match r.arrive(&p, 0, 50_000) {
                Arrival::Queue { number } => number,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            r.poll(&p, 0, tickets[0], 60_000),
            Standing::Waiting { position: None }
        );
        assert_eq!(r.tick(&p, 99_000), 0, "closed until the opening");
        r.tick(&p, 100_000);
        // Shuffled: each of the three places taken exactly once.
        let mut places: Vec<u64> = tickets
            .iter()
            .map(|t| r.effective_number(&p, 0, *t).unwrap())
            .collect();
        places.sort();
        assert_eq!(places, vec![1, 2, 3]);
        // A later arrival is numbered after the pre-queue.
        r.queues[0].frontier = 3;
        r.paused = true;
        assert_eq!(r.arrive(&p, 0, 100_500), Arrival::Queue { number: 4 });
    }

    /// The pre-queue shuffle is a permutation (no tie, no empty place) at every size,
    /// depends on the key, and is not the issue order.
    #[test]
    fn the_prequeue_shuffle_gives_each_place_once() {
        for size in [1u64, 2, 3, 5, 16, 17, 100, 1000, 4097] {
            let mut seen = vec![false; size as usize];
            for i in 1..=size {
                let place = shuffled_place(42, i, size);
                assert!((1..=size).contains(&place), "{place} of {size}");
                assert!(!seen[(place - 1) as usize], "place {place} twice ({size})");
                seen[(place - 1) as usize] = true;
            }
        }
        let order = |key| {
            (1..=1000)
                .map(|i| shuffled_place(key, i, 1000))
                .collect::<Vec<_>>()
        };
        assert_ne!(order(1), order(2), "keyed");
        let fixed = order(1)
            .iter()
            .enumerate()
            .filter(|(i, p)| *i as u64 + 1 == **p)
            .count();
        assert!(fixed < 20, "not the issue order: {fixed} places unchanged")
    }

    #[test]
    fn shares_and_bypass() {
        let mut p = params(1000, 600);
        p.classes = vec![
            ClassPolicy::Default,
            ClassPolicy::Share(0.5),
            ClassPolicy::Bypass,
        ];
        let mut r = RoomState::new(&p, 0);
        r.paused = true;
        for _ in 0..100 {
            r.arrive(&p, 0, 0);
            r.arrive(&p, 1, 0);
        }
        assert!(
            matches!(r.arrive(&p, 2, 0), Arrival::Admit { .. }),
            "bypass even when paused"
        );
        r.paused = false;
        r.tokens = 0.0;
        // 10 tokens per second at 600/min: half reserved for class 1.
        let n = r.tick(&p, 1000);
        assert_eq!(n, 10);
        assert_eq!(r.queues[1].frontier, 5);
        assert_eq!(r.queues[0].frontier, 5);
    }

    /// Redis unreachable: three nodes that followed one fleet room go on alone. Every
    /// ticket keeps its number and place, no two nodes hand out the same number, the
    /// fleet's sessions stay in, and each node keeps within its share.
    #[test]
    fn a_fleet_outage_keeps_places_numbers_and_sessions() {
        let fleet = params(30, 600);
        // The fleet: 30 inside (in bucket 0), tickets 31..=45 waiting, frontier 30.
        let t0 = 1_000_000;
        let bucket0 = t0 / fleet.bucket_ms();
        let mut nodes: Vec<(RoomParams, RoomState)> = (0..3)
            .map(|slot| {
                let mut s = RoomState::new(&fleet, 0);
                s.follow(&fleet, &[(30, 45)], &[0], true, &[4], 10, 0, false, 1.0, t0);
                let mut p = fleet.clone();
                p.active_users = 10;
                p.new_users_per_minute = 200;
                p.fleet = Some(FleetShare { slot, nodes: 3 });
                (p, s)
            })
            .collect();
        // Waiting tickets keep their place on every node.
        for (p, s) in &mut nodes {
            assert_eq!(
                s.poll(p, 0, 31, t0),
                Standing::Waiting { position: Some(1) }
            );
            assert_eq!(
                s.poll(p, 0, 45, t0),
                Standing::Waiting { position: Some(15) }
            );
        }
        // Newcomers on each node: numbered after every fleet ticket (and the margin
        // left for tickets other nodes handed out), never the same number twice.
        let mut seen = HashSet::new();
        for (i, (p, s)) in nodes.iter_mut().enumerate() {
            for _ in 0..5 {
                let Arrival::Queue { number } = s.arrive(p, 0, t0) else {
                    panic!("the room is full: newcomers queue");
                };
                assert_ne!(number & ALONE_BIT, 0, "{number} marked as handed out alone");
                let number = number & !ALONE_BIT;
                assert!(number > 49, "{number} after the fleet's tickets");
                assert_eq!(number % 3, i as u64, "interleaved by node");
                assert!(seen.insert(number), "{number} handed out twice");
            }
        }
        // Sessions the fleet let in stay in wherever they go, moved out of the seed.
        let t1 = t0 + 2 * fleet.bucket_ms();
        for (k, (p, s)) in nodes.iter_mut().enumerate() {
            for n in 0..10 {
                assert!(
                    s.touch(p, 0, (k * 10 + n) as u64, bucket0, t1).is_some(),
                    "a fleet session is not queued again"
                );
            }
            assert_eq!(s.active(), 10, "moved, not added");
        }
        // The same sessions coming through again, each with a bucket another node moved
        // it to: still ten on each node, whatever the order of the moves.
        let t2 = t1 + fleet.bucket_ms();
        for (p, s) in nodes.iter_mut() {
            for n in 0..30u64 {
                let foreign = t1 / fleet.bucket_ms() + 1 + n % 2;
                assert!(s.touch(p, 0, n, foreign, t2).is_some());
            }
            assert_eq!(
                s.active(),
                10,
                "a session moved elsewhere is not counted twice"
            );
        }
        // Ten leave through node 0: its share frees, its frontier moves at the fleet's
        // pace (three nodes' worth), it grants its own share of the turns.
        let (p, s) = &mut nodes[0];
        let cur = t1 / fleet.bucket_ms();
        for n in 0..10 {
            s.end(p, 0, n, cur, t1);
        }
        let granted = s.tick(p, t1 + 1000);
        let frontier = s.queues[0].frontier;
        assert!((1..=10).contains(&granted), "{granted}");
        assert_eq!(frontier, 30 + (3 * granted).min(s.queues[0].next - 30));
        // The first tickets in line get in, in order, up to this node's share only.
        let mut admitted = 0;
        for n in 31..=45 {
            if let Standing::Admitted { .. } = s.poll(p, 0, n, t1 + 1000) {
                admitted += 1;
            }
        }
        assert!(admitted <= 10, "within the node's share: {admitted}");
        assert!(s.active() <= 10);
        assert_eq!(
            s.poll(p, 0, 45, t1 + 1000),
            Standing::Waiting { position: Some(1) }
        );
    }

    #[test]
    fn replays_gain_nothing() {
        let p = params(2, 6000);
        let mut r = RoomState::new(&p, 0);
        let Arrival::Admit { number, bucket } = r.arrive(&p, 0, 0) else {
            panic!("admitted")
        };
        // A copy of the admitted cookie replayed later: the session moves, never adds.
        let later = p.bucket_ms() * 2;
        let moved = r.touch(&p, 0, number, bucket, later).expect("first move");
        assert_eq!(r.active(), 1);
        for _ in 0..100 {
            assert_eq!(
                r.touch(&p, 0, number, bucket, later),
                None,
                "stale copy refused"
            );
        }
        assert_eq!(r.active(), 1);
        // Logout replayed: frees one place once.
        r.arrive(&p, 0, later);
        assert_eq!(r.active(), 2);
        for _ in 0..10 {
            r.end(&p, 0, number, moved, later);
        }
        assert_eq!(r.active(), 1, "ended once, not ten times");
        assert_eq!(
            r.touch(&p, 0, number, moved, later),
            None,
            "an ended session is not honoured"
        );
        // A waiting ticket copied to many clients gets in once.
        let mut r = RoomState::new(&p, 0);
        r.arrive(&p, 0, 0);
        r.arrive(&p, 0, 0);
        let Arrival::Queue { number } = r.arrive(&p, 0, 0) else {
            panic!("queued")
        };
        r.end(&p, 0, 1, 0, 0);
        r.tick(&p, 1000);
        assert!(matches!(
            r.poll(&p, 0, number, 1000),
            Standing::Admitted { .. }
        ));
        assert_eq!(r.poll(&p, 0, number, 1001), Standing::Used);
    }

    #[test]
    fn positions_round() {
        assert_eq!(round_position(0), 1);
        assert_eq!(round_position(42), 42);
        assert_eq!(round_position(101), 110);
        assert_eq!(round_position(1234), 1300);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        /// Under any mix of arrivals, polls, departures and ticks:
        /// active sessions never exceed capacity, no ticket of a class is admitted before
        /// a smaller still-polling ticket of the same class, and abandoned tickets don't
        /// stall admission (everyone still polling is eventually admitted).
        #[test]
        fn room_invariants(
            capacity in 1u32..20,
            per_min in 60u32..6000,
            ops in proptest::collection::vec((0u8..4, 0u64..3000), 1..300),
        ) {
            let p = params(capacity, per_min);
            let mut r = RoomState::new(&p, 0);
            let mut now = 0u64;
            // (number, still polling?)
            let mut waiting: Vec<(u64, bool)> = Vec::new();
            let mut admitted_order: Vec<u64> = Vec::new();
            let mut sessions: Vec<(u64, u64)> = Vec::new();
            for (op, dt) in ops {
                now += dt;
                match op {
                    0 => match r.arrive(&p, 0, now) {
                        Arrival::Admit { bucket, number } => { sessions.push((number, bucket)); admitted_order.push(number); }
                        Arrival::Queue { number } => waiting.push((number, true)),
                        Arrival::Closed => {}
                    },
                    1 => {
                        // Some waiting student gives up.
                        if let Some(w) = waiting.iter_mut().find(|w| w.1) { w.1 = false; }
                    }
                    2 => {
                        if let Some((n, b)) = sessions.pop() { r.end(&p, 0, n, b, now); }
                    }
                    _ => { r.tick(&p, now); }
                }
                // Everyone still polling polls, in ticket order.
                waiting.sort();
                for w in waiting.iter_mut().filter(|w| w.1) {
                    if let Standing::Admitted { bucket } = r.poll(&p, 0, w.0, now) {
                        sessions.push((w.0, bucket));
                        admitted_order.push(w.0);
                        w.1 = false;
                    }
                }
                waiting.retain(|w| w.1);
                prop_assert!(r.active() <= u64::from(capacity), "active {} > capacity {capacity}", r.active());
            }
            // FIFO among those who kept polling.
            for pair in admitted_order.windows(2) {
                prop_assert!(pair[0] < pair[1], "out of order: {admitted_order:?}");
            }
            // Drain: sessions leave, time passes; every remaining poller gets in.
            for (n, b) in sessions.drain(..) { r.end(&p, 0, n, b, now); }
            for _ in 0..10_000 {
                if waiting.is_empty() { break; }
                now += 1000;
                r.tick(&p, now);
                for w in waiting.iter_mut() {
                    if let Standing::Admitted { bucket } = r.poll(&p, 0, w.0, now) {
                        r.end(&p, 0, w.0, bucket, now);
                        w.1 = false;
                    }
                }
                waiting.retain(|w| w.1);
            }
            prop_assert!(waiting.is_empty(), "stalled: {waiting:?}, state {r:?}");
        }

        /// Phones that sleep and wake (stop polling, then poll again, any time later),
        /// and copies of tickets polling too: capacity is never exceeded, no ticket is
        /// let in twice, and everyone polling in the end gets in (nobody asleep stalls
        /// the room).
        #[test]
        fn sleeping_phones_and_copies(
            capacity in 1u32..8,
            ops in proptest::collection::vec((0u8..5, 0u64..20_000), 1..200),
        ) {
            let p = params(capacity, 600);
            let mut r = RoomState::new(&p, 0);
            let mut now = 0u64;
            // (number, awake?)
            let mut waiting: Vec<(u64, bool)> = Vec::new();
            let mut sessions: Vec<(u64, u64)> = Vec::new();
            let mut admitted = HashSet::new();
            let admit = |n: u64, admitted: &mut HashSet<u64>| {
                assert!(admitted.insert(n), "ticket {n} let in twice");
            };
            for (op, dt) in ops {
                now += dt;
                match op {
                    0 => match r.arrive(&p, 0, now) {
                        Arrival::Admit { bucket, number } => { admit(number, &mut admitted); sessions.push((number, bucket)); }
                        Arrival::Queue { number } => waiting.push((number, true)),
                        Arrival::Closed => {}
                    },
                    1 => { if let Some(w) = waiting.iter_mut().find(|w| w.1) { w.1 = false; } }
                    2 => { if let Some(w) = waiting.iter_mut().find(|w| !w.1) { w.1 = true; } }
                    3 => { if let Some((n, b)) = sessions.pop() { r.end(&p, 0, n, b, now); } }
                    _ => { r.tick(&p, now); }
                }
                for w in waiting.iter_mut().filter(|w| w.1) {
                    if let Standing::Admitted { bucket } = r.poll(&p, 0, w.0, now) {
                        admit(w.0, &mut admitted);
                        sessions.push((w.0, bucket));
                        // The copy left behind on another device.
                        prop_assert_eq!(r.poll(&p, 0, w.0, now), Standing::Used);
                        w.1 = false;
                        w.0 = u64::MAX;
                    }
                }
                waiting.retain(|w| w.0 != u64::MAX);
                prop_assert!(r.active() <= u64::from(capacity), "active {} > capacity {capacity}", r.active());
            }
            // Everyone wakes; sessions leave; every ticket gets in.
            for (n, b) in sessions.drain(..) { r.end(&p, 0, n, b, now); }
            for w in waiting.iter_mut() { w.1 = true; }
            for _ in 0..10_000 {
                if waiting.is_empty() { break; }
                now += 1000;
                r.tick(&p, now);
                for w in waiting.iter_mut() {
                    if let Standing::Admitted { bucket } = r.poll(&p, 0, w.0, now) {
                        admit(w.0, &mut admitted);
                        r.end(&p, 0, w.0, bucket, now);
                        w.0 = u64::MAX;
                    }
                }
                waiting.retain(|w| w.0 != u64::MAX);
            }
            prop_assert!(waiting.is_empty(), "stalled: {waiting:?}, state {r:?}");
        }
    }
}
