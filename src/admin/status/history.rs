//! The status page's memory of the last minutes: a ring of samples taken every
//! [`EVERY`] from `/admin/state` itself, so the charts and the numbers beside them come
//! from one source. Bounded: [`KEEP`] samples, each a few numbers per room and origin
//! (both bounded by the config).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

/// How often a sample is taken.
pub const EVERY: Duration = Duration::from_secs(2);
/// How many are kept: 150 × 2 s, the last five minutes.
pub const KEEP: usize = 150;

/// One room at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomPoint {
    pub name: String,
    pub waiting: f64,
    pub inside: f64,
}

/// One origin at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct OriginPoint {
    pub name: String,
    pub inflight: f64,
    pub max_inflight: f64,
    pub p95_ms: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Unix time in ms.
    pub at_ms: u64,
    /// The degradation level's index (0: the first level); None without degradation.
    pub level: Option<f64>,
    pub rooms: Vec<RoomPoint>,
    pub origins: Vec<OriginPoint>,
}

impl Sample {
    /// The figures of one `/admin/state` document (missing fields read as 0).
    pub fn from_state(at_ms: u64, state: &Value) -> Sample {
        let num = |v: &Value| v.as_f64().unwrap_or(0.0);
        let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
        let signals = list(&state["signals"]);
        Sample {
            at_ms,
            level: state["degradation"]["level_index"].as_f64(),
            rooms: list(&state["rooms"])
                .iter()
                .map(|r| RoomPoint {
                    name: r["name"].as_str().unwrap_or_default().to_string(),
                    waiting: num(&r["waiting"]),
                    inside: num(&r["active_users"]),
                })
                .collect(),
            origins: list(&state["origins"])
                .iter()
                .map(|o| {
                    let name = o["name"].as_str().unwrap_or_default().to_string();
                    let p95 = signals
                        .iter()
                        .find(|s| s["origin"].as_str() == Some(name.as_str()))
                        .map(|s| num(&s["p95_latency_ms"]))
                        .unwrap_or(0.0);
                    OriginPoint {
                        name,
                        inflight: num(&o["inflight"]),
                        max_inflight: num(&o["max_inflight"]),
                        p95_ms: p95,
                    }
                })
                .collect(),
        }
    }
}

/// The ring of samples.
#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    pub fn push(&self, s: Sample) {
        let mut q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        while q.len() >= KEEP {
            q.pop_front();
        }
        q.push_back(s);
    }

    /// A copy of the samples, oldest first.
    pub fn snapshot(&self) -> Vec<Sample> {
        let q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        q.iter().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.samples.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_a_bounded_window_oldest_first() {
        let h = History::default();
        for i in 0..(KEEP as u64 + 25) {
            h.push(Sample {
                at_ms: i,
                level: None,
                rooms: vec![],
                origins: vec![],
            });
        }
        let s = h.snapshot();
        assert_eq!(s.len(), KEEP);
        assert_eq!(s[0].at_ms, 25);
        assert_eq!(s[KEEP - 1].at_ms, KEEP as u64 + 24);
    }

    #[test]
    fn reads_the_admin_state() {
        let state = json!({
            "degradation": { "level_index": 1 },
            "rooms": [{ "name": "ent", "waiting": 7, "active_users": 3 }],
            "origins": [{ "name": "ent", "inflight": 5, "max_inflight": 64 }],
            "signals": [{ "origin": "ent", "p95_latency_ms": 12.5 }],
        });
        let s = Sample::from_state(9, &state);
        assert_eq!(s.level, Some(1.0));
        assert_eq!(s.rooms[0].waiting, 7.0);
        assert_eq!(s.rooms[0].inside, 3.0);
        assert_eq!(s.origins[0].p95_ms, 12.5);
        assert_eq!(s.origins[0].max_inflight, 64.0);
        // Garbage reads as nothing, never a panic.
        let s = Sample::from_state(1, &json!("x"));
        assert!(s.rooms.is_empty() && s.level.is_none());
    }
}
