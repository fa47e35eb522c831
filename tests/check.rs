//! `ecluse check`: exit codes and FILE:LINE:COL diagnostics, never a panic.

mod common;

use common::*;
use std::process::Command;

fn check(contents: &[u8]) -> (i32, String, String) {
    let dir = TempDir::new("check");
    let f = dir.path().join("policy.yaml");
    std::fs::write(&f, contents).expect("write");
    let out = Command::new(bin())
        .arg("check")
        .arg(&f)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&f.display().to_string(), "FILE");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

#[test]
fn every_shipped_config_is_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("config dir") {
        let p = entry.expect("entry").path();
        if p.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        n += 1;
        // The reference policies read their ticket keys from the environment.
        let out = Command::new(bin())
            .arg("check")
            .arg(&p)
            .env("ECLUSE_TICKET_KEYS", "ci:0123456789abcdef0123456789abcdef")
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{} is invalid:\n{}",
            p.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(n >= 2, "config/ecluse.yaml and config/demo.yaml at least");
}

#[test]
fn reports_every_problem_with_position() {
    let yaml = b"listen: [\"0.0.0.0:8080\"]
admin: { listen: \"127.0.0.1:9090\", tokn_file: x }
origins:
  ent: { servers: [\"127.0.0.1:8000\"], conect_timeout: 2s, read_timeout: 30 }
routes:
  - name: all
    match: { path_prefix: / }
    origin: ent
  - name: files
    match: { path_prefix: /files/ }
    origin: ent
  - name: typo
    match: { path_prefix: /x }
    origin: entt
server:
  trusted_proxies: [\"10.0.0.0/33\"]
";
    let (code, _, err) = check(yaml);
    assert_eq!(code, 1, "{err}");
    // Structural problems come first (all of them), then the file is not built further.
    assert!(
        err.contains("FILE:2:36: admin: unknown key `tokn_file` (did you mean `token_file`?)"),
        "{err}"
    );
    assert!(err.contains("FILE:4:39: origins.ent: unknown key `conect_timeout` (did you mean `connect_timeout`?)"), "{err}");
    assert!(
        err.contains(
            "FILE:4:73: origins.ent.read_timeout: expected a duration like `30s`, found integer"
        ),
        "{err}"
    );
    assert!(err.contains("3 problems found"), "{err}");

    // Fix the keys: semantic problems are all reported together.
    let fixed = String::from_utf8_lossy(yaml)
        .replace("tokn_file: x", "listen: \"127.0.0.1:9090\"")
        .replace(
            "admin: { listen: \"127.0.0.1:9090\", listen:",
            "admin: { listen:",
        )
        .replace("conect_timeout", "connect_timeout")
        .replace("read_timeout: 30 }", "read_timeout: \"30\" }");
    let (code, _, err) = check(fixed.as_bytes());
    assert_eq!(code, 1);
    assert!(
        err.contains("FILE:4:74: origins.ent.read_timeout: `30` has no unit"),
        "{err}"
    );
    assert!(
        err.contains(
            "FILE:10:12: routes[1].match: route `files` can never match: routes[0] (`all`)"
        ),
        "{err}"
    );
    assert!(err.contains("FILE:14:13: routes[2].origin: origin `entt` is not defined under `origins` (did you mean `ent`?)"), "{err}");
    assert!(
        err.contains("FILE:16:21: server.trusted_proxies[0]: `10.0.0.0/33` is not a CIDR"),
        "{err}"
    );
}

#[test]
fn duplicates_and_types() {
    let (code, _, err) = check(
        b"listen: [\"0.0.0.0:8080\"]\norigins:\n  ent: { servers: \"127.0.0.1:1\" }\nroutes: []\nlisten: [\"0.0.0.0:8081\"]\n",
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("FILE:5:1: duplicate key `listen` (first set at line 1:1)"),
        "{err}"
    );
    assert!(
        err.contains("FILE:3:19: origins.ent.servers: expected a list, found string"),
        "{err}"
    );
}

#[test]
fn client_limits_are_checked_with_positions() {
    let (code, _, err) = check(
        b"listen: [\"0.0.0.0:8080\"]\nserver:\n  clients: { max_header_bytes: 4MiB, max_headers: 300, max_request_line: 10, body_min_rate: fast, header_timeout: 0s }\norigins:\n  ent: { servers: [\"127.0.0.1:1\"] }\nroutes: [{ name: ent, origin: ent }]\n",
    );
    assert_eq!(code, 1, "{err}");
    for want in [
        "FILE:3:32: server.clients.max_header_bytes: must be at most 1MiB",
        "FILE:3:51: server.clients.max_headers: must be at most 256",
        "FILE:3:74: server.clients.max_request_line: must be at least 64 bytes",
        "FILE:3:93: server.clients.body_min_rate: `fast` is not a size",
        "FILE:3:115: server.clients.header_timeout: must be longer than 0s",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    // Sizes may be written as plain numbers of bytes.
    let (code, _, err) = check(
        b"listen: [\"0.0.0.0:8080\"]\nserver:\n  clients: { body_min_rate: 500, max_request_line: 4096 }\norigins:\n  ent: { servers: [\"127.0.0.1:1\"] }\nroutes: [{ name: ent, origin: ent }]\n",
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn request_body_limits_are_checked_with_positions() {
    let (code, _, err) = check(
        b"listen: [\"0.0.0.0:8080\"]\nserver:\n  request_bodies: { max_body_size: huge, memory_buffer: 1GiB, max_disk: 0, temp_dir: \"\" }\norigins:\n  ent: { servers: [\"127.0.0.1:1\"] }\nroutes: [{ name: ent, origin: ent, max_body_size: 5 parsecs }]\n",
    );
    assert_eq!(code, 1, "{err}");
    for want in [
        "server.request_bodies.max_body_size: `huge` is not a size",
        "server.request_bodies.memory_buffer: must be at most 64MiB",
        "server.request_bodies.max_disk: must be larger than 0",
        "server.request_bodies.temp_dir: is empty",
        "routes[0].max_body_size: `5 parsecs` has an unknown unit",
    ] {
        assert!(
            err.lines()
                .any(|l| (l.starts_with("FILE:3:") || l.starts_with("FILE:6:")) && l.contains(want)),
            "missing {want:?} in:\n{err}"
        );
    }
    // Sizes like `50MB`, `0` (no limit) and the streaming switch are accepted.
    let (code, _, err) = check(
        b"listen: [\"0.0.0.0:8080\"]\nserver:\n  request_bodies: { max_body_size: 0, memory_buffer: 256KiB }\norigins:\n  ent: { servers: [\"127.0.0.1:1\"] }\nroutes: [{ name: ent, origin: ent, max_body_size: 50MB, request_buffering: false }]\n",
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn garbage_never_panics() {
    let cases: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"\xff\xfe\x00garbage".to_vec(),
        b"[1, 2".to_vec(),
        b"- a\n- b\n".to_vec(),
        b"listen: &a [*a]\n".to_vec(),
        "a: ".repeat(1000).into_bytes(),
        "[".repeat(5000).into_bytes(),
        b"listen: !!binary aGVsbG8=\norigins: {}\nroutes: []\n".to_vec(),
        b"origins:\n  ? [complex, key]\n  : 1\n".to_vec(),
    ];
    for c in cases {
        let (code, _, err) = check(&c);
        assert_eq!(
            code,
            1,
            "input {:?} gave {err}",
            String::from_utf8_lossy(&c)
        );
        assert!(
            err.contains("FILE:"),
            "no position for {:?}: {err}",
            String::from_utf8_lossy(&c)
        );
        assert!(
            !err.contains("panicked") && !err.contains("internal error"),
            "{err}"
        );
    }
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = Command::new(bin())
        .args(["check", "/nonexistent/ecluse.yaml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/ecluse.yaml: cannot read"),
        "{err}"
    );
}

#[test]
fn committed_schema_is_up_to_date() {
    let out = Command::new(bin()).arg("schema").output().expect("run");
    assert!(out.status.success());
    let generated: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/ecluse.schema.json"
        ))
        .expect("config/ecluse.schema.json"),
    )
    .expect("json");
    assert_eq!(
        generated, committed,
        "run `make schema` and commit config/ecluse.schema.json"
    );
}

/// What a policy gets without saying: the admin listener on loopback only, and the
/// client protections on (head deadline, body rate, connection cap, head size limits).
#[test]
fn safe_defaults_admin_on_loopback_and_client_limits_on() {
    let cfg = ecluse::config::check_text(
        "listen: [\"0.0.0.0:8080\"]\norigins:\n  ent: { servers: [\"127.0.0.1:1\"] }\nroutes: [{ name: ent, origin: ent }]\n",
        std::path::Path::new("/tmp/defaults.yaml"),
        &ecluse::config::runtime::Shared::default(),
        1,
    )
    .expect("valid");
    assert!(cfg.admin.listen.ip().is_loopback(), "{}", cfg.admin.listen);
    let c = &cfg.server.clients;
    assert_eq!(c.header_timeout, std::time::Duration::from_secs(10));
    assert!(c.body_min_rate > 0);
    assert!(c.max_connections > 0);
    assert_eq!(
        (c.max_request_line, c.max_header_bytes, c.max_headers),
        (8192, 65536, 100)
    );
}

/// A scheduled opening needs its time zone: `+01:00` and `Z` are read, a bare local time
/// (08:00 where?) is refused with its position.
#[test]
fn event_opening_times_carry_their_time_zone() {
    let policy = |t: &str| {
        format!(
            "listen: [\"0.0.0.0:8080\"]\nwaiting_rooms:\n  ent: {{ active_users: 10, new_users_per_minute: 60, secret_env: K, event: {{ opens_at: \"{t}\" }} }}\norigins:\n  ent: {{ servers: [\"127.0.0.1:1\"] }}\nroutes: [{{ name: ent, origin: ent, waiting_room: ent }}]\n"
        )
    };
    let run = |t: &str| {
        let dir = TempDir::new("check-event");
        let f = dir.path().join("policy.yaml");
        std::fs::write(&f, policy(t)).expect("write");
        let out = Command::new(bin())
            .arg("check")
            .arg(&f)
            .env("K", "k1:0123456789abcdef0123456789abcdef")
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr).replace(&f.display().to_string(), "FILE");
        (out.status.code().unwrap_or(-1), err)
    };
    for ok in ["2026-03-16T08:00:00+01:00", "2026-03-16T07:00:00Z"] {
        let (code, err) = run(ok);
        assert_eq!(code, 0, "{ok}: {err}");
    }
    let (code, err) = run("2026-03-16T08:00:00");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("FILE:3:")
            && err.contains("waiting_rooms.ent.event.opens_at")
            && err.contains("time zone"),
        "{err}"
    );
}

#[test]
fn forwarding_settings_are_checked_with_positions() {
    let (code, _, err) = check(
        b"listen: [\"127.0.0.1:8080\"]\nserver:\n  forwarding: { strip_from_untrusted: [\"bad name\"], pass_through: [X-Not-Ours, x_original_url], odd_header_names: maybe }\norigins:\n  ent: { servers: [\"127.0.0.1:1\"] }\nroutes: [{ name: ent, origin: ent }]\n",
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("FILE:3:") && err.contains("odd_header_names"),
        "{err}"
    );
    let (code, _, err) = check(
        b"listen: [\"127.0.0.1:8080\"]\nserver:\n  forwarding: { strip_from_untrusted: [\"bad name\"], pass_through: [X-Not-Ours, x_original_url] }\norigins:\n  ent: { servers: [\"127.0.0.1:1\"] }\nroutes: [{ name: ent, origin: ent }]\n",
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(
            "FILE:3:40: server.forwarding.strip_from_untrusted[0]: `bad name` is not a header name"
        ),
        "{err}"
    );
    assert!(
        err.contains("FILE:3:68: server.forwarding.pass_through[0]: `X-Not-Ours` is not one of the headers ecluse removes"),
        "{err}"
    );
    // A spelling of a built-in name is that name.
    assert!(!err.contains("x_original_url"), "{err}");
    assert!(err.contains("2 problems found"), "{err}");
}
