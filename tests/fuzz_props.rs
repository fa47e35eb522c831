//! Short property-test versions of the fuzz targets in `fuzz/` (hardening): whatever the
//! input, the config loader, the route matcher, the cookie parser and the waiting-room
//! ticket decoder answer without panicking, the loader's every problem carries a position,
//! and no ticket verifies unless the keys sealed it. The long runs are `scripts/fuzz.sh`.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ecluse::config::check_text;
use ecluse::config::runtime::Retained;
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
    let registry = Retained::default();
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
    let registry = Retained::default();
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
        let registry = Retained::default();
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
        let credentialed = ecluse::policy::cache_rules::has_credentials(&req, &own);
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
            !ecluse::policy::cache_rules::credential_items(&req, &own).is_empty()
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

// ---- One canonical path (fuzz/fuzz_targets/path_normalizer.rs) ----

use ecluse::policy::path::{
    canonical_target, policy_path, EscapedSlashes, PathParams, PathPolicy, Target,
};

fn policies() -> Vec<PathPolicy> {
    PathPolicy::all().collect()
}

fn canon(t: &[u8], p: &PathPolicy) -> Option<Vec<u8>> {
    match canonical_target(t, p).ok()? {
        Target::Path { path_and_query, .. } => Some(path_and_query.into_owned()),
        Target::Asterisk => Some(b"*".to_vec()),
    }
}

/// A lenient backend's reading (as `tests/common/lenient_ent.rs`): decode every escape,
/// `\` is `/`, merge slashes, resolve dot segments.
fn lenient(path: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    let mut i = 0;
    while i < path.len() {
        let h = |b: u8| (b as char).to_digit(16).map(|v| v as u8);
        if path[i] == b'%' && i + 2 < path.len() {
            if let (Some(a), Some(b)) = (h(path[i + 1]), h(path[i + 2])) {
                d.push(a * 16 + b);
                i += 3;
                continue;
            }
        }
        d.push(path[i]);
        i += 1;
    }
    for b in d.iter_mut() {
        if *b == b'\\' {
            *b = b'/';
        }
    }
    let mut out: Vec<&[u8]> = Vec::new();
    for seg in d.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut p = b"/".to_vec();
    p.extend(out.join(&b'/'));
    if d.ends_with(b"/") && p.len() > 1 {
        p.push(b'/');
    }
    p
}

/// A spelling of the canonical path `c` a lenient backend reads as `c`: each byte raw or
/// percent-encoded (either case), dot segments and repeated slashes slipped in, per the
/// `choices`.
fn spell(c: &str, choices: &[u8]) -> String {
    let mut k = 0;
    let mut next = || {
        let v = choices.get(k % choices.len().max(1)).copied().unwrap_or(0);
        k += 1;
        v
    };
    let mut s = String::new();
    for (i, seg) in c.split('/').enumerate() {
        if i > 0 {
            s.push('/');
            match next() % 7 {
                1 => s.push_str("./"),
                2 => s.push_str("junk/../"),
                3 => s.push('/'),
                4 => s.push_str("%2e/"),
                5 => s.push_str("j/%2E%2e/"),
                6 => s.push_str("a/b/.././../"),
                _ => {}
            }
        }
        for ch in seg.bytes() {
            match next() % 3 {
                0 => s.push(ch as char),
                1 => s.push_str(&format!("%{ch:02x}")),
                _ => s.push_str(&format!("%{ch:02X}")),
            }
        }
    }
    s
}

const PATH_ROUTES: &str = r#"listen: ["127.0.0.1:0"]
origins:
  ent: { servers: ["127.0.0.1:9"], max_inflight: 10 }
routes:
  - name: visio
    match: { path_prefix: /visio }
    origin: ent
  - name: exam
    match: { path_prefix: /exam/papers/ }
    origin: ent
  - name: search
    match: { path_prefix: "/api/search+v2" }
    origin: ent
  - name: ent
    match: { path_prefix: / }
    origin: ent
"#;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn path_normalization_is_idempotent(target in proptest::collection::vec(any::<u8>(), 0..60),
                                        text in "[/%.a-fA-F0-9;\\\\?#:@~+ -]{0,40}") {
        for input in [target.as_slice(), text.as_bytes()] {
            for p in policies() {
                if let Some(c) = canon(input, &p) {
                    let again = canon(&c, &p);
                    prop_assert_eq!(again.as_deref(), Some(c.as_slice()), "{:?} under {:?}", String::from_utf8_lossy(input), p);
                    prop_assert!(c.is_ascii(), "{:?}", c);
                }
            }
        }
    }

    #[test]
    fn a_lenient_backend_never_reads_outside_what_ecluse_matched(
        text in "(/|\\.|\\.\\.|%2[eEfF]|%5[cC]|%[46][0-9a-fA-F]|%7[0-9a-eA-E]|[a-z]|\\\\|%25|;){0,24}",
    ) {
        // Whatever the backend routes `text` to, the canonical form ecluse matched starts
        // the same (the same path, or it with a trailing `/`): a prefix the backend's path
        // is under, ecluse's is under too.
        let input = format!("/{text}");
        for p in policies() {
            let Some(c) = canon(input.as_bytes(), &p) else { continue };
            if p.escaped_slashes == EscapedSlashes::Keep || p.path_params != PathParams::Reject || !p.merge_slashes {
                continue; // documented as only for a backend that does not read them so
            }
            let ent = lenient(&c);
            let mut want = lenient(input.as_bytes());
            // `case_insensitive` is for a backend that reads any case as one: ecluse
            // forwards the folded form, the same resource to that backend.
            if p.case_insensitive {
                want.make_ascii_lowercase();
            }
            // The same resource; RFC 3986 keeps a trailing `/` where a `.` or `..` ended
            // the path (`/a/.` → `/a/`), which the lenient model drops.
            let with_slash = [want.as_slice(), b"/"].concat();
            prop_assert!(ent == want || ent == with_slash,
                "the ENT reads the forwarded form as the original: {} → {}", input, String::from_utf8_lossy(&c));
            if !c.contains(&b'%') {
                prop_assert!(c == want || c == with_slash,
                    "{} → ecluse {} / ENT {}", input, String::from_utf8_lossy(&c), String::from_utf8_lossy(&want));
            }
        }
    }

    #[test]
    fn every_spelling_of_a_protected_prefix_gets_its_route(
        which in 0usize..4,
        tail in "[a-zA-Z0-9._~-]{0,12}(/[a-zA-Z0-9_~-]{1,8}){0,3}",
        choices in proptest::collection::vec(any::<u8>(), 1..64),
        query in "(\\?[a-z=&%2F./]{0,12})?",
    ) {
        let registry = Retained::default();
        let cfg = check_text(PATH_ROUTES, Path::new("/tmp/fuzz.yaml"), &registry, 1).expect("valid");
        let base = ["/visio", "/exam/papers/", "/api/search+v2/", "/notes/"][which];
        let c = format!("{base}{tail}");
        let p = PathPolicy::default();
        let Some(cc) = canon(c.as_bytes(), &p) else { return Ok(()); };
        let spelled = format!("{}{query}", spell(&c, &choices));
        prop_assert_eq!(lenient(spell(&c, &choices).as_bytes()), lenient(c.as_bytes()), "not a spelling: {}", spelled);
        let sc = canon(spelled.as_bytes(), &p).expect("a spelling of a canonical path is accepted");
        let path_of = |v: &[u8]| v.split(|&b| b == b'?').next().unwrap_or_default().to_vec();
        let route = |path: &[u8]| cfg.router.find("ent.fr", path, &http::Method::GET).map(|r| r.name.clone());
        prop_assert_eq!(route(&path_of(&sc)), route(&cc), "{} → {}", spelled, String::from_utf8_lossy(&sc));
        prop_assert_eq!(path_of(&sc), path_of(&cc), "{}", spelled);
    }

    #[test]
    fn every_case_windows_and_controller_spelling_gets_its_route(
        which in 0usize..4,
        tail in "[a-z0-9_~-]{0,12}(/[a-z0-9_~-]{1,8}){0,3}",
        choices in proptest::collection::vec(any::<u8>(), 1..64),
        controllers in 0usize..3,
    ) {
        // Spellings only a case-insensitive, Windows or PHP backend reads as the path:
        // letters in any case (raw or escaped, or the non-ASCII letters Java and .NET fold
        // to `s` and `i`), trailing dots and spaces on segments, the front controller in
        // front (in any case, repeated). Every one gets the canonical path's route, and
        // under `case_insensitive` the one canonical path (one cache key).
        let registry = Retained::default();
        let cfg = check_text(PATH_ROUTES_FC, Path::new("/tmp/fuzz.yaml"), &registry, 1).expect("valid");
        let base = ["/visio", "/exam/papers/", "/api/search+v2/", "/notes/"][which];
        let c = format!("{base}{tail}");
        let mut k = 0;
        let mut next = || {
            let v = choices.get(k % choices.len()).copied().unwrap_or(0);
            k += 1;
            v
        };
        let mut spelled = String::new();
        for _ in 0..controllers {
            spelled.push_str(if next() % 2 == 0 { "/index.php" } else { "/INDEX.Php." });
        }
        let segs: Vec<&str> = c.split('/').collect();
        let mut decorated = false;
        for (i, seg) in segs.iter().enumerate() {
            if i > 0 {
                spelled.push('/');
            }
            for ch in seg.chars() {
                match (ch, next() % 6) {
                    ('s', 5) => spelled.push_str("%C5%BF"),
                    ('i', 5) => spelled.push_str("%c4%b1"),
                    (ch, 0 | 1) if ch.is_ascii_alphabetic() => spelled.push(ch.to_ascii_uppercase()),
                    (ch, 2) => spelled.push_str(&format!("%{:02X}", ch.to_ascii_uppercase() as u8)),
                    (ch, _) => spelled.push(ch),
                }
            }
            // Trailing dots and spaces on a segment that has a name.
            if !seg.is_empty() && i + 1 < segs.len() {
                let d = match next() % 5 {
                    0 => ".",
                    1 => "%20",
                    2 => ".%20.",
                    _ => "",
                };
                spelled.push_str(d);
                decorated |= !d.is_empty();
            }
        }
        for ci in [false, true] {
            let p = PathPolicy { case_insensitive: ci, ..PathPolicy::default() };
            let Some(cc) = canon(c.as_bytes(), &p) else { return Ok(()); };
            let sc = canon(spelled.as_bytes(), &p).expect("a spelling is accepted");
            let fcs = &cfg.server.front_controllers;
            let key = |v: &[u8]| policy_path(v, fcs).map(|k| k.into_owned());
            let (kc, ks) = (key(&cc), key(&sc));
            prop_assert!(kc.is_ok() && ks.is_ok(), "{} → {:?}", spelled, ks);
            let route = |path: &[u8]| cfg.router.find("ent.fr", path, &http::Method::GET).map(|r| r.name.clone());
            let (kc, ks) = (kc.unwrap_or_default(), ks.unwrap_or_default());
            prop_assert_eq!(route(&ks), route(&kc), "{} → {}", spelled, String::from_utf8_lossy(&ks));
            if ci && controllers == 0 && !decorated {
                // Declared case-insensitive: one canonical path, so one cache key.
                prop_assert_eq!(&sc, &cc, "{}", spelled);
            }
        }
    }
}

const PATH_ROUTES_FC: &str = r#"listen: ["127.0.0.1:0"]
server: { paths: { front_controllers: [/index.php] } }
origins:
  ent: { servers: ["127.0.0.1:9"], max_inflight: 10 }
routes:
  - name: visio
    match: { path_prefix: /Visio }
    origin: ent
  - name: exam
    match: { path_prefix: /exam/papers/ }
    origin: ent
  - name: search
    match: { path_prefix: "/api/search+v2" }
    origin: ent
  - name: ent
    match: { path_prefix: / }
    origin: ent
"#;

/// A Windows backend's reading on top of the lenient one (as `LenientEnt`'s
/// `set_windows_lookalikes`): fullwidth forms are their ASCII character (NFKC, best-fit),
/// a segment `NAME~N` (8.3) is the long name it abbreviates, and case is ignored.
fn windows_reading(path: &[u8]) -> Vec<u8> {
    let ascii: String = String::from_utf8_lossy(&lenient(path))
        .chars()
        .map(|c| match c as u32 {
            0xFF01..=0xFF5E => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            _ => c,
        })
        .collect();
    let long: Vec<String> = ascii
        .split('/')
        .map(|seg| {
            let base = seg.split('.').next().unwrap_or_default();
            match base.rsplit_once('~') {
                Some((_, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                    "the-long-name".to_string()
                }
                _ => seg.to_string(),
            }
        })
        .collect();
    lenient(long.join("/").as_bytes()).to_ascii_lowercase()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn a_windows_backend_reads_what_ecluse_matched_under_case_insensitive(
        text in "(/|\\.|~|[0-9]|[a-zA-Z]|%7[eE]|%EF%BC%8F|%EF%BC%8E|%EF%BC%BC|%EF%BD%96|%EF%BC%B6|%ef%bc%8f|%C2%A5|%C3%A9){0,24}",
    ) {
        // Under `case_insensitive` (a Windows ENT), whatever ecluse accepts a Windows
        // backend reads as the path ecluse matched: no fullwidth character or 8.3 name
        // makes it another one.
        let input = format!("/{text}");
        let p = PathPolicy { case_insensitive: true, ..PathPolicy::default() };
        if let Some(c) = canon(input.as_bytes(), &p) {
            prop_assert_eq!(
                windows_reading(&c),
                lenient(&c).to_ascii_lowercase(),
                "{} → {}", input, String::from_utf8_lossy(&c)
            );
        }
    }
}
