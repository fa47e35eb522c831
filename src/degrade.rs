//! Degradation at run time: the level state that outlives configs, the evaluation loop
//! that turns measured signals into a level every 500 ms, the adaptive concurrency limit
//! of each origin, and the metrics. Decisions are in `policy::degrade`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::clock::{now_ms, rfc3339_ms as until_text};
use crate::config::Config;
use crate::policy::degrade::{Change, Degradation, Degrader, Signals};

/// State shared by every config: the level machine and what the hot path reads.
pub struct DegradeState {
    degrader: Mutex<Degrader>,
    /// Features off right now (read per request on feature routes).
    pub disabled: ArcSwap<Vec<String>>,
    pub level: AtomicUsize,
    rate_factor: AtomicU64,
    room_factor: AtomicU64,
    /// The current level serves stored copies whatever their age (`serve_stale`).
    serve_stale: AtomicBool,
    /// The forced level came from the file (`force_level`), not the admin API.
    forced_by_config: AtomicBool,
    /// Features forced by the file (`force_features`), not the admin API.
    features_by_config: Mutex<Vec<String>>,
}

impl Default for DegradeState {
    fn default() -> Self {
        DegradeState {
            degrader: Mutex::new(Degrader::new(now_ms())),
            disabled: ArcSwap::from_pointee(Vec::new()),
            level: AtomicUsize::new(0),
            rate_factor: AtomicU64::new(1f64.to_bits()),
            room_factor: AtomicU64::new(1f64.to_bits()),
            serve_stale: AtomicBool::new(false),
            forced_by_config: AtomicBool::new(false),
            features_by_config: Mutex::new(Vec::new()),
        }
    }
}

impl DegradeState {
    pub fn lock(&self) -> MutexGuard<'_, Degrader> {
        self.degrader.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Factor on rate limits at the current level (1.0 = as written).
    #[inline]
    pub fn rate_factor(&self) -> f64 {
        f64::from_bits(self.rate_factor.load(Ordering::Relaxed))
    }

    /// Factor on waiting-room capacity at the current level.
    #[inline]
    pub fn room_factor(&self) -> f64 {
        f64::from_bits(self.room_factor.load(Ordering::Relaxed))
    }

    /// Whether the current level serves stored copies whatever their age.
    #[inline]
    pub fn serve_stale(&self) -> bool {
        self.serve_stale.load(Ordering::Relaxed)
    }

    #[inline]
    pub fn is_disabled(&self, feature: &str) -> bool {
        self.disabled.load().iter().any(|f| f == feature)
    }

    /// Recompute what the hot path reads from the level machine, and the metrics.
    pub fn publish(&self, d: &Degradation, now: u64) {
        let g = self.lock();
        let level = g.level(now).min(d.levels.len().saturating_sub(1));
        let off: Vec<String> = d
            .features
            .iter()
            .filter(|f| !g.feature_on(&d.levels, f, now))
            .cloned()
            .collect();
        drop(g);
        let lv = d.levels.get(level);
        self.level.store(level, Ordering::Relaxed);
        self.serve_stale
            .store(lv.is_some_and(|l| l.serve_stale), Ordering::Relaxed);
        self.rate_factor.store(
            lv.map(|l| l.rate_factor).unwrap_or(1.0).to_bits(),
            Ordering::Relaxed,
        );
        self.room_factor.store(
            lv.map(|l| l.room_factor).unwrap_or(1.0).to_bits(),
            Ordering::Relaxed,
        );
        let m = crate::metrics::get();
        m.degradation_level.set(level as i64);
        for (i, l) in d.levels.iter().enumerate() {
            m.degradation_level_info
                .with_label_values(&[&l.name])
                .set(i64::from(i == level));
        }
        for f in &d.features {
            m.feature_enabled
                .with_label_values(&[f])
                .set(i64::from(!off.contains(f)));
        }
        self.disabled.store(Arc::new(off));
    }

    /// Fleet mode: follow the other nodes' highest automatic level.
    pub fn set_fleet_floor(&self, d: &Degradation, floor: usize) {
        let now = now_ms();
        let floor = floor.min(d.levels.len().saturating_sub(1));
        let change = self.lock().set_fleet_floor(floor, now);
        if let Some(c) = change {
            record_change(d, &c, "fleet");
        }
        self.publish(d, now);
    }

    /// Apply the file's `force_level` and `force_features` after a load. A level or
    /// feature the file no longer forces goes back to automatic; an expiry already past
    /// forces nothing.
    pub fn apply_config(&self, d: &Degradation) {
        let now = now_ms();
        let name = |i: usize| d.levels.get(i).map(|l| l.name.as_str()).unwrap_or("?");
        let mut features = Vec::new();
        let change = {
            let mut g = self.lock();
            let level = match d.force_level {
                Some((l, Some(until))) if until <= now => {
                    log::warn!(
                        "force_level {} until {}: that time has passed, not forced",
                        name(l),
                        until_text(until)
                    );
                    None
                }
                other => other,
            };
            let change = match level {
                Some((l, until)) => {
                    self.forced_by_config.store(true, Ordering::Relaxed);
                    g.force(Some(l), until, now, "the config file")
                }
                None if self.forced_by_config.swap(false, Ordering::Relaxed) => {
                    g.force(None, None, now, "the config file")
                }
                None => None,
            };
            let mut by_config = self
                .features_by_config
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let mut now_forced = Vec::new();
            for (f, on, until) in &d.force_features {
                if until.is_some_and(|u| u <= now) {
                    log::warn!(
                        "force_features {f} until {}: that time has passed, not forced",
                        until.map(until_text).unwrap_or_default()
                    );
                    continue;
                }
                if g.force_feature(f, Some(*on), *until) {
                    features.push((f.clone(), Some(*on), *until));
                }
                now_forced.push(f.clone());
            }
            for f in by_config.iter().filter(|f| !now_forced.contains(f)) {
                if g.force_feature(f, None, None) {
                    features.push((f.clone(), None, None));
                }
            }
            *by_config = now_forced;
            change
        };
        if let Some(c) = change {
            record_change(d, &c, "forced");
        }
        for (f, on, until) in features {
            record_feature_change(&f, on, until, "the config file");
        }
        self.publish(d, now);
    }

    /// Drop the feature overrides whose expiry has come, logged and counted.
    fn expire_features(&self, now: u64) {
        let gone = self.lock().expire_features(now);
        for (f, on) in gone {
            log::warn!(
                "feature {f}: forced {} expired, it follows the level again",
                if on { "on" } else { "off" }
            );
            crate::metrics::get()
                .feature_changes
                .with_label_values(&[&f, "expired"])
                .inc();
        }
    }

    /// Force a level from the admin API (`None`: back to automatic).
    pub fn force(
        &self,
        d: &Degradation,
        level: Option<usize>,
        for_: Option<Duration>,
    ) -> Option<Change> {
        let now = now_ms();
        let until = for_.map(|f| now + f.as_millis() as u64);
        self.forced_by_config.store(false, Ordering::Relaxed);
        let c = self.lock().force(level, until, now, "the admin API");
        if let Some(c) = &c {
            record_change(d, c, "forced");
        }
        self.publish(d, now);
        c
    }

    /// Force a feature on/off from the admin API (`None`: follow the level).
    pub fn force_feature(
        &self,
        d: &Degradation,
        feature: &str,
        on: Option<bool>,
        for_: Option<Duration>,
    ) {
        let now = now_ms();
        let until = for_.map(|f| now + f.as_millis() as u64);
        self.lock().force_feature(feature, on, until);
        self.features_by_config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|f| f != feature);
        record_feature_change(feature, on, until, "the admin API");
        self.publish(d, now);
    }
}

fn record_feature_change(feature: &str, on: Option<bool>, until: Option<u64>, who: &str) {
    log::warn!(
        "feature {feature} {} by {who}{}",
        match on {
            Some(true) => "forced on",
            Some(false) => "forced off",
            None => "back to automatic",
        },
        until
            .map(|u| format!(" until {}", until_text(u)))
            .unwrap_or_default()
    );
    crate::metrics::get()
        .feature_changes
        .with_label_values(&[feature, "forced"])
        .inc();
}

fn record_change(d: &Degradation, c: &Change, cause: &str) {
    let name = |i: usize| d.levels.get(i).map(|l| l.name.as_str()).unwrap_or("?");
    log::warn!(
        "degradation level {} -> {} ({cause}): {}",
        name(c.from),
        name(c.to),
        c.reason
    );
    crate::metrics::get()
        .degradation_changes
        .with_label_values(&[name(c.from), name(c.to), cause])
        .inc();
}

/// Adaptive concurrency limits of every origin (every 100 ms: a surge fills an origin in
/// well under a second).
pub fn adapt_limits(cfg: &Config) {
    let now = now_ms();
    for o in &cfg.origins {
        o.shared.adapt(o.adaptive.as_ref(), o.max_inflight, now);
    }
}

/// One evaluation: measure every origin, step the level.
pub fn evaluate(cfg: &Config, state: &DegradeState) {
    let now = now_ms();
    let mut worst = Signals::default();
    for o in &cfg.origins {
        let (s, measured, _) = o.shared.measure(now, o.max_inflight);
        let m = crate::metrics::get();
        m.origin_signal_outliers
            .with_label_values(&[&o.name])
            .set(f64::from(measured.client_outliers.count_ones()));
        m.origin_latency_p95
            .with_label_values(&[&o.name])
            .set(s.p95_ms / 1000.0);
        m.origin_error_ratio
            .with_label_values(&[&o.name])
            .set(s.error_rate);
        m.origin_inflight_ratio
            .with_label_values(&[&o.name])
            .set(s.inflight_ratio);
        worst = Signals::worst(worst, s);
    }
    worst.queue_depth = cfg
        .rooms
        .iter()
        .map(|r| r.shared.lock().waiting() as f64)
        .sum();
    let Some(d) = &cfg.degradation else {
        return;
    };
    state.expire_features(now);
    let change = state.lock().step(&d.levels, &worst, now, d.hold);
    if let Some(c) = &change {
        let cause = if c.reason == "forced level expired" {
            "forced"
        } else {
            "auto"
        };
        record_change(d, c, cause);
    }
    state.publish(d, now);
    for r in &cfg.rooms {
        r.shared.set_factor(state.room_factor());
    }
}
