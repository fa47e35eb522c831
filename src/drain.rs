//! Switching a feature off reaches what is already open on its routes.
//!
//! The degradation gate refuses new requests of a switched-off feature; this module closes
//! the old ones: WebSocket tunnels, long downloads and streams, requests still waiting for
//! the origin. Every request on a feature route that carries no body registers a
//! [`Session`] here (uploads never do: a drain never cuts what a teacher is sending). A
//! background tick ([`Drains::tick`], every 100 ms) compares the registered features with
//! the ones switched off, whatever switched them off (admin API, `force_features` in the
//! file, a level): once a feature has been off for its `drain` grace, each of its open
//! sessions is marked closing and woken. The connection guard (`proxy::conn_guard`) then closes
//! it: a WebSocket with a close frame `1013 Try Again Later` carrying the ops' message,
//! anything else by cutting the connection. Switching the feature back on before the grace
//! is over stops the drain; sessions already closed stay closed.
//!
//! Sessions are held weakly: a request that ends drops its [`Session`] and is forgotten at
//! the next tick, so the registry never outgrows what is open.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};

/// One open exchange on a feature route.
#[derive(Debug, Default)]
pub struct Session {
    /// The client prefers French (the close reason's language).
    fr: bool,
    /// Set once, when the drain reaches this session: the close reason.
    close: OnceLock<String>,
    /// Woken when `close` is set (the connection guard's pending read).
    waker: Mutex<Option<Waker>>,
    /// Whether the session was counted (a tunnel or a response cut by the drain).
    counted: AtomicBool,
}

impl Session {
    /// The close reason once the drain reached this session.
    pub fn closing(&self) -> Option<&str> {
        self.close.get().map(|s| s.as_str())
    }

    /// Wake `w` when the drain reaches this session.
    pub fn register(&self, w: &Waker) {
        let mut g = self.waker.lock().unwrap_or_else(|p| p.into_inner());
        match &*g {
            Some(old) if old.will_wake(w) => {}
            _ => *g = Some(w.clone()),
        }
    }

    fn close(&self, reason: String) -> bool {
        if self.close.set(reason).is_err() {
            return false;
        }
        let w = self.waker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = w {
            w.wake();
        }
        !self.counted.swap(true, Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
struct Feature {
    open: Vec<Weak<Session>>,
    /// When the feature was first seen off (the grace runs from here).
    off_since: Option<Instant>,
    /// Sessions closed by drains of this feature since the start.
    drained: u64,
}

/// What a tick did, for the log.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// The feature was switched off with `open` sessions; they close after `grace`
    /// (`None`: never).
    Started {
        feature: String,
        open: usize,
        grace: Option<Duration>,
    },
    /// The feature came back on before the grace ended: `open` sessions kept.
    Stopped { feature: String, open: usize },
    /// `closed` sessions of the feature were closed.
    Closed { feature: String, closed: usize },
}

/// A feature's drain, for `/admin/state`.
#[derive(Debug, serde::Serialize)]
pub struct FeatureState {
    pub feature: String,
    /// Sessions open on its routes (tunnels, responses, requests in flight).
    pub open: usize,
    /// A drain is under way: seconds left before the open sessions close.
    pub draining: bool,
    pub closes_in_s: Option<f64>,
    /// Sessions closed by drains since the start.
    pub drained_total: u64,
}

/// Open sessions per feature.
#[derive(Debug, Default)]
pub struct Drains {
    features: Mutex<HashMap<String, Feature>>,
}

/// The process's registry (shared by every listener, like the connection count).
pub fn registry() -> &'static Drains {
    static D: OnceLock<Drains> = OnceLock::new();
    D.get_or_init(Drains::default)
}

/// The close reason: the ops' message, cut to what a close frame can carry (123 bytes)
/// on a character boundary.
pub fn reason(message: &str) -> String {
    let mut end = message.len().min(123);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_string()
}

impl Drains {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Feature>> {
        self.features.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register an exchange on `feature`'s routes (a request without a body).
    pub fn open(&self, feature: &str, fr: bool) -> Arc<Session> {
        let s = Arc::new(Session {
            fr,
            ..Session::default()
        });
        let mut g = self.lock();
        match g.get_mut(feature) {
            Some(f) => f.open.push(Arc::downgrade(&s)),
            None => {
                g.insert(
                    feature.to_string(),
                    Feature {
                        open: vec![Arc::downgrade(&s)],
                        ..Feature::default()
                    },
                );
            }
        }
        s
    }

    /// One pass: start, stop or finish the drain of every registered feature.
    /// `off(feature)` tells whether it is switched off now; `policy(feature)` its grace
    /// (`None`: never) and its message in French and English.
    pub fn tick(
        &self,
        now: Instant,
        off: impl Fn(&str) -> bool,
        policy: impl Fn(&str) -> (Option<Duration>, String, String),
    ) -> Vec<Event> {
        let mut events = Vec::new();
        let mut g = self.lock();
        for (name, f) in g.iter_mut() {
            f.open.retain(|w| w.strong_count() > 0);
            if !off(name) {
                if f.off_since.take().is_some() {
                    let open = f.open.len();
                    if open > 0 {
                        events.push(Event::Stopped {
                            feature: name.clone(),
                            open,
                        });
                    }
                }
                continue;
            }
            let (grace, fr, en) = policy(name);
            let since = match f.off_since {
                Some(s) => s,
                None => {
                    f.off_since = Some(now);
                    let open = f.open.iter().filter(|w| w.strong_count() > 0).count();
                    if open > 0 {
                        events.push(Event::Started {
                            feature: name.clone(),
                            open,
                            grace,
                        });
                    }
                    now
                }
            };
            let Some(grace) = grace else { continue };
            if now.duration_since(since) < grace {
                continue;
            }
            let mut closed = 0;
            for s in f.open.iter().filter_map(Weak::upgrade) {
                let text = if s.fr { &fr } else { &en };
                if s.close(reason(text)) {
                    closed += 1;
                }
            }
            if closed > 0 {
                f.drained += closed as u64;
                events.push(Event::Closed {
                    feature: name.clone(),
                    closed,
                });
            }
        }
        events
    }

    /// Every feature's drain, for `/admin/state`: the ones named in `features` (all the
    /// config's) and any other still holding sessions.
    pub fn state(
        &self,
        now: Instant,
        features: &[String],
        grace: impl Fn(&str) -> Option<Duration>,
    ) -> Vec<FeatureState> {
        let g = self.lock();
        let mut names: Vec<&str> = features.iter().map(|s| s.as_str()).collect();
        for k in g.keys() {
            if !names.contains(&k.as_str()) {
                names.push(k);
            }
        }
        names.sort_unstable();
        names
            .into_iter()
            .map(|name| {
                let f = g.get(name);
                let open = f.map_or(0, |f| {
                    f.open
                        .iter()
                        .filter(|w| w.upgrade().is_some_and(|s| s.closing().is_none()))
                        .count()
                });
                let since = f.and_then(|f| f.off_since);
                let left = since.and_then(|s| {
                    grace(name).map(|g| g.saturating_sub(now.duration_since(s)).as_secs_f64())
                });
                FeatureState {
                    feature: name.to_string(),
                    open,
                    draining: since.is_some() && open > 0,
                    closes_in_s: left.filter(|_| open > 0),
                    drained_total: f.map_or(0, |f| f.drained),
                }
            })
            .collect()
    }
}

/// One tick against the live config and degradation state: log and count what happened.
pub fn tick(app: &crate::app::App) {
    let cfg = app.config();
    let Some(d) = cfg.degradation.as_ref() else {
        return;
    };
    let state = &app.degrade;
    let m = crate::metrics::get();
    for f in &d.features {
        // Present at 0 from the start, for dashboards and alerts.
        m.feature_drained.with_label_values(&[f]);
    }
    let events = registry().tick(
        Instant::now(),
        |f| state.is_disabled(f),
        |f| {
            let msg = d.message(f);
            (msg.drain, msg.fr, msg.en)
        },
    );
    for e in events {
        match e {
            Event::Started {
                feature,
                open,
                grace: Some(g),
            } => log::warn!(
                "feature {feature} switched off: draining {open} open connection(s), closed in {g:?} unless it comes back on"
            ),
            Event::Started {
                feature,
                open,
                grace: None,
            } => log::warn!(
                "feature {feature} switched off: {open} open connection(s) left running (drain: never)"
            ),
            Event::Stopped { feature, open } => log::warn!(
                "feature {feature} back on during its drain: {open} open connection(s) kept"
            ),
            Event::Closed { feature, closed } => {
                m.feature_drained
                    .with_label_values(&[&feature])
                    .inc_by(closed as u64);
                log::warn!("feature {feature} drained: {closed} connection(s) closed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(grace: Option<Duration>) -> impl Fn(&str) -> (Option<Duration>, String, String) {
        move |_| (grace, "fr: revenez".into(), "en: come back".into())
    }

    #[test]
    fn sessions_close_after_the_grace_in_their_language() {
        let d = Drains::default();
        let t0 = Instant::now();
        let a = d.open("visio", true);
        let b = d.open("visio", false);
        let other = d.open("chat", false);
        let off = |f: &str| f == "visio";
        let g = Some(Duration::from_secs(30));
        assert_eq!(
            d.tick(t0, off, policy(g)),
            vec![Event::Started {
                feature: "visio".into(),
                open: 2,
                grace: g
            }]
        );
        assert!(a.closing().is_none());
        assert!(d
            .tick(t0 + Duration::from_secs(29), off, policy(g))
            .is_empty());
        assert_eq!(
            d.tick(t0 + Duration::from_secs(30), off, policy(g)),
            vec![Event::Closed {
                feature: "visio".into(),
                closed: 2
            }]
        );
        assert_eq!(a.closing(), Some("fr: revenez"));
        assert_eq!(b.closing(), Some("en: come back"));
        assert!(other.closing().is_none());
        // Counted once.
        assert!(d
            .tick(t0 + Duration::from_secs(31), off, policy(g))
            .is_empty());
        let st = d.state(t0, &[], |_| g);
        let v = st.iter().find(|s| s.feature == "visio").expect("visio");
        assert_eq!((v.open, v.drained_total), (0, 2));
    }

    #[test]
    fn back_on_during_the_grace_keeps_them_and_never_means_never() {
        let d = Drains::default();
        let t0 = Instant::now();
        let a = d.open("visio", false);
        let g = Some(Duration::from_secs(5));
        d.tick(t0, |_| true, policy(g));
        let ev = d.tick(t0 + Duration::from_secs(2), |_| false, policy(g));
        assert_eq!(
            ev,
            vec![Event::Stopped {
                feature: "visio".into(),
                open: 1
            }]
        );
        // Off again: the grace starts over.
        d.tick(t0 + Duration::from_secs(3), |_| true, policy(g));
        d.tick(t0 + Duration::from_secs(7), |_| true, policy(g));
        assert!(a.closing().is_none());
        d.tick(t0 + Duration::from_secs(8), |_| true, policy(g));
        assert!(a.closing().is_some());

        let b = d.open("chat", false);
        for s in 0..100 {
            d.tick(t0 + Duration::from_secs(s), |_| true, policy(None));
        }
        assert!(b.closing().is_none());
    }

    #[test]
    fn ended_sessions_are_forgotten_and_zero_closes_at_once() {
        let d = Drains::default();
        let t0 = Instant::now();
        drop(d.open("visio", false));
        let kept = d.open("visio", false);
        let ev = d.tick(t0, |_| true, policy(Some(Duration::ZERO)));
        assert!(ev.contains(&Event::Closed {
            feature: "visio".into(),
            closed: 1
        }));
        assert!(kept.closing().is_some());
    }

    #[test]
    fn reasons_fit_a_close_frame_and_cut_on_a_character() {
        assert_eq!(reason("court"), "court");
        let long = "é".repeat(100); // 200 bytes
        let r = reason(&long);
        assert!(r.len() <= 123 && r.len() >= 122);
        assert!(r.chars().all(|c| c == 'é'));
    }

    #[test]
    fn a_woken_read_learns_the_close() {
        use std::sync::atomic::AtomicUsize;
        struct W(AtomicUsize);
        impl std::task::Wake for W {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let w = Arc::new(W(AtomicUsize::new(0)));
        let waker = Waker::from(w.clone());
        let d = Drains::default();
        let s = d.open("visio", false);
        s.register(&waker);
        d.tick(Instant::now(), |_| true, policy(Some(Duration::ZERO)));
        assert_eq!(w.0.load(Ordering::Relaxed), 1);
    }
}
