//! Short property-test versions of the fuzz targets (hardening): whatever the input, the
//! config loader, the route matcher and the cookie parser answer without panicking, and
//! the loader's every problem carries a position.

use std::path::Path;

use ecluse::config::check_text;
use ecluse::config::runtime::Shared;
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
        }
    }
}
