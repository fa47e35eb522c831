//! A waiting room that sizes itself from the origin it guards (`active_users: auto`,
//! `new_users_per_minute: auto`). Pure: the caller measures the guarded origin about once
//! a second and feeds [`Sizer::step`]; the room reads [`Sizer::capacity`] and
//! [`Sizer::pace`] at its next tick. All times are unix milliseconds passed in, so tests
//! drive a fake clock. The law and why it is stable: `docs/room-sizing.md`.
//!
//! In short, each step classifies the origin, like the adaptive limit does
//! (`concurrency.rs`): against its own unloaded latency and the knee, not raw latency.
//! - **congested** (errors over 5%; requests in flight at 95% of the limit in force; or,
//!   once the origin is loaded (in flight over half its limit, or no limit), median
//!   latency over `tolerance` × its unloaded latency *with* a queue to explain it: Vegas's
//!   estimate `in flight × (1 − unloaded / p50)` at least [`QUEUED_CONGESTED`]): the
//!   capacity drops at once to 90% of the sessions inside (`min(capacity, 0.9 × active)`,
//!   idempotent while the sessions stay, so it never ratchets down faster than sessions
//!   leave), and the pace halves (at most once per [`PACE_CUT_EVERY_MS`]). Nobody is
//!   thrown out: a capacity under the sessions inside only stops admissions. Latency far
//!   under the limit is not judged: it is then ecluse's own delay (a CPU-starved proxy
//!   reads answers late) or too small to matter; a real slowdown raises in flight (Little's
//!   law) into the judged band.
//! - **headroom** (errors under 1%, latency under [`HEADROOM_LATENCY`] of the tolerated
//!   ratio or in flight at most half the limit, in flight under 80% of the limit): the
//!   pace recovers additively; the capacity grows only when it is in use and people wait,
//!   not within [`CALM_AFTER_CUT_MS`] of a cut, at most once per [`SETTLE_MS`], by half the
//!   measured headroom (the sessions the origin would serve at 80% of its limit, from its
//!   measured per-session load), at least one and at most half the capacity (the whole
//!   capacity, a slow start, while every origin is under half its limit).
//! - **between the two**: nothing moves (the hysteresis band where the room settles).

use serde::Serialize;

/// Fewest exchanges a measure needs to be judged (fewer: nothing moves).
pub const MIN_SAMPLES: u64 = 8;
/// Error rate over which the origin is congested.
pub const ERRORS_CONGESTED: f64 = 0.05;
/// Error rate under which the origin may have headroom.
pub const ERRORS_CALM: f64 = 0.01;
/// In flight / limit at which the origin is saturated (requests wait in ecluse).
pub const SATURATED: f64 = 0.95;
/// In flight / limit under which the origin has headroom.
pub const UNSATURATED: f64 = 0.8;
/// In flight / limit at or under which the origin is lightly loaded: its latency is not
/// judged (a rise there is the machine's noise, not the origin's queue), and the room may
/// grow fast (up to [`SLOW_START_GROWTH`]).
pub const LIGHT: f64 = 0.5;
/// Fewest requests queueing at the origin (Vegas's estimate, `in flight × (1 − unloaded /
/// p50)`) for its latency to count as congestion: one or two slow answers among a handful
/// in flight are noise (a CPU-starved proxy, a slow page), not a queue. Vegas's α floor
/// (`concurrency.rs`).
pub const QUEUED_CONGESTED: f64 = 3.0;
/// Largest increase while every guarded origin is lightly loaded ([`LIGHT`]): the room
/// may double, like a slow start (the measured headroom still bounds the step).
pub const SLOW_START_GROWTH: f64 = 1.0;
/// Share of the tolerated latency excess under which the origin has headroom: with a
/// tolerance of 2 (twice the unloaded latency is congested), 1.5 and under is headroom.
pub const HEADROOM_LATENCY: f64 = 0.5;
/// Sessions inside after a cut, as a share of those inside when the origin congested.
pub const CUT: f64 = 0.9;
/// Shortest time between two capacity increases (their effect must show first).
pub const SETTLE_MS: u64 = 2_000;
/// No increase for this long after a cut: the measures must reflect the lighter load
/// (the latency window is a few seconds) before the room grows again.
pub const CALM_AFTER_CUT_MS: u64 = 10_000;
/// Shortest time between two halvings of the pace.
pub const PACE_CUT_EVERY_MS: u64 = 5_000;
/// Share of the measured headroom an increase takes.
pub const GAIN: f64 = 0.5;
/// Largest increase, as a share of the capacity (the measured headroom usually says
/// less: half of what remains).
pub const MAX_GROWTH: f64 = 0.5;
/// Increase without an adaptive limit to size it: a tenth of the capacity.
pub const BLIND_GROWTH: f64 = 0.1;
/// Admissions per minute at full pace, as a share of the capacity: the room can refill
/// itself in 5 s. The pace sets how fast a room grows from its lower bound (each increase
/// must be filled before the next counts as in use): about ×1.5 every 3 to 5 s, so a room
/// with no numbers reaches a few hundred sessions within half a minute of a surge. The
/// measured headroom, not the pace, bounds each step.
pub const PACE_PER_CAPACITY: f64 = 12.0;
/// Lowest pace factor after cuts, and what each calm step gives back.
pub const PACE_FLOOR: f64 = 0.1;
pub const PACE_RECOVERY: f64 = 0.1;
/// Without an unloaded latency from the adaptive limit, the room's own baseline (the
/// lowest median seen) drifts up this much of the gap per step, so an origin that became
/// slower for good is not taken as congested for ever (half-life of about six minutes).
pub const BASELINE_DRIFT: f64 = 0.002;

/// Bounds of one automatic number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Bounds {
    pub min: u32,
    pub max: u32,
}

impl Bounds {
    fn clamp(&self, x: f64) -> f64 {
        x.clamp(
            f64::from(self.min.max(1)),
            f64::from(self.max.max(self.min).max(1)),
        )
    }
}

/// Settings of a room sized automatically.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub capacity: Bounds,
    pub pace: Bounds,
    /// Median latency over the unloaded one at which the origin is congested (the
    /// origin's `adaptive_concurrency.tolerance`, else 2).
    pub tolerance: f64,
}

/// What the guarded origin did lately (a few seconds), and what the room holds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Exchanges finished in the measure.
    pub exchanges: u64,
    /// Exchanges finished per second.
    pub throughput: f64,
    /// Their median latency, ms.
    pub p50_ms: f64,
    /// The origin's unloaded median latency (ms), when its adaptive limit measured it.
    pub baseline_ms: Option<f64>,
    /// Share of failed exchanges, 0..1.
    pub error_rate: f64,
    /// Requests in flight to the origin.
    pub inflight: f64,
    /// The origin's concurrency limit in force (adaptive or `max_inflight`), if any.
    pub limit: Option<f64>,
    /// Sessions inside the room (active and admitted-not-yet-claimed).
    pub active: u64,
    /// Of `active`, those admitted but not back yet (their holder's next poll): they
    /// bring no load yet, so the load per session is measured without them (a room that
    /// just doubled would otherwise read half the load per session and overshoot).
    pub pending: u64,
    /// Tickets waiting.
    pub waiting: u64,
}

/// Why the automatic numbers moved last (a fixed set: a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Starting point (the lower bounds).
    Start,
    /// The origin's latency rose over the tolerated ratio.
    Latency,
    /// The origin's error rate rose over 5%.
    Errors,
    /// Requests in flight reached the origin's concurrency limit.
    Saturated,
    /// The origin has room and people wait.
    Headroom,
    /// The calm origin gave the pace back.
    Recovered,
    /// New bounds from a reload.
    Bounds,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::Start,
        Reason::Latency,
        Reason::Errors,
        Reason::Saturated,
        Reason::Headroom,
        Reason::Recovered,
        Reason::Bounds,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Start => "start",
            Reason::Latency => "latency",
            Reason::Errors => "errors",
            Reason::Saturated => "saturated",
            Reason::Headroom => "headroom",
            Reason::Recovered => "recovered",
            Reason::Bounds => "bounds",
        }
    }
}

/// How the origin looks in one step.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    Congested(Reason),
    Headroom,
    Hold,
}

/// One change of the automatic numbers, for the log and the metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub capacity_from: u32,
    pub capacity_to: u32,
    pub pace_from: u32,
    pub pace_to: u32,
    pub reason: Reason,
    /// What was measured, in words (for the log and `/admin/state`).
    pub detail: String,
    pub at_ms: u64,
}

/// The automatic sizing of one room (outlives reloads).
#[derive(Debug, Clone, PartialEq)]
pub struct Sizer {
    capacity: f64,
    pace_factor: f64,
    /// The room's own unloaded latency per guarded origin (lowest median seen, drifting
    /// up slowly).
    own_baseline: Vec<(String, f64)>,
    last_increase_ms: u64,
    last_cut_ms: Option<u64>,
    last_pace_cut_ms: Option<u64>,
    last: Option<Change>,
}

impl Sizer {
    /// A room starts at its lower bounds and grows from what it measures.
    pub fn new(p: &Params, now_ms: u64) -> Sizer {
        let capacity = p.capacity.clamp(0.0);
        let mut s = Sizer {
            capacity,
            pace_factor: 1.0,
            own_baseline: Vec::new(),
            last_increase_ms: 0,
            last_cut_ms: None,
            last_pace_cut_ms: None,
            last: None,
        };
        s.last = Some(Change {
            capacity_from: 0,
            capacity_to: s.capacity(p),
            pace_from: 0,
            pace_to: s.pace(p),
            reason: Reason::Start,
            detail: "lower bounds".into(),
            at_ms: now_ms,
        });
        s
    }

    /// Sessions the room lets in at once now.
    pub fn capacity(&self, p: &Params) -> u32 {
        p.capacity.clamp(self.capacity.floor()) as u32
    }

    /// Admissions per minute now.
    pub fn pace(&self, p: &Params) -> u32 {
        let raw = self.capacity * PACE_PER_CAPACITY * self.pace_factor;
        p.pace.clamp(raw.round()) as u32
    }

    /// The last change (the start when none yet).
    pub fn last_change(&self) -> Option<&Change> {
        self.last.as_ref()
    }

    /// The unloaded latency in use for origin `name`, ms: the adaptive limit's when it
    /// measured one, else the room's own.
    pub fn baseline_ms(&self, name: &str, s: &Sample) -> Option<f64> {
        s.baseline_ms.filter(|b| *b > 0.0).or_else(|| {
            self.own_baseline
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, b)| *b)
        })
    }

    /// New bounds from a reload: the numbers are clamped into them at once.
    pub fn rebound(&mut self, p: &Params, now_ms: u64) -> Option<Change> {
        let (c0, p0) = (self.capacity(p), self.pace(p));
        let before = (self.capacity.floor() as u32, c0);
        self.capacity = p.capacity.clamp(self.capacity);
        if before.0 == before.1 {
            return None;
        }
        let c = Change {
            capacity_from: before.0,
            capacity_to: self.capacity(p),
            pace_from: p0,
            pace_to: self.pace(p),
            reason: Reason::Bounds,
            detail: format!("bounds {}..{}", p.capacity.min, p.capacity.max),
            at_ms: now_ms,
        };
        self.last = Some(c.clone());
        Some(c)
    }

    fn judge(&self, p: &Params, name: &str, s: &Sample) -> (Verdict, String) {
        let util = s.limit.filter(|l| *l > 0.0).map(|l| s.inflight / l);
        // Too few answers to judge the latency: a nearly idle origin (the hung one is
        // caught before); the error rate is then over too few to say anything either.
        let measured = s.exchanges >= MIN_SAMPLES && s.p50_ms > 0.0;
        let ratio = self
            .baseline_ms(name, s)
            .filter(|b| *b > 0.0 && measured)
            .map(|b| s.p50_ms / b);
        let error_rate = if measured { s.error_rate } else { 0.0 };
        let tol = if p.tolerance > 1.0 { p.tolerance } else { 2.0 };
        let detail = format!(
            "{name}{}p50 {:.0} ms ({}), errors {:.1}%, in flight {:.0}{}, {:.1} req/s",
            if name.is_empty() { "" } else { ": " },
            s.p50_ms,
            ratio
                .map(|r| format!("{r:.2}x unloaded"))
                .unwrap_or_else(|| "no baseline yet".into()),
            s.error_rate * 100.0,
            s.inflight,
            s.limit
                .map(|l| format!(" of limit {l:.0}"))
                .unwrap_or_default(),
            s.throughput
        );
        // Far under its limit, the origin is not what slows answers down: the latency
        // ecluse measures also holds its own delays (a CPU-starved proxy on a loaded
        // machine, measured at 3x the origin's own time with 6 of 100 in flight),
        // heavier pages, a slow client. Latency is judged only when the origin is loaded
        // (or has no limit to say how loaded it is). A real slowdown of the origin shows
        // anyway: at the same request rate, in flight grows with the latency (Little's
        // law) and reaches this band, then the limit.
        let light = util.is_some_and(|u| u <= LIGHT);
        // Vegas's estimate of the requests queueing at the origin rather than being
        // served (`concurrency.rs`): the excess latency must be explained by a queue.
        let queued = ratio.map(|r| s.inflight * (1.0 - 1.0 / r).max(0.0));
        if error_rate > ERRORS_CONGESTED {
            return (Verdict::Congested(Reason::Errors), detail);
        }
        if !light && ratio.is_some_and(|r| r > tol) && queued.is_some_and(|q| q >= QUEUED_CONGESTED)
        {
            return (Verdict::Congested(Reason::Latency), detail);
        }
        if util.is_some_and(|u| u >= SATURATED) {
            return (Verdict::Congested(Reason::Saturated), detail);
        }
        // Lightly loaded, latency up to the tolerance does not hold growth back; over it,
        // noise or not, the room does not grow on that measure (it holds, no cut): a
        // second of doubt costs one step, a wrong increase costs errors.
        let calm_latency =
            ratio.is_none_or(|r| r <= 1.0 + (tol - 1.0) * HEADROOM_LATENCY || (light && r <= tol));
        if error_rate <= ERRORS_CALM && calm_latency && util.is_none_or(|u| u <= UNSATURATED) {
            return (Verdict::Headroom, detail);
        }
        (Verdict::Hold, detail)
    }

    /// The sessions the origin would serve with requests in flight at 80% of its limit,
    /// from the load the sessions inside bring now (Little's law: in flight per session
    /// = its request rate × the latency); `None` without a limit or a load to measure.
    fn target(s: &Sample) -> Option<f64> {
        let limit = s.limit.filter(|l| *l > 0.0)?;
        let clicking = s.active.saturating_sub(s.pending);
        if clicking == 0 || s.inflight <= 0.0 {
            return None;
        }
        let per_session = s.inflight / clicking as f64;
        Some(UNSATURATED * limit / per_session)
    }

    /// One step (about once a second) for a room guarding one origin.
    pub fn step(&mut self, p: &Params, s: &Sample, now_ms: u64) -> Option<Change> {
        self.step_all(p, &[("", *s)], now_ms)
    }

    /// One step for a room whose routes go to several origins (named): the room is as
    /// large as the most loaded of them allows. Congested when any is; headroom only when
    /// all have some, by the smallest headroom. `active` and `waiting` are the room's, the
    /// same in every sample.
    pub fn step_all(
        &mut self,
        p: &Params,
        samples: &[(&str, Sample)],
        now_ms: u64,
    ) -> Option<Change> {
        let (_, first) = samples.first()?;
        let (active, waiting) = (first.active, first.waiting);
        // Sessions admitted but not back yet bring no load: an increase counts as in use
        // (and the next may come) only once its sessions showed up.
        let claimed = active.saturating_sub(first.pending);
        for (name, s) in samples {
            let measured = s.exchanges >= MIN_SAMPLES && s.p50_ms > 0.0;
            if !measured && s.inflight >= MIN_SAMPLES as f64 {
                // Requests held open and few answers: an origin that hangs. Nothing
                // grows, nothing is judged on so little.
                return None;
            }
            if measured {
                // The room's own unloaded latency: the lowest median seen, drifting up.
                match self.own_baseline.iter_mut().find(|(n, _)| n == name) {
                    None => self.own_baseline.push((name.to_string(), s.p50_ms)),
                    Some((_, b)) if s.p50_ms <= *b => *b = s.p50_ms,
                    Some((_, b)) => *b += (s.p50_ms - *b) * BASELINE_DRIFT,
                }
            }
        }
        // The worst verdict: congested (first found) > hold > headroom.
        let mut verdict = Verdict::Headroom;
        let mut detail = String::new();
        for (name, s) in samples {
            let (v, d) = self.judge(p, name, s);
            let worse = match (verdict, v) {
                (Verdict::Congested(_), _) => false,
                (_, Verdict::Congested(_)) => true,
                (Verdict::Headroom, Verdict::Hold) => true,
                _ => false,
            };
            if worse || detail.is_empty() {
                detail = d;
            }
            if worse {
                verdict = v;
            }
        }
        let (c0, p0) = (self.capacity(p), self.pace(p));
        let reason = match verdict {
            Verdict::Congested(why) => {
                // At once, down to what the origin carries now minus a margin: the
                // sessions inside stay, admissions stop until they are fewer.
                let inside = active as f64 * CUT;
                self.capacity = p.capacity.clamp(self.capacity.min(inside.floor()));
                if self
                    .last_pace_cut_ms
                    .is_none_or(|t| now_ms.saturating_sub(t) >= PACE_CUT_EVERY_MS)
                {
                    self.pace_factor = (self.pace_factor * 0.5).max(PACE_FLOOR);
                    self.last_pace_cut_ms = Some(now_ms);
                }
                self.last_cut_ms = Some(now_ms);
                why
            }
            Verdict::Headroom => {
                self.pace_factor = (self.pace_factor + PACE_RECOVERY).min(1.0);
                let in_use = claimed as f64 >= self.capacity.floor() * 0.9;
                let calm = self
                    .last_cut_ms
                    .is_none_or(|t| now_ms.saturating_sub(t) >= CALM_AFTER_CUT_MS);
                let settled = now_ms.saturating_sub(self.last_increase_ms) >= SETTLE_MS;
                if waiting > 0 && in_use && calm && settled {
                    let cap = self.capacity.floor().max(1.0);
                    let target = samples
                        .iter()
                        .filter_map(|(_, s)| Self::target(s))
                        .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.min(t))));
                    let headroom = target
                        .map(|t| (t - cap) * GAIN)
                        .unwrap_or(cap * BLIND_GROWTH);
                    // Far from every limit, the room may double (a slow start): the
                    // measured headroom still bounds the step.
                    let light = samples.iter().all(|(_, s)| {
                        s.limit
                            .filter(|l| *l > 0.0)
                            .is_some_and(|l| s.inflight / l <= LIGHT)
                    });
                    let most = if light { SLOW_START_GROWTH } else { MAX_GROWTH };
                    let step = headroom.clamp(1.0, (cap * most).max(1.0));
                    self.capacity = p.capacity.clamp(cap + step);
                    self.last_increase_ms = now_ms;
                    Reason::Headroom
                } else {
                    Reason::Recovered
                }
            }
            // Neither: the capacity holds; the pace comes back (the capacity bounds
            // admissions anyway), so a room settled in the band admits at full pace
            // again as sessions leave.
            Verdict::Hold => {
                self.pace_factor = (self.pace_factor + PACE_RECOVERY).min(1.0);
                Reason::Recovered
            }
        };
        let (c1, p1) = (self.capacity(p), self.pace(p));
        if (c0, p0) == (c1, p1) {
            return None;
        }
        let c = Change {
            capacity_from: c0,
            capacity_to: c1,
            pace_from: p0,
            pace_to: p1,
            reason,
            detail,
            at_ms: now_ms,
        };
        self.last = Some(c.clone());
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params {
            capacity: Bounds {
                min: 10,
                max: 100_000,
            },
            pace: Bounds {
                min: 10,
                max: 100_000,
            },
            tolerance: 2.0,
        }
    }

    /// A simulated origin: `servers` requests served at once, each in `service_ms` when
    /// unloaded; sessions each send `per_session` requests a second. Latency follows a
    /// knee (flat, then steep near saturation), a backlog builds over saturation, and
    /// requests waiting longer than `timeout_ms` fail. Its adaptive limit is the Vegas
    /// knee (in flight at twice the unloaded latency).
    #[derive(Debug, Clone)]
    struct Origin {
        servers: f64,
        service_ms: f64,
        per_session: f64,
        timeout_ms: f64,
        backlog: f64,
    }

    impl Origin {
        fn new(servers: f64) -> Origin {
            Origin {
                servers,
                service_ms: 100.0,
                per_session: 0.2,
                timeout_ms: 5_000.0,
                backlog: 0.0,
            }
        }

        /// Requests a second it serves.
        fn mu(&self) -> f64 {
            self.servers * 1000.0 / self.service_ms
        }

        /// Sessions it serves within twice its unloaded latency (its healthy capacity).
        fn healthy_sessions(&self) -> f64 {
            // latency = s (1 + 0.1 ρ/(1-ρ)) = 2s at ρ = 10/11.
            self.mu() * (10.0 / 11.0) / self.per_session
        }

        /// One second with `active` sessions inside.
        fn second(&mut self, active: f64) -> Sample {
            let lambda = active * self.per_session;
            let mu = self.mu();
            let rho = lambda / mu;
            self.backlog = (self.backlog + lambda - mu).max(0.0);
            let queueing = if rho < 0.99 {
                0.1 * rho / (1.0 - rho)
            } else {
                9.9
            };
            let latency = self.service_ms * (1.0 + queueing) + self.backlog / mu * 1000.0;
            let error_rate = if latency > self.timeout_ms { 0.5 } else { 0.0 };
            let served = lambda.min(mu + self.backlog);
            let inflight = served * latency / 1000.0;
            Sample {
                exchanges: served as u64,
                throughput: served,
                p50_ms: latency,
                baseline_ms: None,
                error_rate,
                inflight,
                limit: Some(2.0 * mu * 10.0 / 11.0 * self.service_ms / 1000.0),
                active: active as u64,
                pending: 0,
                waiting: 0,
            }
        }
    }

    /// A room in front: an endless queue, sessions lasting `session_s` on average.
    struct Sim {
        origin: Origin,
        sizer: Sizer,
        p: Params,
        active: f64,
        now: u64,
        session_s: f64,
        caps: Vec<u32>,
        actives: Vec<f64>,
        errors: Vec<f64>,
        admitted_while_congested: u32,
        /// The machine's noise: every `.0` seconds the latency ecluse measures is `.1`
        /// times the origin's (a CPU-starved proxy), and so are the requests it counts in
        /// flight (Little's law: answers read late are still in flight for ecluse).
        noise: Option<(u64, f64)>,
    }

    impl Sim {
        fn new(servers: f64) -> Sim {
            let p = params();
            Sim {
                origin: Origin::new(servers),
                sizer: Sizer::new(&p, 0),
                p,
                active: 0.0,
                now: 0,
                session_s: 600.0,
                caps: Vec::new(),
                actives: Vec::new(),
                errors: Vec::new(),
                admitted_while_congested: 0,
                noise: None,
            }
        }

        fn run(&mut self, secs: u64) {
            for _ in 0..secs {
                self.now += 1000;
                let mut s = self.origin.second(self.active);
                if let Some((every, x)) = self.noise {
                    if (self.now / 1000) % every == 0 {
                        s.p50_ms *= x;
                        s.inflight *= x;
                    }
                }
                s.waiting = 1_000_000;
                self.sizer.step(&self.p, &s, self.now);
                let cap = f64::from(self.sizer.capacity(&self.p));
                let pace = f64::from(self.sizer.pace(&self.p)) / 60.0;
                self.active -= self.active / self.session_s;
                let admit = (cap - self.active).clamp(0.0, pace);
                if admit > 0.0 && (s.error_rate > 0.0 || s.p50_ms > 2.0 * 100.0) {
                    self.admitted_while_congested += 1;
                }
                self.active += admit;
                self.caps.push(cap as u32);
                self.actives.push(self.active);
                self.errors.push(s.error_rate);
            }
        }

        /// Direction changes of the capacity over the last `secs` seconds.
        fn sign_changes(&self, secs: usize) -> usize {
            let c = &self.caps[self.caps.len() - secs..];
            let dirs: Vec<i8> = c
                .windows(2)
                .filter_map(|w| match w[1].cmp(&w[0]) {
                    std::cmp::Ordering::Greater => Some(1),
                    std::cmp::Ordering::Less => Some(-1),
                    std::cmp::Ordering::Equal => None,
                })
                .collect();
            dirs.windows(2).filter(|w| w[0] != w[1]).count()
        }

        fn mean_active(&self, secs: usize) -> f64 {
            let a = &self.actives[self.actives.len() - secs..];
            a.iter().sum::<f64>() / a.len() as f64
        }
    }

    #[test]
    fn grows_to_the_origin_and_settles_without_errors() {
        let mut sim = Sim::new(50.0);
        sim.run(900);
        let healthy = sim.origin.healthy_sessions();
        let used = sim.mean_active(300);
        assert!(
            used >= 0.9 * healthy,
            "uses {used:.0} of {healthy:.0} healthy sessions"
        );
        let peak = sim.actives.iter().cloned().fold(0.0, f64::max);
        assert!(
            peak <= 1.15 * healthy,
            "overshoot: {peak:.0} of {healthy:.0}"
        );
        assert!(sim.errors.iter().all(|e| *e == 0.0), "no errors");
        assert!(
            sim.sign_changes(300) <= 2,
            "oscillates: {:?}",
            &sim.caps[600..]
        );
    }

    #[test]
    fn half_the_origin_lost_then_back() {
        let mut sim = Sim::new(50.0);
        sim.run(900);
        let full = sim.origin.healthy_sessions();
        // A server dies: half the capacity.
        sim.origin.servers = 25.0;
        let before = sim.admitted_while_congested;
        let cap_before = *sim.caps.last().unwrap_or(&0);
        sim.run(5);
        assert!(
            *sim.caps.last().unwrap_or(&u32::MAX) < cap_before,
            "capacity cut at once"
        );
        assert!(
            sim.sizer.pace(&sim.p) < (f64::from(cap_before) * PACE_PER_CAPACITY) as u32,
            "pace cut at once"
        );
        sim.run(1200);
        let half = sim.origin.healthy_sessions();
        let used = sim.mean_active(300);
        assert!(
            used >= 0.9 * half && used <= 1.1 * half,
            "uses {used:.0} of {half:.0} healthy sessions"
        );
        assert!(
            sim.admitted_while_congested - before <= 3,
            "admitted while the origin was overloaded {} times",
            sim.admitted_while_congested - before
        );
        assert!(sim.sign_changes(300) <= 2, "oscillates");
        // Recovery.
        sim.origin.servers = 50.0;
        sim.run(900);
        let used = sim.mean_active(300);
        assert!(used >= 0.9 * full, "back to {used:.0} of {full:.0}");
        assert_eq!(sim.sizer.pace_factor, 1.0, "full pace again");
    }

    #[test]
    fn a_lower_capacity_never_counts_below_the_bounds_and_respects_the_max() {
        let mut p = params();
        p.capacity = Bounds { min: 50, max: 80 };
        p.pace = Bounds { min: 5, max: 30 };
        let mut s = Sizer::new(&p, 0);
        assert_eq!(s.capacity(&p), 50);
        let calm = Sample {
            exchanges: 100,
            throughput: 100.0,
            p50_ms: 50.0,
            baseline_ms: Some(50.0),
            error_rate: 0.0,
            inflight: 1.0,
            limit: Some(100.0),
            active: 50,
            pending: 0,
            waiting: 10,
        };
        for t in 1..100 {
            // The room fills what it is given.
            let now = Sample {
                active: u64::from(s.capacity(&p)),
                ..calm
            };
            s.step(&p, &now, t * 1000);
        }
        assert_eq!(s.capacity(&p), 80, "grows to max, not beyond");
        assert!(s.pace(&p) <= 30);
        let bad = Sample {
            error_rate: 0.5,
            active: 10,
            ..calm
        };
        s.step(&p, &bad, 200_000);
        assert_eq!(s.capacity(&p), 50, "never under min");
        assert_eq!(s.last_change().map(|c| c.reason), Some(Reason::Errors));
        // Bounds narrowed by a reload.
        p.capacity = Bounds { min: 10, max: 20 };
        s.rebound(&p, 201_000);
        assert_eq!(s.capacity(&p), 20);
    }

    #[test]
    fn nothing_moves_without_measures_or_without_people_waiting() {
        let p = params();
        let mut s = Sizer::new(&p, 0);
        let idle = Sample::default();
        assert_eq!(s.step(&p, &idle, 1000), None);
        let calm_no_queue = Sample {
            exchanges: 100,
            throughput: 100.0,
            p50_ms: 50.0,
            baseline_ms: Some(50.0),
            limit: Some(100.0),
            inflight: 5.0,
            active: 10,
            waiting: 0,
            ..Sample::default()
        };
        for t in 2..100 {
            s.step(&p, &calm_no_queue, t * 1000);
        }
        assert_eq!(s.capacity(&p), 10, "does not grow while nobody waits");
    }

    #[test]
    fn a_cut_does_not_throw_out_and_is_idempotent() {
        let p = params();
        let mut s = Sizer::new(&p, 0);
        s.capacity = 1000.0;
        // 100 answers a second in 500 ms: 50 in flight (Little's law), 40 of them queueing.
        let slow = Sample {
            exchanges: 100,
            throughput: 100.0,
            p50_ms: 500.0,
            baseline_ms: Some(100.0),
            inflight: 50.0,
            active: 800,
            waiting: 10,
            ..Sample::default()
        };
        let c = s.step(&p, &slow, 1000);
        assert_eq!(c.map(|c| c.reason), Some(Reason::Latency));
        assert_eq!(s.capacity(&p), 720);
        // The same sessions inside, still slow: no further cut of the capacity.
        s.step(&p, &slow, 2000);
        assert_eq!(s.capacity(&p), 720);
        // Saturation counts as congestion too.
        let full = Sample {
            p50_ms: 100.0,
            inflight: 99.0,
            limit: Some(100.0),
            active: 700,
            ..slow
        };
        assert_eq!(
            s.step(&p, &full, 3000).map(|c| c.reason),
            Some(Reason::Saturated)
        );
        assert_eq!(s.capacity(&p), 630);
    }

    #[test]
    fn latency_far_under_the_limit_is_the_machines_noise() {
        // Measured on the loaded 2-core machine of the quick surge: p50 3.4x the
        // unloaded latency with 14 of 100 requests in flight and 8 answers a second: the
        // origin answers in its own time, the debug proxy reads the answers late.
        let p = params();
        let mut s = Sizer::new(&p, 0);
        let noisy = Sample {
            exchanges: 24,
            throughput: 8.0,
            p50_ms: 778.0,
            baseline_ms: Some(228.0),
            inflight: 14.0,
            limit: Some(100.0),
            active: 10,
            waiting: 500,
            ..Sample::default()
        };
        let c = s.step(&p, &noisy, 5000);
        assert_eq!(c, None, "no cut (and no growth on a doubtful second)");
        assert_eq!(s.capacity(&p), 10);
        // The next calm second, it grows.
        let calm = Sample {
            p50_ms: 228.0,
            inflight: 4.0,
            ..noisy
        };
        s.step(&p, &calm, 6000);
        assert!(s.capacity(&p) > 10, "the room grows: {}", s.capacity(&p));
        // Past half the limit, the same latency is the origin's queue: a cut.
        let loaded = Sample {
            inflight: 60.0,
            active: u64::from(s.capacity(&p)),
            ..noisy
        };
        assert_eq!(
            s.step(&p, &loaded, 7000).map(|c| c.reason),
            Some(Reason::Latency)
        );
    }

    #[test]
    fn a_slow_answer_without_a_queue_is_not_congestion() {
        // No limit to say how loaded the origin is: the latency counts only when a queue
        // explains it (Vegas's estimate, at least three requests waiting).
        let p = params();
        let mut s = Sizer::new(&p, 0);
        s.capacity = 100.0;
        let one_slow = Sample {
            exchanges: 20,
            throughput: 2.0,
            p50_ms: 300.0,
            baseline_ms: Some(100.0),
            inflight: 1.0,
            active: 80,
            waiting: 10,
            ..Sample::default()
        };
        let c = s.step(&p, &one_slow, 1000);
        assert!(
            c.as_ref().is_none_or(|c| !matches!(
                c.reason,
                Reason::Latency | Reason::Saturated | Reason::Errors
            )),
            "{c:?}"
        );
        assert_eq!(s.capacity(&p), 100);
        // Ten in flight at three times the unloaded latency: seven wait, a cut.
        let queue = Sample {
            inflight: 10.0,
            ..one_slow
        };
        assert_eq!(
            s.step(&p, &queue, 2000).map(|c| c.reason),
            Some(Reason::Latency)
        );
        assert_eq!(s.capacity(&p), 72);
    }

    #[test]
    fn far_under_the_limit_the_room_doubles() {
        let p = params();
        let mut s = Sizer::new(&p, 0);
        let calm = Sample {
            exchanges: 30,
            throughput: 10.0,
            p50_ms: 200.0,
            baseline_ms: Some(200.0),
            inflight: 2.0,
            limit: Some(100.0),
            active: 10,
            waiting: 500,
            ..Sample::default()
        };
        s.step(&p, &calm, 5000);
        assert_eq!(s.capacity(&p), 20, "a slow start: x2 far under the limit");
        // Past half the limit, half the capacity at most (and half the headroom).
        let busy = Sample {
            inflight: 60.0,
            active: 20,
            ..calm
        };
        s.step(&p, &busy, 5000 + SETTLE_MS);
        assert!(s.capacity(&p) <= 30, "{}", s.capacity(&p));
    }

    #[test]
    fn sessions_not_back_yet_do_not_dilute_the_load_per_session() {
        // 80 inside, 8 of them admitted a moment ago and not back yet: the 60 in flight
        // are the other 72's (0.83 each), so the origin would serve 0.8 x 100 / 0.83 = 96
        // at 80% of its limit: a step of (96 - 80) / 2 = 8 (counting the 8 as loaded:
        // 0.75 each, 107 sessions, a step of 13).
        let p = params();
        let mut s = Sizer::new(&p, 0);
        s.capacity = 80.0;
        let fresh = Sample {
            exchanges: 60,
            throughput: 20.0,
            p50_ms: 200.0,
            baseline_ms: Some(200.0),
            inflight: 60.0,
            limit: Some(100.0),
            active: 80,
            pending: 8,
            waiting: 500,
            ..Sample::default()
        };
        s.step(&p, &fresh, 5000);
        assert_eq!(s.capacity(&p), 88);
    }

    #[test]
    fn an_increase_waits_for_its_sessions_to_show_up() {
        // Measured in the quick surge: 80 -> 160 -> 320 in two seconds, the second step
        // before the first 80 newcomers were back from their queue page; then 503s.
        let p = params();
        let mut s = Sizer::new(&p, 0);
        s.capacity = 160.0;
        let half_back = Sample {
            exchanges: 60,
            throughput: 20.0,
            p50_ms: 200.0,
            baseline_ms: Some(200.0),
            inflight: 16.0,
            limit: Some(100.0),
            active: 160,
            pending: 80,
            waiting: 500,
            ..Sample::default()
        };
        s.step(&p, &half_back, 5000);
        assert_eq!(s.capacity(&p), 160, "not in use yet");
        let back = Sample {
            pending: 0,
            ..half_back
        };
        s.step(&p, &back, 6000);
        assert!(s.capacity(&p) > 160, "then it grows");
    }

    #[test]
    fn latency_spikes_of_the_machine_do_not_hold_a_light_room_back() {
        // A large origin (healthy for ~2,300 sessions) and a room bounded at 200: in
        // flight stays far under the limit even when every other second the proxy reads
        // answers three times late.
        let mut sim = Sim::new(50.0);
        sim.p.capacity.max = 200;
        sim.noise = Some((2, 3.0));
        sim.run(60);
        assert_eq!(
            sim.sizer.capacity(&sim.p),
            200,
            "grew to its bound within a minute: {:?}",
            sim.caps
        );
        assert!(
            sim.caps.windows(2).all(|w| w[1] >= w[0]),
            "never cut on noise: {:?}",
            sim.caps
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(24))]
            /// Whatever the origin's size and the sessions' load, and wherever it loses
            /// half its capacity: the room converges to ≥ 90% of what remains, without
            /// errors for those inside once settled, and without oscillating.
            #[test]
            fn converges_on_any_origin(servers in 20.0f64..400.0, per_session in 0.05f64..1.0, service in 20.0f64..400.0, session_s in 300.0f64..1800.0) {
                let mut sim = Sim::new(servers);
                sim.origin.per_session = per_session;
                sim.origin.service_ms = service;
                sim.session_s = session_s;
                sim.run(1200);
                let healthy = sim.origin.healthy_sessions().max(10.0);
                let used = sim.mean_active(300);
                prop_assert!(used >= 0.9 * healthy.min(100_000.0), "uses {used:.0} of {healthy:.0}");
                let peak = sim.actives.iter().cloned().fold(0.0, f64::max);
                prop_assert!(peak <= 1.2 * healthy + 10.0, "overshoot {peak:.0} of {healthy:.0}");
                prop_assert!(sim.sign_changes(300) <= 2, "oscillates");
                sim.origin.servers = servers / 2.0;
                sim.run(4 * session_s as u64);
                let half = sim.origin.healthy_sessions().max(10.0);
                let used = sim.mean_active(300);
                prop_assert!(used >= 0.9 * half && used <= 1.1 * half + 10.0, "uses {used:.0} of {half:.0}");
                prop_assert!(sim.sign_changes(300) <= 2, "oscillates after the loss");
                prop_assert!(sim.errors[sim.errors.len() - 300..].iter().all(|e| *e == 0.0));
            }

            /// A busy machine reads the answers late (latency and in flight `noise` times
            /// the origin's, one second in `every`) while the room stays far under the
            /// origin's limit: the room never cuts and grows to its bound.
            #[test]
            fn noise_far_under_the_limit_never_cuts(servers in 20.0f64..400.0, per_session in 0.05f64..1.0, service in 20.0f64..400.0, noise in 1.5f64..4.0, every in 2u64..6) {
                let mut sim = Sim::new(servers);
                sim.origin.per_session = per_session;
                sim.origin.service_ms = service;
                sim.noise = Some((every, noise));
                // Sessions whose requests, read `noise` times late, stay at 40% of the limit.
                let limit = 2.0 * sim.origin.mu() * 10.0 / 11.0 * service / 1000.0;
                let bound = 0.4 * limit / (per_session * service / 1000.0 * noise);
                sim.p.capacity.max = (bound.floor() as u32).clamp(20, 100_000);
                sim.run(600);
                prop_assert_eq!(sim.sizer.capacity(&sim.p), sim.p.capacity.max, "{:?}", &sim.caps[..60]);
                prop_assert!(sim.caps.windows(2).all(|w| w[1] >= w[0]), "cut on noise");
            }
        }
    }
}
