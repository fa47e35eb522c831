//! Signals no single client can steer (issue #17, class 6).
//!
//! The measurements that move degradation levels and the adaptive concurrency limit must
//! say how the ENT is doing, not what one client chose to ask for. Each exchange is
//! therefore tallied under two small keys besides the totals:
//!
//! - a **client key**: the client's address (IPv6 aggregated to its /64) hashed with a
//!   per-process secret into one of [`CLIENT_KEYS`] buckets;
//! - a **URL key**: the request's canonical path (`policy::path`) without its query,
//!   hashed into one of [`URL_KEYS`] buckets: a query made up per request (`?r=random`)
//!   names the same resource to the ENT, so it must not scatter one failing URL over
//!   every bucket (where it would be no outlier anywhere).
//!
//! Memory is fixed (a few tables per one-second slot), whatever the number of clients or
//! URLs, and the secret hash means nobody can pick an address that lands in a chosen
//! bucket.
//!
//! A key whose share of a signal is far beyond what the *rest* of the traffic shows is an
//! **outlier** and left out of that signal ([`outliers`]): one address asking for a URL
//! that always fails, a slow search, requests held open. The test compares a key with the
//! others, never with a fixed quota, so:
//!
//! - a real overload, which every client sees, counts in full, including a whole school
//!   behind one NAT address (its pupils see the same error rate and latency as everyone
//!   else, so its bucket is no outlier however big its share of the traffic);
//! - a key is left out only when its excess is gross: more than twice the rest's rate
//!   (taken at an upper confidence bound, so a small rest proves little) and beyond
//!   binomial noise, plus a few exchanges of slack;
//! - at most half of the keys with traffic are left out, and never the only one: when one
//!   address is all the traffic (a school alone on the ENT), there is nobody to compare
//!   with and it counts as it is.
//!
//! Failures are of two kinds ([`Failure`]). Overload failures (502, 503, 504, connect
//! errors, time-outs, broken exchanges) are judged by client only: a real surge often
//! breaks one URL (the login) first. Deterministic failures (500 and the other 5xx) are
//! judged by URL as well: a URL that fails for everyone is an application bug, not an
//! overloaded ENT. Failures the client caused (it went away, it sent a method the ENT
//! does not implement) are no failure of the ENT at all; the caller leaves them out.

use std::hash::BuildHasher;

/// Buckets of client addresses per window slot.
pub const CLIENT_KEYS: usize = 16;
/// Buckets of URLs per window slot.
pub const URL_KEYS: usize = 64;

/// Why an exchange with the origin failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The ENT could not answer in time or at all: 502, 503, 504, connect errors,
    /// time-outs, a connection that broke.
    Overload,
    /// The ENT answered an error it would answer again: 500 and the other 5xx.
    Deterministic,
}

impl Failure {
    /// How an origin's status reads as a failure (`None`: not a failure of the ENT).
    /// 501 and 505 answer what the client chose to send (a method, a version).
    pub fn of_status(status: u16) -> Option<Failure> {
        match status {
            502..=504 => Some(Failure::Overload),
            501 | 505 => None,
            500..=599 => Some(Failure::Deterministic),
            _ => None,
        }
    }
}

/// One finished exchange with an origin, as the signals see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exchange {
    /// Time to the origin's response head (or to the failure), ms.
    pub latency_ms: f64,
    pub failure: Option<Failure>,
    /// Client key, `0..CLIENT_KEYS`.
    pub client: u8,
    /// URL key, `0..URL_KEYS`.
    pub url: u8,
}

/// Hashes clients and URLs into their keys with a secret chosen at start.
#[derive(Debug, Clone, Default)]
pub struct KeyHasher(std::collections::hash_map::RandomState);

impl KeyHasher {
    /// The key of a client address already aggregated (`rate_limit::aggregate_ip`).
    pub fn client(&self, aggregated: &[u8]) -> u8 {
        (self.0.hash_one(aggregated) % CLIENT_KEYS as u64) as u8
    }

    /// The key of a URL: its canonical path, without the query (a query invented per
    /// request must land in the same key). A `?` and what follows are ignored here too.
    pub fn url(&self, path: &[u8]) -> u8 {
        let path = match path.iter().position(|&b| b == b'?') {
            Some(i) => &path[..i],
            None => path,
        };
        (self.0.hash_one((b'u', path)) % URL_KEYS as u64) as u8
    }
}

/// How far above `expected` a key's count may go before it is an outlier: twice it, or
/// three standard deviations of a Poisson count, whichever is more, plus 3.
fn bound(expected: f64) -> f64 {
    (2.0 * expected).max(expected + 3.0 * expected.sqrt()) + 3.0
}

/// Upper confidence bound of a rate seen as `count` of `total` ("rule of three" when
/// none): a rest of a few exchanges proves little, so it excuses more.
fn upper_rate(count: f64, total: f64, is_share: bool) -> f64 {
    let r = (count + 2.0 * count.sqrt() + 3.0) / total;
    if is_share {
        r.min(1.0)
    } else {
        r
    }
}

/// The keys to leave out of a signal, as a bit mask: `tallies[k] = (exchanges, count)`
/// where `count` is the key's part of the signal (failures, slow answers, requests in
/// flight). A key is an outlier when its count is beyond [`bound`] of what the other
/// keys' rate predicts for its exchanges. The worst outlier goes first and the rest is
/// judged again without it, so several outliers do not excuse each other; at most half
/// of the keys with traffic go, and never the last one. `is_share`: the count is part of
/// the exchanges (a rate at most 1), not a level like requests in flight.
pub fn outliers(tallies: &[(f64, f64)], is_share: bool) -> u64 {
    let active = tallies.iter().filter(|(t, c)| *t > 0.0 || *c > 0.0).count();
    let mut mask = 0u64;
    for _ in 0..active / 2 {
        let (mut total, mut count) = (0.0, 0.0);
        for (k, (t, c)) in tallies.iter().enumerate() {
            if mask & (1 << k) == 0 {
                total += t;
                count += c;
            }
        }
        let mut worst: Option<(usize, f64)> = None;
        for (k, &(t, c)) in tallies.iter().enumerate() {
            if mask & (1 << k) != 0 || c <= 0.0 {
                continue;
            }
            let rest_total = total - t;
            if rest_total <= 0.0 {
                continue;
            }
            let rate = upper_rate((count - c).max(0.0), rest_total, is_share);
            let excess = c - bound(t * rate);
            if excess > 0.0 && worst.is_none_or(|(_, e)| excess > e) {
                worst = Some((k, excess));
            }
        }
        match worst {
            Some((k, _)) => mask |= 1 << k,
            None => break,
        }
    }
    mask
}

/// Failures to count in one short window of the adaptive controller, from each client
/// key's (exchanges, failures): the key with the most failures is left out when others
/// had exchanges too, so one client alone never shrinks the limit; a real overload fails
/// for several keys and still counts.
pub fn failures_without_top_key(tallies: &[(u32, u32)]) -> usize {
    let total: usize = tallies.iter().map(|(_, f)| *f as usize).sum();
    let keys = tallies.iter().filter(|(n, _)| *n > 0).count();
    if keys < 2 {
        return total;
    }
    let top = tallies.iter().map(|(_, f)| *f as usize).max().unwrap_or(0);
    total - top
}

/// Whether a streak of consecutive failures on one server may eject it (passive health),
/// so that no single client can take a healthy server out of rotation for everyone by
/// asking for URLs that make it answer 502-504 or time out.
///
/// - `server_caused`: one failure of the streak was the server's alone (the connection
///   could not be opened: nothing of any request had been sent): the streak counts.
/// - `streak`: the client keys whose requests failed in the streak (bit mask). Two keys
///   or more: the server fails for several clients, it counts.
/// - `active`: the client keys with exchanges with the origin in the signals' window.
///   One key failing while others are served is that client's doing, not the server's;
///   one key alone on the origin (a school alone on the ENT) has nobody to be compared
///   with and counts as it is, like the signals (`outliers`).
pub fn streak_ejects(server_caused: bool, streak: u32, active: u32) -> bool {
    server_caused || streak.count_ones() >= 2 || active & !streak == 0
}

/// Whether key `k` is in `mask`.
#[inline]
pub fn in_mask(mask: u64, k: u8) -> bool {
    k < 64 && mask & (1u64 << k) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<(f64, f64)> {
        vec![(0.0, 0.0); n]
    }

    #[test]
    fn one_key_failing_alone_is_left_out() {
        // Fifteen keys of healthy traffic, one that fails at every exchange.
        let mut t = keys(16);
        for k in t.iter_mut().take(15) {
            *k = (30.0, 0.0);
        }
        t[15] = (50.0, 50.0);
        assert_eq!(outliers(&t, true), 1 << 15);
        // Background failures elsewhere do not excuse it.
        t[3] = (30.0, 1.0);
        t[7] = (30.0, 2.0);
        assert_eq!(outliers(&t, true), 1 << 15);
    }

    #[test]
    fn a_real_overload_is_no_outlier_even_for_a_big_key() {
        // Every key fails about 30%; key 0 is a school behind one address with 40% of
        // the traffic, and unlucky.
        let mut t = keys(16);
        t[0] = (400.0, 140.0);
        for (i, k) in t.iter_mut().enumerate().skip(1) {
            *k = (40.0, 9.0 + (i % 5) as f64);
        }
        assert_eq!(outliers(&t, true), 0);
        // Low rates too: 2% everywhere, with noise.
        let mut t = keys(16);
        for (i, k) in t.iter_mut().enumerate() {
            *k = (30.0, [0.0, 1.0, 0.0, 2.0][i % 4]);
        }
        assert_eq!(outliers(&t, true), 0);
    }

    #[test]
    fn a_key_alone_counts_as_it_is() {
        let mut t = keys(16);
        t[4] = (500.0, 500.0);
        assert_eq!(outliers(&t, true), 0, "nobody to compare with");
        // A school failing under a real overload, and one pupil at home lucky twice:
        // two exchanges prove nothing against the school.
        t[9] = (2.0, 0.0);
        assert_eq!(outliers(&t, true), 0);
    }

    #[test]
    fn several_outliers_do_not_excuse_each_other_and_half_stay() {
        let mut t = keys(16);
        for k in t.iter_mut().take(12) {
            *k = (30.0, 0.0);
        }
        for k in t.iter_mut().skip(12) {
            *k = (40.0, 40.0);
        }
        assert_eq!(outliers(&t, true), 0xF000);
        // When failing keys are the majority it is the ENT, not a client: at most half
        // of the keys are left out.
        let mut t = keys(4);
        t[0] = (30.0, 0.0);
        for k in t.iter_mut().skip(1) {
            *k = (30.0, 30.0);
        }
        assert!(outliers(&t, true).count_ones() <= 2);
    }

    #[test]
    fn in_flight_held_by_one_key() {
        // (exchanges finished in the window, requests in flight now): key 2 holds 12
        // requests that never finish; the others finish fast.
        let mut t = keys(16);
        for k in t.iter_mut().take(10) {
            *k = (40.0, 0.5);
        }
        t[2] = (5.0, 12.0);
        assert_eq!(outliers(&t, false), 1 << 2);
        // Everybody slow (a real overload): requests in flight in proportion to traffic.
        for k in t.iter_mut().take(10) {
            *k = (40.0, 8.0);
        }
        t[2] = (60.0, 12.0);
        assert_eq!(outliers(&t, false), 0);
    }

    #[test]
    fn one_client_alone_in_a_streak_does_not_eject() {
        // Key 3 failing while keys 1 and 5 are served: its doing.
        assert!(!streak_ejects(false, 1 << 3, 0b10_1010));
        // Two keys fail on it: the server.
        assert!(streak_ejects(false, 1 << 3 | 1 << 5, 0b10_1010));
        // A connection refused is the server's, whoever asked.
        assert!(streak_ejects(true, 1 << 3, 0b10_1010));
        // Key 3 alone on the origin: nobody to compare with.
        assert!(streak_ejects(false, 1 << 3, 1 << 3));
        assert!(streak_ejects(false, 1 << 3, 0));
    }

    #[test]
    fn failures_status_classes() {
        assert_eq!(Failure::of_status(503), Some(Failure::Overload));
        assert_eq!(Failure::of_status(504), Some(Failure::Overload));
        assert_eq!(Failure::of_status(502), Some(Failure::Overload));
        assert_eq!(Failure::of_status(500), Some(Failure::Deterministic));
        assert_eq!(Failure::of_status(507), Some(Failure::Deterministic));
        assert_eq!(Failure::of_status(501), None);
        assert_eq!(Failure::of_status(505), None);
        assert_eq!(Failure::of_status(404), None);
        assert_eq!(Failure::of_status(200), None);
    }

    #[test]
    fn short_windows_leave_the_top_key_out() {
        assert_eq!(failures_without_top_key(&[(9, 9), (20, 0), (3, 0)]), 0);
        assert_eq!(failures_without_top_key(&[(9, 2), (20, 3), (3, 1)]), 3);
        assert_eq!(
            failures_without_top_key(&[(0, 0), (20, 4)]),
            4,
            "one key alone counts"
        );
    }

    #[test]
    fn keys_are_spread_and_stable() {
        let h = KeyHasher::default();
        let a = h.client(b"\x04\x0a\x00\x00\x01");
        assert_eq!(a, h.client(b"\x04\x0a\x00\x00\x01"));
        let mut seen = [false; CLIENT_KEYS];
        for i in 0..2000u32 {
            seen[h.client(&i.to_be_bytes()) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert!(h.url(b"/fail/x") < URL_KEYS as u8);
        // One failing URL, whatever query is made up for it: one key.
        let u = h.url(b"/fail/x");
        assert!((0..200).all(|i| h.url(format!("/fail/x?r={i}").as_bytes()) == u));
    }
}
