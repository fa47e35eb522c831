//! The queue's speed as the room measures it, and the wait it gives a position: one
//! figure when the room has measured enough, a range ("entre 3 et 5 min") when it has not.
//!
//! The speed is a moving average of the frontier's advances per second over about 30 s
//! of a standing queue (one sample per tick, about a second apart), divided by its
//! weight so that a new queue's first estimates are not several times too long. Beside
//! it the meter keeps the average of the squared samples and the sum of the squared
//! weights: how much the admissions of the last half-minute varied, and how many
//! samples the average really rests on. Both are O(1) state.
//!
//! How sure the estimate is comes from three things the room measures, nothing guessed:
//! - the spread of the recent admission rates (a room that lets 20 in one second and 0
//!   the next is less predictable than one letting 10 in every second);
//! - how many samples the average holds (the first seconds of a queue, or of a
//!   scheduled opening, rest on a handful of ticks): the spread of the average shrinks
//!   as one over the square root of that number;
//! - the wait itself: the admissions still to come are counted over the wait, so a long
//!   wait averages more of them out than a short one.
//!
//! With `s` the standard deviation of the number admitted per second, `r` the rate, `T`
//! the seconds of measure the average rests on (effective samples × tick length) and `w`
//! the wait in seconds, the rate's relative uncertainty is `u = Z · s/r · √(1/T + 1/w)`
//! (`Z` ≈ 80 % two-sided): the first term the average's own error, the second the
//! admissions still to come. The range is `[P / (r·(1+u)), P / (r·(1−u))]` for position
//! `P`, `u` capped so the high end stays finite. Admissions are counts: while few seconds
//! are measured their variance is taken to be at least that of a Poisson count (`r` a
//! second, fading as `3r/(T+3)`), so a queue's first seconds never claim a precision they
//! have not measured. When `u` is small the range collapses to the single figure.
//!
//! The room can never go faster than its pace (`new_users_per_minute`, plus its burst)
//! nor admit anyone before a scheduled opening: the low end never promises less than
//! that.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The moving average's time constant (ms).
pub const WINDOW_MS: f64 = 30_000.0;

/// About an 80 % two-sided interval of a normal variable.
const Z: f64 = 1.28;

/// How many seconds of measure the Poisson prior on the spread counts for.
const PRIOR_SECONDS: f64 = 3.0;

/// Below this relative uncertainty the estimate is one figure.
pub const SINGLE_FIGURE: f64 = 0.15;

/// The relative uncertainty is capped here: the high end is at most `1/(1-MAX_U)` = 4
/// times the estimate (beyond that a range says nothing a pupil can use).
const MAX_U: f64 = 0.75;

/// The room's measure of its queue's speed. Serialized in the room's snapshot under
/// the names the first version used (`ema`, `ema_weight`), the new sums defaulting
/// to zero (an old snapshot reads as "few samples": a wide range at first).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SpeedMeter {
    /// Moving average of the per-second rate, started from zero.
    #[serde(default, rename = "ema")]
    sum: f64,
    /// The same of the squared rate.
    #[serde(default, rename = "ema_sq")]
    sum_sq: f64,
    /// The average's weight, `1 − (1−α)^k`: dividing by it removes the start from zero.
    #[serde(default, rename = "ema_weight")]
    weight: f64,
    /// The sum of the squared weights of the samples (`n = weight² / weight_sq`).
    #[serde(default, rename = "ema_weight_sq")]
    weight_sq: f64,
    /// Moving average of the ticks' length (seconds): samples `n` ticks long measure
    /// `n × tick` seconds of the queue.
    #[serde(default, rename = "ema_tick")]
    tick: f64,
}

/// What the meter says of the speed, for [`estimate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Speed {
    /// Frontier advances per second.
    pub rate: f64,
    /// Standard deviation of the number admitted per second over the window (measured,
    /// floored by a fading Poisson prior while few seconds are measured).
    pub spread: f64,
    /// Effective seconds of measure the average rests on (one tick's length after the
    /// first tick, about 60 s once the window is full).
    pub seconds: f64,
}

impl SpeedMeter {
    /// Forget everything: the next queue is measured afresh.
    pub fn reset(&mut self) {
        *self = SpeedMeter::default();
    }

    /// A meter that starts from a rate read elsewhere (a fleet's), as one sample.
    pub fn seeded(rate: f64) -> SpeedMeter {
        let rate = if rate.is_finite() { rate.max(0.0) } else { 0.0 };
        SpeedMeter {
            sum: rate,
            sum_sq: rate * rate,
            weight: 1.0,
            weight_sq: 1.0,
            tick: 1.0,
        }
    }

    /// One tick: `advanced` frontier places over `dt_ms`.
    pub fn record(&mut self, advanced: u64, dt_ms: u64) {
        if dt_ms == 0 {
            return;
        }
        let inst = advanced as f64 * 1000.0 / dt_ms as f64;
        let alpha = (dt_ms as f64 / WINDOW_MS).min(1.0);
        let keep = 1.0 - alpha;
        self.sum = alpha * inst + keep * self.sum;
        self.sum_sq = alpha * inst * inst + keep * self.sum_sq;
        self.weight = alpha + keep * self.weight;
        self.weight_sq = alpha * alpha + keep * keep * self.weight_sq;
        self.tick = alpha * (dt_ms as f64 / 1000.0) + keep * self.tick;
    }

    /// Frontier advances per second (0 when nothing was measured).
    pub fn rate(&self) -> f64 {
        if self.weight <= 0.0 || !self.weight.is_finite() {
            return 0.0;
        }
        let r = self.sum / self.weight;
        if r.is_finite() {
            r.max(0.0)
        } else {
            0.0
        }
    }

    /// The measured speed and how sure it is.
    pub fn speed(&self) -> Speed {
        let rate = self.rate();
        let samples = if self.weight_sq > 0.0 {
            (self.weight * self.weight / self.weight_sq).max(1.0)
        } else {
            1.0
        };
        let mean_sq = if self.weight > 0.0 {
            self.sum_sq / self.weight
        } else {
            0.0
        };
        // Ticks `tick` seconds long: a sample's rate varies `1/tick` times as much as
        // the count of a whole second does.
        let tick = if self.weight > 0.0 && self.tick > 0.0 {
            (self.tick / self.weight).clamp(0.001, 60.0)
        } else {
            1.0
        };
        let seconds = samples * tick;
        let var = (mean_sq - rate * rate).max(0.0) * tick;
        // Counts vary at least like a Poisson count (variance `rate` a second) until
        // enough seconds say otherwise: the prior counts as PRIOR_SECONDS of measure.
        let var = var.max(rate * PRIOR_SECONDS / (seconds + PRIOR_SECONDS));
        let spread = if var.is_finite() { var.sqrt() } else { 0.0 };
        Speed {
            rate,
            spread,
            seconds: if seconds.is_finite() { seconds } else { 1.0 },
        }
    }
}

/// Hard limits on the wait, from the room's settings rather than its measures.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// The fastest the frontier can move (places per second): the pace.
    pub max_rate: Option<f64>,
    /// Places the pace's burst can let in at once.
    pub burst: f64,
    /// Time left before a scheduled opening (nobody gets in before it).
    pub until_open: Duration,
}

/// A wait: `estimate` the single best figure; `low <= estimate <= high`, equal to it
/// when the room is sure enough to show one figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    pub estimate: Duration,
    pub low: Duration,
    pub high: Duration,
}

impl Wait {
    /// Whether the page should show a range rather than one figure.
    pub fn is_range(&self) -> bool {
        self.low != self.high
    }
}

/// The relative uncertainty of the rate over a wait of `wait_s` seconds.
pub fn uncertainty(speed: &Speed, wait_s: f64) -> f64 {
    if speed.rate <= 0.0 || !speed.rate.is_finite() {
        return MAX_U;
    }
    let cv = speed.spread / speed.rate;
    let u = Z * cv * (1.0 / speed.seconds.max(0.001) + 1.0 / wait_s.max(1.0)).sqrt();
    if u.is_finite() {
        u.clamp(0.0, MAX_U)
    } else {
        MAX_U
    }
}

/// The wait for `position` (1 = next). `None` while the speed is unknown (nothing
/// admitted yet), as before: the page says "estimating".
pub fn estimate(speed: &Speed, position: u64, limits: &Limits) -> Option<Wait> {
    // (Written so that a NaN rate gives no estimate rather than a panic.)
    if speed.rate.is_nan() || speed.rate < 0.01 {
        return None;
    }
    let p = position as f64;
    let secs = p / speed.rate;
    let estimate = Duration::try_from_secs_f64(secs).ok()?;
    let u = uncertainty(speed, secs);
    if u < SINGLE_FIGURE {
        return Some(Wait {
            estimate,
            low: estimate,
            high: estimate,
        });
    }
    let high = Duration::try_from_secs_f64(secs / (1.0 - u))
        .unwrap_or(estimate)
        .max(estimate);
    let mut low_s = secs / (1.0 + u);
    // Never faster than the pace allows, never before the opening.
    if let Some(max) = limits.max_rate.filter(|m| *m > 0.0 && m.is_finite()) {
        low_s = low_s.max((p - limits.burst).max(0.0) / max);
    }
    low_s = low_s.max(limits.until_open.as_secs_f64());
    let low = Duration::try_from_secs_f64(low_s)
        .unwrap_or(estimate)
        .min(estimate);
    Some(Wait {
        estimate,
        low,
        high,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meter(samples: &[u64]) -> SpeedMeter {
        let mut m = SpeedMeter::default();
        for &a in samples {
            m.record(a, 1000);
        }
        m
    }

    fn width(w: &Wait) -> f64 {
        w.high.as_secs_f64() - w.low.as_secs_f64()
    }

    #[test]
    fn a_steady_long_queue_gets_one_figure() {
        // 10 places every second for two minutes: one figure for a 3000-place queue.
        let m = meter(&[10; 120]);
        let w = estimate(&m.speed(), 3000, &Limits::default()).expect("estimate");
        assert!(!w.is_range(), "{w:?}");
        assert!((299.0..=301.0).contains(&w.estimate.as_secs_f64()), "{w:?}");
    }

    #[test]
    fn the_first_seconds_of_a_queue_give_a_range() {
        // Two seconds measured: the same speed, but a range.
        let m = meter(&[10; 2]);
        let w = estimate(&m.speed(), 3000, &Limits::default()).expect("estimate");
        assert!(w.is_range(), "{w:?}");
        assert!(w.low < w.estimate && w.estimate < w.high, "{w:?}");
    }

    #[test]
    fn an_uneven_room_gives_a_range_a_steady_one_does_not() {
        // The same average speed (5/s), measured as long; one lets 20 in every fourth
        // second, the other 5 every second.
        let uneven = meter(&[20, 0, 0, 0].repeat(30));
        let steady = meter(&[5; 120]);
        let l = Limits::default();
        let wu = estimate(&uneven.speed(), 300, &l).expect("estimate");
        let ws = estimate(&steady.speed(), 300, &l).expect("estimate");
        assert!(wu.is_range(), "{wu:?}");
        assert!(!ws.is_range(), "{ws:?}");
        assert!((wu.estimate.as_secs_f64() - ws.estimate.as_secs_f64()).abs() < 6.0);
    }

    #[test]
    fn the_low_end_respects_the_pace_and_the_opening() {
        let m = meter(&[10; 3]);
        let free = estimate(&m.speed(), 300, &Limits::default()).expect("estimate");
        let paced = Limits {
            max_rate: Some(10.0),
            burst: 0.0,
            until_open: Duration::ZERO,
        };
        let w = estimate(&m.speed(), 300, &paced).expect("estimate");
        assert!(free.low.as_secs_f64() < 29.0, "{free:?}");
        assert!((w.low.as_secs_f64() - 30.0).abs() < 0.01, "{w:?}");
        let opening = Limits {
            until_open: Duration::from_secs(60),
            ..Limits::default()
        };
        let w = estimate(&m.speed(), 300, &opening).expect("estimate");
        assert!(w.low >= Duration::from_secs(30).min(w.estimate), "{w:?}");
    }

    #[test]
    fn unknown_or_broken_speeds_give_no_estimate() {
        let l = Limits::default();
        assert_eq!(estimate(&SpeedMeter::default().speed(), 10, &l), None);
        let nan = Speed {
            rate: f64::NAN,
            spread: 1.0,
            seconds: 1.0,
        };
        assert_eq!(estimate(&nan, 10, &l), None);
        let inf = Speed {
            rate: 5.0,
            spread: f64::INFINITY,
            seconds: f64::NAN,
        };
        let w = estimate(&inf, 10, &l).expect("estimate");
        assert!(w.low <= w.estimate && w.estimate <= w.high);
        // An old snapshot (no squared sums) reads as little measured: a range.
        let old: SpeedMeter =
            serde_json::from_str(r#"{"ema": 2.0, "ema_weight": 1.0}"#).expect("old snapshot");
        assert!((old.rate() - 2.0).abs() < 1e-9);
        assert!(estimate(&old.speed(), 100, &l)
            .expect("estimate")
            .is_range());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Whatever was measured, `low <= estimate <= high`, the estimate is the
        /// position over the rate, and the low end honours the pace and the opening.
        #[test]
        fn the_estimate_lies_in_its_range(
            samples in proptest::collection::vec((0u64..200, 1u64..5000), 1..200),
            position in 1u64..1_000_000,
            pace in proptest::option::of(1u32..100_000),
            burst in 0u32..1000,
            until_open in 0u64..100_000,
        ) {
            let mut m = SpeedMeter::default();
            for (a, dt) in samples {
                m.record(a, dt);
            }
            let limits = Limits {
                max_rate: pace.map(|p| f64::from(p) / 60.0),
                burst: f64::from(burst),
                until_open: Duration::from_millis(until_open),
            };
            if let Some(w) = estimate(&m.speed(), position, &limits) {
                prop_assert!(w.low <= w.estimate && w.estimate <= w.high, "{:?}", w);
                let secs = position as f64 / m.rate();
                prop_assert!((w.estimate.as_secs_f64() - secs).abs() <= 1e-6 * secs.max(1.0));
                prop_assert!(w.high.as_secs_f64() <= 4.0 * secs * (1.0 + 1e-9) + 1e-6);
            } else {
                prop_assert!(m.rate() < 0.01);
            }
        }

        /// A room that keeps admitting the same way measures its speed better and
        /// better: for the same position, the range after more of the same pattern is
        /// never wider, and it ends as one figure when the pattern is steady enough.
        #[test]
        fn ranges_shrink_as_measurements_accumulate(
            pattern in proptest::collection::vec(0u64..50, 1..10),
            position in 1u64..100_000,
            first in 1usize..20,
            more in 1usize..40,
        ) {
            prop_assume!(pattern.iter().any(|a| *a > 0));
            let limits = Limits::default();
            let after = |periods: usize| {
                let mut m = SpeedMeter::default();
                for _ in 0..periods {
                    for &a in &pattern {
                        m.record(a, 1000);
                    }
                }
                estimate(&m.speed(), position, &limits)
            };
            let (Some(early), Some(late)) = (after(first), after(first + more)) else {
                return Ok(());
            };
            prop_assert!(
                width(&late) <= width(&early) * (1.0 + 1e-9) + 1e-6,
                "early {:?}, late {:?}", early, late
            );
        }
    }
}
