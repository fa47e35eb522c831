//! Short property-test versions of the fuzz targets in `fuzz/` (hardening): whatever the
//! input, the config loader, the route matcher, the cookie parser and the waiting-room
//! ticket decoder answer without panicking, the loader's every problem carries a position,
//! and no ticket verifies unless the keys sealed it. The long runs are `scripts/fuzz.sh`.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ecluse::config::check_text;
use ecluse::config::runtime::Shared;
use ecluse::policy::ticket::{Keyring, Ticket, TicketError, TicketState};
use proptest::prelude::*;

const VALID: &str = r#"listen: ["127.0.0.1:0"]
origins:
  ent: { servers: ["127.0.0.1:9"], max_inflight: 10 }
waiting_rooms:
  ent: { active_users: 5, new_users_per_minute: 60, secret_env: ECLUSE_FUZZ_KEYS }
cache: { memory: 8MiB }
routes:
  - name: files
    match: { path_prefix: /files/, methods: [GET] }
    origin: ent
    cache: { mode: revalidate, ttl: 1m }
  - name: ent
    match: { path_prefix: / }
    origin: ent
    waiting_room: ent
    rate_limits: [{ key: client_ip, rate: 10/s, burst: 20 }]
"#;

fn load(text: &str) {
    std::env::set_var(
        "ECLUSE_FUZZ_KEYS",
        "k1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    );
    let registry = Shared::default();
    if let Err(problems) = check_text(text, Path::new("/tmp/fuzz.yaml"), &registry, 1) {
        assert!(!problems.is_empty());
        for p in problems {
            assert!(p.pos.line >= 1, "a problem without a line: {p:?}");
        }
    }
}

#[test]
fn the_seed_policy_is_valid() {
    std::env::set_var(
        "ECLUSE_FUZZ_KEYS",
        "k1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    );
    let registry = Shared::default();
    check_text(VALID, Path::new("/tmp/fuzz.yaml"), &registry, 1).expect("seed is valid");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn config_loader_never_panics_on_arbitrary_text(s in "\\PC{0,400}") {
        load(&s);
    }

    #[test]
    fn config_loader_never_panics_on_mutated_policies(
        pos in 0usize..2000,
        len in 0usize..8,
        insert in "[ -~\n\t{}\\[\\]:,#&*!|>'\"%@`-]{0,12}",
    ) {
        let mut s = VALID.to_string();
        let at = pos % s.len();
        let at = (0..=at).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
        let end = (at + len).min(s.len());
        let end = (end..=s.len()).find(|i| s.is_char_boundary(*i)).unwrap_or(s.len());
        s.replace_range(at..end, &insert);
        load(&s);
    }

    #[test]
    fn route_matching_never_panics_and_first_prefix_wins(
        host in "[a-zA-Z0-9.:\\-]{0,40}",
        path in "/[\\PC]{0,60}",
        method in "[A-Z]{1,8}",
    ) {
        std::env::set_var(
            "ECLUSE_FUZZ_KEYS",
            "k1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        );
        let registry = Shared::default();
        let cfg = check_text(VALID, Path::new("/tmp/fuzz.yaml"), &registry, 1).expect("valid");
        let Ok(m) = http::Method::from_bytes(method.as_bytes()) else { return Ok(()); };
        let found = cfg.router.find(&host, path.as_bytes(), &m).map(|r| r.name.clone());
        let expected = if path.starts_with("/files/") && m == http::Method::GET {
            "files"
        } else {
            "ent"
        };
        prop_assert_eq!(found.as_deref(), Some(expected));
    }

    #[test]
    fn cookie_parser_never_panics(header in "\\PC{0,300}", name in "[a-z_]{1,12}") {
        let mut h = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(&header) {
            h.insert(http::header::COOKIE, v);
            let _ = ecluse::policy::classes::cookie(&h, &name);
            let _ = ecluse::policy::cookies::only_own([v_bytes(&h)], &[name.as_str()]);
        }
    }

    /// Any `Cookie` content in which a lenient backend (splitting on `;`, `,` and
    /// whitespace) finds anything but ecluse's own cookie makes the request credentialed,
    /// for the cache and for the identity `cache::auth` remembers (issue #17).
    #[test]
    fn a_cookie_any_lenient_split_finds_makes_the_request_credentialed(
        parts in proptest::collection::vec(
            prop_oneof![
                Just("ecluse_ent=abc.D-_".to_string()),
                Just("ecluse_ent=".to_string()),
                Just("ECLUSE_ENT=abc".to_string()),
                Just("session=bob".to_string()),
                Just(";".to_string()),
                Just("; ".to_string()),
                Just(",".to_string()),
                Just(" ".to_string()),
                Just("\t".to_string()),
                Just("\"".to_string()),
                Just("=".to_string()),
                "[ -~]{0,6}",
            ],
            0..10,
        ),
        split_at in 0usize..10,
    ) {
        let own = ["ecluse_ent"];
        let mut req = pingora_http::RequestHeader::build("GET", b"/", None).expect("req");
        let at = split_at.min(parts.len());
        for line in [parts[..at].concat(), parts[at..].concat()] {
            if let Ok(v) = http::HeaderValue::from_str(&line) {
                req.append_header(http::header::COOKIE, v).expect("header");
            }
        }
        let credentialed = ecluse::policy::cache::has_credentials(&req, &own);
        let lenient_finds_another = req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .flat_map(|v| ecluse::policy::cookies::lenient_tokens(v.as_bytes()))
            .any(|t| {
                !t.strip_prefix(b"ecluse_ent=".as_slice()).is_some_and(|v| {
                    v.iter().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b))
                })
            });
        if lenient_finds_another {
            prop_assert!(credentialed, "{:?} read as anonymous", req.headers);
        }
        prop_assert_eq!(
            credentialed,
            !ecluse::policy::cache::credential_items(&req, &own).is_empty()
        );
    }
}

fn v_bytes(h: &http::HeaderMap) -> &[u8] {
    h.get(http::header::COOKIE)
        .map(|v| v.as_bytes())
        .unwrap_or_default()
}

// ---- Waiting-room tickets (fuzz/fuzz_targets/ticket_decoder.rs) ----

const K2: &str = "k2:0123456789abcdef0123456789abcdef";
const K1: &str = "k1:fedcba9876543210fedcba9876543210";

/// k2 signs, k1 still verifies (a rotation in progress).
fn ring() -> Keyring {
    Keyring::parse(&format!("# rotation\n{K2}\n{K1}\n")).expect("keys")
}

fn ticket_strategy() -> impl Strategy<Value = Ticket> {
    (
        "[a-zA-Z0-9_-]{1,64}",
        any::<u8>(),
        any::<bool>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(room, class, admitted, number, issued, seen, bucket)| Ticket {
                room,
                class,
                state: if admitted {
                    TicketState::Admitted
                } else {
                    TicketState::Waiting
                },
                number,
                issued,
                seen,
                bucket,
            },
        )
}

fn decoded(value: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let (p, m) = value.split_once('.')?;
    Some((B64.decode(p).ok()?, B64.decode(m).ok()?))
}

/// `value` was accepted as `t`: it must carry exactly the bytes `seal` wrote for `t`
/// (base64 without padding spells the last character of each part more than one way).
fn assert_genuine(value: &str, t: &Ticket, sealed: &str) {
    assert_eq!(
        decoded(value),
        decoded(sealed),
        "accepted a ticket that was never sealed: {value:?}"
    );
    assert_eq!(ring().open(sealed, &t.room).as_ref(), Ok(t));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn ticket_decoder_round_trips_every_ticket(t in ticket_strategy()) {
        let r = ring();
        let c = r.seal(&t);
        prop_assert!(c.len() <= ecluse::policy::ticket::MAX_COOKIE_LEN);
        prop_assert_eq!(r.open(&c, &t.room), Ok(t.clone()));
        // Only for its own room.
        let other = format!("{}x", t.room);
        prop_assert_eq!(r.open(&c, &other), Err(TicketError::OtherRoom(t.room.clone())));
    }

    #[test]
    fn ticket_decoder_never_panics_on_arbitrary_values(
        s in "\\PC{0,600}",
        b in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let r = ring();
        // Nothing random is ever a valid ticket.
        prop_assert!(r.open(&s, "ent").is_err());
        prop_assert!(r.open(&String::from_utf8_lossy(&b), "ent").is_err());
        // Nor is a well-formed payload with a made-up MAC.
        let forged = format!("{}.{}", B64.encode(s.as_bytes()), B64.encode(&b));
        prop_assert!(r.open(&forged, "ent").is_err());
    }

    #[test]
    fn ticket_decoder_rejects_every_mutation(
        t in ticket_strategy(),
        at in any::<prop::sample::Index>(),
        cut in 0usize..8,
        insert in "[A-Za-z0-9_.|=%+/-]{0,8}",
    ) {
        let r = ring();
        let sealed = r.seal(&t);
        let i = at.index(sealed.len());
        let end = (i + cut).min(sealed.len());
        let mut m = sealed.clone();
        m.replace_range(i..end, &insert);
        if let Ok(got) = r.open(&m, &t.room) {
            prop_assert_eq!(&got, &t);
            assert_genuine(&m, &got, &sealed);
        }
    }

    #[test]
    fn ticket_decoder_refuses_foreign_keys(
        t in ticket_strategy(),
        secret in "[!-~][ -~]{30,62}[!-~]",
    ) {
        prop_assume!(secret != "0123456789abcdef0123456789abcdef");
        let r = ring();
        // The same key id with another secret, and an unknown key id.
        let evil = Keyring::parse(&format!("k2:{secret}")).expect("key");
        let stranger = Keyring::parse(&format!("k9:{secret}")).expect("key");
        prop_assert_eq!(r.open(&evil.seal(&t), &t.room), Err(TicketError::BadSignature));
        prop_assert_eq!(
            r.open(&stranger.seal(&t), &t.room),
            Err(TicketError::UnknownKey("k9".into()))
        );
        // A ticket signed by the retired key verifies only while it is listed.
        let old = Keyring::parse(K1).expect("k1").seal(&t);
        prop_assert_eq!(r.open(&old, &t.room), Ok(t.clone()));
        prop_assert!(Keyring::parse(K2).expect("k2").open(&old, &t.room).is_err());
    }

    #[test]
    fn ticket_cookie_header_never_panics_nor_admits(
        before in "[ -~]{0,60}",
        after in "[ -~]{0,60}",
        t in ticket_strategy(),
        flip in any::<prop::sample::Index>(),
    ) {
        let r = ring();
        let sealed = r.seal(&t);
        let mut bytes = sealed.clone().into_bytes();
        let i = flip.index(bytes.len());
        // Flip one character to another base64url one.
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(bytes).expect("ascii");
        let name = format!("ecluse_{}", t.room);
        for (value, genuine) in [(&sealed, true), (&altered, false)] {
            let header = format!("{before}; {name}={value}; {after}");
            let Ok(v) = http::HeaderValue::from_str(&header) else { continue };
            let mut h = http::HeaderMap::new();
            h.insert(http::header::COOKIE, v);
            let Some(c) = ecluse::policy::classes::cookie(&h, &name) else { continue };
            match r.open(c, &t.room) {
                Ok(got) => {
                    prop_assert_eq!(&got, &t);
                    assert_genuine(c, &got, &sealed);
                    if !genuine {
                        // Only a non-canonical last base64 character may still decode
                        // to the sealed bytes.
                        prop_assert!(decoded(c) == decoded(&sealed));
                    }
                }
                Err(_) => prop_assert!(!genuine || c != sealed.as_str()),
            }
        }
    }
}
