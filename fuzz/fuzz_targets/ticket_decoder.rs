//! The waiting-room ticket decoder: `Keyring::open` on any cookie value never panics, and
//! nothing verifies but what the keys signed.
//!
//! The fuzzer cannot sign, so every input that opens must carry exactly a payload and a
//! MAC that `seal` produced (base64 may spell the last character of each part in more than
//! one way; the decoded bytes must still be the sealed ones). The seeds are tickets sealed
//! with the keys below, bare and inside a `Cookie` header, so the mutator starts from the
//! valid shape and has to break it.
#![no_main]

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ecluse::policy::classes::cookie;
use ecluse::policy::ticket::{Keyring, Ticket};
use libfuzzer_sys::fuzz_target;

const K2: &str = "k2:0123456789abcdef0123456789abcdef";
const K1: &str = "k1:fedcba9876543210fedcba9876543210";

struct Rings {
    /// k2 signs, k1 still verifies (rotation).
    both: Keyring,
    /// To re-seal what k1 signed.
    k1: Keyring,
}

fn rings() -> &'static Rings {
    static R: OnceLock<Rings> = OnceLock::new();
    R.get_or_init(|| Rings {
        both: Keyring::parse(&format!("# rotation\n{K2}\n{K1}\n")).expect("keys"),
        k1: Keyring::parse(K1).expect("k1"),
    })
}

fn decoded(value: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let (p, m) = value.split_once('.')?;
    Some((B64.decode(p).ok()?, B64.decode(m).ok()?))
}

/// `value` opened as `t` for `room`: it must be what the keys sealed for `t`.
fn check_genuine(value: &str, room: &str, t: &Ticket) {
    let r = rings();
    assert_eq!(t.room, room, "a ticket for another room was accepted");
    let kid = decoded(value)
        .and_then(|(p, _)| String::from_utf8(p).ok())
        .and_then(|p| p.split('|').nth(1).map(str::to_string))
        .expect("an accepted ticket decodes");
    let sealer = if kid == "k1" { &r.k1 } else { &r.both };
    assert_eq!(
        sealer.signing_key_id(),
        kid,
        "accepted under an unknown key"
    );
    let canonical = sealer.seal(t);
    assert_eq!(
        decoded(value),
        decoded(&canonical),
        "accepted a ticket that was never sealed: {value:?} (sealed: {canonical:?})"
    );
    // And the canonical form round-trips.
    assert_eq!(r.both.open(&canonical, room).as_ref(), Ok(t));
}

fuzz_target!(|data: &[u8]| {
    let r = rings();
    // 1. The bytes as a cookie value (what the proxy hands over after `cookie()`).
    let text = String::from_utf8_lossy(data);
    for room in ["ent", "exam"] {
        if let Ok(t) = r.both.open(&text, room) {
            check_genuine(&text, room, &t);
        }
    }
    // 2. The bytes as a whole `Cookie` header, through the same path as the proxy:
    //    `cookie(headers, "ecluse_<room>")` then `open`.
    if let Ok(v) = http::HeaderValue::from_bytes(data) {
        let mut h = http::HeaderMap::new();
        h.append(http::header::COOKIE, v);
        for room in ["ent", "exam"] {
            if let Some(value) = cookie(&h, &format!("ecluse_{room}")) {
                if let Ok(t) = r.both.open(value, room) {
                    check_genuine(value, room, &t);
                }
            }
        }
    }
});
