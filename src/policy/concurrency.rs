//! Adaptive concurrency limit per origin (TCP Vegas family, with a slow start and a
//! latency probe as in BBR's ProbeRTT). Pure: the caller feeds it what the origin did
//! since the last update (every 100 ms) and stores the limit it returns.
//!
//! The origin's **unloaded latency** (`baseline`) is the p50 of a window in which few
//! requests were in flight (at most `min`, or 4): the first windows of the slow start, a
//! quiet moment, or a probe. From it and the current p50, Vegas estimates how many
//! requests are queueing at the origin rather than being served:
//! `queue = limit × (1 − baseline / p50)`.
//!
//! - **Start**: the limit starts at the hard maximum (nothing is refused that the origin
//!   was configured to take). Quiet windows teach the unloaded speed. If the first busy
//!   window comes before any quiet one (the surge arrives with ecluse's start), a probe
//!   measures it, then a **slow start** grows the limit from `min` ×1.5 per window while
//!   the origin keeps up (queue under β): the knee is found in about a second.
//! - **Steady**: queue under α and the limit in use → +log10(limit) (at least 1); queue
//!   over β → −log10(limit) (at least 1). α = 3·log10(limit), β = 6·log10(limit), at
//!   least 3 and 6 (Netflix concurrency-limits' Vegas defaults).
//! - **Too slow**: p50 over `tolerance × baseline` (or over the declared `target_p50`) →
//!   the limit drops in proportion at once (`limit × allowed / p50 × 0.9`); more than 5% of
//!   exchanges failing → ×0.8.
//! - **Probe**: when the baseline is older than 30 s and the origin is busy, the limit goes
//!   to `min` for 400 ms to measure it again (about 1% of throughput), then comes back
//!   where it was.
//!
//! The limit stays between `min` and the hard `max` (`max_inflight`).

/// Adaptive concurrency settings of an origin.
#[derive(Debug, Clone)]
pub struct Adaptive {
    pub min: usize,
    pub max: usize,
    pub tolerance: f64,
    /// Declared p50 latency target, ms.
    pub target_p50_ms: Option<f64>,
}

/// Settings (from `adaptive_concurrency` and `max_inflight`).
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub min: usize,
    pub max: usize,
    pub tolerance: f64,
    pub target_p50_ms: Option<f64>,
}

/// What the origin did since the last update.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    /// Exchanges that finished.
    pub n: usize,
    /// Of which failed (connect errors, time-outs, 5xx).
    pub errors: usize,
    /// Their median latency, ms.
    pub p50_ms: f64,
    /// Most requests in flight at once during the window.
    pub peak_inflight: usize,
}

/// Fewest exchanges a window needs to be judged; fewer are carried into the next one.
pub const MIN_SAMPLES: usize = 8;
const PROBE_EVERY_MS: u64 = 30_000;
const PROBE_FOR_MS: u64 = 400;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    SlowStart,
    Steady,
    /// Measuring the unloaded latency at `min` until `until_ms`, then back to `resume`
    /// (or to a slow start from `min` when `resume` is `None`).
    Probe {
        until_ms: u64,
        resume: Option<usize>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Controller {
    limit: usize,
    phase: Phase,
    /// Unloaded p50 (ms) and when it was measured.
    baseline: Option<(f64, u64)>,
}

impl Controller {
    pub fn new(p: &Params) -> Controller {
        Controller {
            limit: p.max.max(1),
            phase: Phase::Steady,
            baseline: None,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The unloaded p50 in ms, once measured.
    pub fn baseline_ms(&self) -> Option<f64> {
        self.baseline.map(|b| b.0)
    }

    /// Judge one window; returns the new limit. A window with fewer than
    /// [`MIN_SAMPLES`] exchanges only moves a probe on: the caller keeps its samples.
    pub fn update(&mut self, p: &Params, now_ms: u64, w: &Window) -> usize {
        let lo = floor(p);
        self.limit = self.limit.clamp(lo, p.max.max(1));
        if let Phase::Probe { until_ms, resume } = self.phase {
            if w.n >= MIN_SAMPLES && w.peak_inflight <= light(p) {
                self.baseline = Some((w.p50_ms, now_ms));
            }
            if now_ms >= until_ms {
                (self.limit, self.phase) = match resume {
                    Some(l) => (l.clamp(lo, p.max.max(1)), Phase::Steady),
                    None => (lo, Phase::SlowStart),
                };
            }
            return self.limit;
        }
        if w.n < MIN_SAMPLES {
            return self.limit;
        }
        // Unloaded speed: a window with few requests in flight.
        if w.peak_inflight <= light(p) {
            let fresher = self.baseline.is_none_or(|(b, at)| {
                w.p50_ms <= b || now_ms.saturating_sub(at) > 2 * PROBE_EVERY_MS
            });
            if fresher {
                self.baseline = Some((w.p50_ms, now_ms));
            }
        }
        let used = w.peak_inflight * 10 >= self.limit * 8;
        let err = w.errors as f64 / w.n as f64;
        let next = if err > 0.05 {
            self.phase = Phase::Steady;
            (self.limit as f64 * 0.8) as usize
        } else if let Some(t) = p.target_p50_ms.filter(|t| w.p50_ms > *t) {
            self.phase = Phase::Steady;
            (self.limit as f64 * t / w.p50_ms * 0.9) as usize
        } else if let Some((base, at)) = self.baseline {
            let allowed = p.tolerance * base;
            if w.p50_ms > allowed {
                self.phase = Phase::Steady;
                (self.limit as f64 * allowed / w.p50_ms * 0.9) as usize
            } else if self.phase == Phase::Steady
                && now_ms.saturating_sub(at) > PROBE_EVERY_MS
                && self.limit > lo
            {
                self.phase = Phase::Probe {
                    until_ms: now_ms + PROBE_FOR_MS,
                    resume: Some(self.limit),
                };
                lo
            } else {
                let l = self.limit as f64;
                let queue = l * (1.0 - base / w.p50_ms).max(0.0);
                let log = l.log10().max(1.0);
                let (alpha, beta) = ((3.0 * log).max(3.0), (6.0 * log).max(6.0));
                match self.phase {
                    Phase::SlowStart if queue >= beta => {
                        self.phase = Phase::Steady;
                        self.limit
                    }
                    Phase::SlowStart if used => (l * 1.5).ceil() as usize,
                    _ if queue > beta => self.limit.saturating_sub(log as usize),
                    _ if queue < alpha && used => self.limit + log as usize,
                    _ => self.limit,
                }
            }
        } else if w.peak_inflight > light(p) {
            // Busy before the unloaded speed is known: measure it, then slow start.
            self.phase = Phase::Probe {
                until_ms: now_ms + PROBE_FOR_MS,
                resume: None,
            };
            lo
        } else {
            self.limit
        };
        self.limit = next.clamp(lo, p.max.max(1));
        self.limit
    }
}

/// The lowest limit: `min`, never above `max`, never 0.
fn floor(p: &Params) -> usize {
    p.min.min(p.max).max(1)
}

/// In-flight count under which a window shows the origin's unloaded speed.
fn light(p: &Params) -> usize {
    floor(p).max(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params {
            min: 4,
            max: 32,
            tolerance: 2.0,
            target_p50_ms: None,
        }
    }

    /// The bench's simulated ENT: 20 ms at rest, +2 ms per request in flight past 8.
    fn latency(inflight: usize) -> f64 {
        20.0 + 2.0 * inflight.saturating_sub(8) as f64
    }

    /// A surge that keeps the limit full: `steps` windows of 100 ms.
    fn surge(c: &mut Controller, p: &Params, from_ms: u64, steps: usize) -> Vec<usize> {
        (0..steps)
            .map(|i| {
                let l = c.limit();
                let w = Window {
                    n: 40,
                    errors: 0,
                    p50_ms: latency(l),
                    peak_inflight: l,
                };
                c.update(p, from_ms + 100 * i as u64, &w)
            })
            .collect()
    }

    #[test]
    fn a_surge_at_full_load_finds_the_knee_without_ever_seeing_the_origin_idle() {
        let p = params();
        let mut c = Controller::new(&p);
        assert_eq!(c.limit(), 32, "nothing refused before anything is known");
        let limits = surge(&mut c, &p, 0, 30);
        // The first busy window starts a probe at `min` (4 in flight), which measures the
        // unloaded speed…
        assert_eq!(limits[0], 4, "{limits:?}");
        assert_eq!(c.baseline_ms(), Some(20.0));
        // …then slow start reaches the knee within about a second…
        let first_high = limits.iter().position(|&l| l >= 14).expect("grew");
        assert!(first_high <= 10, "{limits:?}");
        // …and settles where latency is at most the tolerance (2 × 20 ms), never at the
        // hard maximum of 32 (68 ms at this origin).
        let tail = &limits[15..];
        assert!(tail.iter().all(|&l| (12..=18).contains(&l)), "{limits:?}");
        assert!(tail.iter().all(|&l| latency(l) <= 40.0), "{limits:?}");
        assert!(limits.iter().all(|&l| l < 32), "{limits:?}");
    }

    #[test]
    fn a_quiet_origin_is_never_limited_and_teaches_the_unloaded_speed() {
        let p = params();
        let mut c = Controller::new(&p);
        for i in 0..50 {
            let w = Window {
                n: 20,
                errors: 0,
                p50_ms: 20.0,
                peak_inflight: 2,
            };
            c.update(&p, i * 100, &w);
        }
        assert_eq!(c.baseline_ms(), Some(20.0));
        assert_eq!(
            c.limit(),
            32,
            "a quiet origin is never limited below its maximum"
        );
        // Then the surge: the first busy window is judged against the known speed and the
        // limit drops in proportion at once, no probe needed.
        let w = Window {
            n: 40,
            errors: 0,
            p50_ms: latency(32),
            peak_inflight: 32,
        };
        let l = c.update(&p, 5_100, &w);
        assert!((14..=18).contains(&l), "{l}");
    }

    #[test]
    fn too_few_samples_change_nothing() {
        let p = params();
        let mut c = Controller::new(&p);
        surge(&mut c, &p, 0, 20);
        let before = c.clone();
        let w = Window {
            n: MIN_SAMPLES - 1,
            errors: MIN_SAMPLES - 1,
            p50_ms: 500.0,
            peak_inflight: 4,
        };
        c.update(&p, 100, &w);
        assert_eq!(c, before);
    }

    #[test]
    fn errors_and_a_declared_target_shrink_the_limit() {
        let p = params();
        let mut c = Controller::new(&p);
        surge(&mut c, &p, 0, 20);
        let before = c.limit();
        let w = Window {
            n: 40,
            errors: 10,
            p50_ms: 20.0,
            peak_inflight: before,
        };
        assert_eq!(c.update(&p, 5_000, &w), (before as f64 * 0.8) as usize);
        let p2 = Params {
            target_p50_ms: Some(25.0),
            ..params()
        };
        let mut c = Controller::new(&p2);
        let limits = surge(&mut c, &p2, 0, 30);
        assert!(
            limits[15..].iter().all(|&l| latency(l) <= 30.0),
            "target 25 ms: {limits:?}"
        );
    }

    #[test]
    fn an_origin_turning_slow_brings_the_limit_down_at_once() {
        let p = params();
        let mut c = Controller::new(&p);
        surge(&mut c, &p, 0, 20);
        let l = c.limit();
        // The origin becomes 4× slower (a heavy page, a GC pause).
        let w = Window {
            n: 40,
            errors: 0,
            p50_ms: latency(l) * 4.0,
            peak_inflight: l,
        };
        let next = c.update(&p, 3_000, &w);
        assert!(next <= l / 3, "{l} -> {next}");
        assert!(next >= 4);
    }

    #[test]
    fn the_baseline_is_probed_again_every_30_s_and_the_limit_comes_back() {
        let p = params();
        let mut c = Controller::new(&p);
        surge(&mut c, &p, 0, 20);
        let settled = c.limit();
        // 30 s later, still at full load: a probe at `min`.
        let limits = surge(&mut c, &p, 31_000, 10);
        let probe_at = limits.iter().position(|&l| l == 4).expect("a probe");
        assert!(matches!(c.phase(), Phase::Steady), "{:?}", c.phase());
        // It lasts about 400 ms, then the limit resumes near where it was.
        let back = limits[probe_at..]
            .iter()
            .position(|&l| l > 4)
            .expect("came back");
        assert!((3..=6).contains(&back), "{limits:?}");
        assert!(c.limit().abs_diff(settled) <= 2, "{settled} -> {limits:?}");
        // The origin got faster meanwhile: the probe learnt it.
        let mut c2 = c.clone();
        let l = c2.limit();
        let fast = Window {
            n: 40,
            errors: 0,
            p50_ms: 10.0,
            peak_inflight: 4,
        };
        c2.update(&p, 70_000, &fast);
        assert_eq!(c2.baseline_ms(), Some(10.0));
        assert!(c2.limit() <= l);
    }

    #[test]
    fn stays_within_min_and_max_even_when_they_change() {
        let p = params();
        let mut c = Controller::new(&p);
        surge(&mut c, &p, 0, 20);
        let tight = Params { max: 6, ..params() };
        let l = c.update(
            &tight,
            2_100,
            &Window {
                n: 40,
                errors: 0,
                p50_ms: 20.0,
                peak_inflight: 6,
            },
        );
        assert!(l <= 6);
        let odd = Params {
            min: 50,
            max: 10,
            ..params()
        };
        let mut c = Controller::new(&odd);
        assert_eq!(c.limit(), 10);
        surge(&mut c, &odd, 0, 10);
        assert_eq!(c.limit(), 10);
        let l = c.update(
            &odd,
            0,
            &Window {
                n: 40,
                errors: 40,
                p50_ms: 1000.0,
                peak_inflight: 10,
            },
        );
        assert_eq!(l, 10);
    }
}
