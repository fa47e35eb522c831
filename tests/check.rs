//! `ecluse check`: exit codes and FILE:LINE:COL diagnostics, never a panic.

mod common;

use common::*;
use std::process::Command;

fn check(contents: &[u8]) -> (i32, String, String) {
    check_with(contents, &[], &[])
}

/// `ecluse check [ARGS] FILE` with `env` set; FILE is shown as `FILE` in stderr.
fn check_with(contents: &[u8], args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = TempDir::new("check");
    let f = dir.path().join("policy.yaml");
    std::fs::write(&f, contents).expect("write");
    let out = Command::new(bin())
        .arg("check")
        .args(args)
        .arg(&f)
        .envs(env.iter().copied())
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
    // Structural problems and, in the same run, the problems of the sound parts.
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
    for also in [
        "FILE:10:12: routes[1].match: route `files` can never match",
        "FILE:14:13: routes[2].origin: origin `entt` is not defined under `origins` (did you mean `ent`?)",
        "FILE:16:21: server.trusted_proxies[0]: `10.0.0.0/33` is not a CIDR",
    ] {
        assert!(err.contains(also), "missing {also:?} in:\n{err}");
    }
    assert!(err.contains("7 problems found"), "{err}");

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
fn request_body_budgets_are_checked_with_positions() {
    let (code, _, err) = check(
        b"listen: [\"0.0.0.0:8080\"]\nserver:\n  request_bodies: { max_memory: lots, max_per_client: 0 }\norigins:\n  ent: { servers: [\"127.0.0.1:1\"] }\nroutes: [{ name: ent, origin: ent }]\n",
    );
    assert_eq!(code, 1, "{err}");
    for want in [
        "FILE:3:33: server.request_bodies.max_memory: `lots` is not a size",
        "FILE:3:55: server.request_bodies.max_per_client: must be larger than 0",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    // A per-client share smaller than a buffering route's limit: that upload could never
    // be received, so it is refused, naming the route.
    let (code, _, err) = check(
        b"listen: [\"0.0.0.0:8080\"]\nserver:\n  request_bodies: { max_per_client: 1MiB }\norigins:\n  ent: { servers: [\"127.0.0.1:1\"] }\nroutes: [{ name: uploads, origin: ent, max_body_size: 50MB }]\n",
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.lines().any(
            |l| l.starts_with("FILE:3:37: server.request_bodies.max_per_client:")
                && l.contains("route `uploads`")
        ),
        "{err}"
    );
    // The same route streaming, and `max_memory: 0` (every body to disk), are accepted.
    let (code, _, err) = check(
        b"listen: [\"0.0.0.0:8080\"]\nserver:\n  request_bodies: { max_per_client: 1MiB, max_memory: 0 }\norigins:\n  ent: { servers: [\"127.0.0.1:1\"] }\nroutes: [{ name: uploads, origin: ent, max_body_size: 50MB, request_buffering: false }]\n",
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn trust_strong_etags_is_checked_with_positions() {
    // Only `revalidate` routes send a stored copy's validators for credentials; anywhere
    // else the key would promise something it does not do. A wrong type is reported too.
    let (code, _, err) = check(
        b"listen: [\"0.0.0.0:8080\"]\norigins:\n  ent: { servers: [\"127.0.0.1:1\"] }\nroutes:\n  - { name: a, origin: ent, cache: { mode: public, ttl: 1m, trust_strong_etags: true } }\n  - { name: b, origin: ent, cache: { mode: revalidate, trust_strong_etags: maybe } }\n",
    );
    assert_eq!(code, 1, "{err}");
    for want in [
        "FILE:5:",
        "routes[0].cache.trust_strong_etags: only applies to `mode: revalidate`",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(
        err.lines()
            .any(|l| l.starts_with("FILE:6:") && l.contains("trust_strong_etags")),
        "the wrong type is not reported with its position:\n{err}"
    );
    let (code, _, err) = check(
        b"listen: [\"0.0.0.0:8080\"]\norigins:\n  ent: { servers: [\"127.0.0.1:1\"] }\nroutes:\n  - { name: a, origin: ent, cache: { mode: revalidate, stale_if_error: 1h, trust_strong_etags: true } }\n",
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn redis_tls_and_sentinel_are_checked_with_positions() {
    let base = "listen: [\"0.0.0.0:8080\"]\norigins:\n  ent: { servers: [\"127.0.0.1:1\"] }\nroutes:\n  - { name: a, origin: ent }\n";
    // TLS is accepted; skipping the certificate check is not, in any spelling the URL
    // parser takes; Sentinels must all speak TLS or none; `redis` and `sentinel` are
    // exclusive; a CA file must hold a certificate.
    let (code, _, err) =
        check(format!("{base}cluster: {{ redis: \"rediss://redis.lan:6380/\" }}\n").as_bytes());
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = check(
        format!(
            "{base}cluster:\n  redis: \"rediss://redis.lan:6380/#insecure\"\n  sentinel: {{ addresses: [\"redis://10.0.0.1:26379/\", \"rediss://10.0.0.2:26379/#insecure\"], master_name: \"a b\" }}\n  tls_ca_file: policy.yaml\n"
        )
        .as_bytes(),
    );
    assert_eq!(code, 1, "{err}");
    for want in [
        "FILE:7:10: cluster.redis: `rediss://redis.lan:6380/#insecure`: no `#…` fragment",
        "cluster.sentinel: give `redis` or `sentinel`, not both",
        "cluster.sentinel.addresses: the Sentinels speak TLS or they do not",
        "cluster.sentinel.addresses[1]: `rediss://10.0.0.2:26379/#insecure`: no `#…` fragment",
        "cluster.sentinel.master_name: `a b`",
        "cluster.tls_ca_file: ",
        "holds no PEM certificate",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    let (code, _, err) = check(
        format!("{base}cluster: {{ sentinel: {{ addresses: [\"redis://10.0.0.1:26379/\"], master_name: ent }} }}\n").as_bytes(),
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = check(format!("{base}cluster: {{ node_id: a }}\n").as_bytes());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("needs `redis`"), "{err}");
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
        &ecluse::config::runtime::Retained::default(),
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
/// #17: one run shows every problem the file's structure allows, whatever its kind: a
/// wrong type on one key does not hide a missing origin elsewhere, an unknown key in one
/// route does not hide a bad duration in another, several wrong types are all reported;
/// sorted by position, each once.
#[test]
fn every_kind_of_problem_in_one_run() {
    let yaml = b"listen: [\"0.0.0.0:8080\"]
server:
  threads: many
  trusted_proxies: [\"10.0.0.0/33\"]
origins:
  ent: { servers: [\"127.0.0.1:8000\"], max_inflight: lots, read_timeout: 30 }
  files: { servers: [\"127.0.0.1:8001\"], connect_timeout: 2x }
routes:
  - name: files
    match: { path_prefix: /files/, methds: [GET] }
    origin: files
    cache: { mode: revalidat, ttl: 10m }
  - name: visio
    match: { path_prefix: /visio }
    origin: ent
    cache: { mode: shared, ttl: 10parsecs }
  - name: forum
    match: { path_prefix: /forum }
    origin: forums
  - name: all
    match: { path_prefix: / }
    origin: ent
    rate_limits: [{ key: client_ip, rate: fast, burst: 40 }]
";
    let (code, _, err) = check(yaml);
    assert_eq!(code, 1, "{err}");
    let want = [
        "FILE:3:12: server.threads: expected an integer, found string `many`",
        "FILE:4:21: server.trusted_proxies[0]: `10.0.0.0/33` is not a CIDR",
        "FILE:6:53: origins.ent.max_inflight: expected an integer, found string `lots`",
        "FILE:6:73: origins.ent.read_timeout: expected a duration like `30s`, found integer",
        "FILE:7:58: origins.files.connect_timeout: `2x` has an unknown unit",
        "FILE:10:36: routes[0].match: unknown key `methds` (did you mean `methods`?)",
        "FILE:12:20: routes[0].cache.mode: unknown value `revalidat` (did you mean `revalidate`?)",
        "FILE:16:33: routes[1].cache.ttl: `10parsecs`",
        "FILE:19:13: routes[2].origin: origin `forums` is not defined under `origins`",
        "FILE:23:43: routes[3].rate_limits[0].rate: `fast` is not a rate",
    ];
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("FILE:") && !l.starts_with("FILE: "))
        .collect();
    let mut at = Vec::new();
    for w in want {
        let i = lines
            .iter()
            .position(|l| l.starts_with(w))
            .unwrap_or_else(|| panic!("missing {w:?} in:\n{err}"));
        at.push(i);
    }
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "not in file order:\n{err}"
    );
    let mut unique = lines.clone();
    unique.dedup();
    assert_eq!(unique.len(), lines.len(), "a problem twice:\n{err}");
    // The placeholders that stand in for faulty values make no problem of their own.
    assert!(
        !err.contains("ent` is not defined") && !err.contains("must be at least 1"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{} problems found", lines.len())),
        "{err}"
    );
}

/// #17: a file over one of the parser's limits gets a sentence that names the limit, its
/// value and the file's size, never the parser's internal `budget breached: …`.
#[test]
fn each_parser_limit_gets_a_sentence() {
    let anchors_then_aliases = {
        let mut s = String::from("a: [");
        for i in 0..5_100 {
            s.push_str(&format!("&a{i} 1,"));
        }
        s.push_str("]\nb: [");
        for i in 0..50_001 {
            s.push_str(&format!("*a{},", i % 5_100));
        }
        s.push_str("]\n");
        s
    };
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "nodes",
            format!("a: [{}]\n", vec!["1"; 250_001].join(",")).into_bytes(),
            &[
                "more than 250,000 YAML values",
                "(limit 250,000)",
                "the file (488.3 KiB, 1 line)",
                "is it the right file?",
            ],
        ),
        (
            "depth, block",
            (0..70)
                .map(|i| format!("{}k:\n", "  ".repeat(i)))
                .collect::<String>()
                .into_bytes(),
            &["more than 64 levels deep (limit 64)", "70 lines"],
        ),
        (
            "depth, flow",
            format!("a: {}{}\n", "[".repeat(300), "]".repeat(300)).into_bytes(),
            &["more than 64 levels deep (limit 64)"],
        ),
        (
            "alias ratio",
            format!("a: &x 1\nb: [{}]\n", vec!["*x"; 200].join(",")).into_bytes(),
            &["200 aliases (`*name`) for 1 anchor", "billion laughs"],
        ),
        (
            "aliases",
            anchors_then_aliases.into_bytes(),
            &["more than 50,000 aliases (`*name`) (limit 50,000)"],
        ),
        (
            "anchors",
            format!(
                "a: [{}]\n",
                (0..50_001)
                    .map(|i| format!("&a{i} 1"))
                    .collect::<Vec<_>>()
                    .join(",")
            )
            .into_bytes(),
            &["more than 50,000 anchors (`&name`) (limit 50,000)"],
        ),
        (
            "merge keys",
            format!(
                "b: &b {{x: 1}}\nc: [{}]\n",
                vec!["{<<: *b}"; 10_001].join(",")
            )
            .into_bytes(),
            &["more than 10,000 merge keys (`<<`) (limit 10,000)"],
        ),
        (
            "text in values",
            format!("a: {}\n", "x".repeat(9 * 1024 * 1024)).into_bytes(),
            &[
                "more than 8 MiB of text in its values (limit 8 MiB)",
                "the file (9 MiB, 1 line)",
            ],
        ),
        (
            "file size",
            format!("# {}\n", "x".repeat(17 * 1024 * 1024)).into_bytes(),
            &[
                "the file is 17 MiB (limit 16 MiB for a policy file)",
                "is it the right file?",
            ],
        ),
        (
            "second document",
            b"listen: []\n---\nlisten: []\n".to_vec(),
            &["FILE:3:1: a second YAML document starts here, after a `---` line"],
        ),
        (
            "binary",
            b"\x7fELF\x02\x01\x01\x00\x00\x00".to_vec(),
            &["FILE:1:8: the file is binary", "is it the right file?"],
        ),
        (
            "control character",
            b"\x1b[31mlisten: []\n".to_vec(),
            &["FILE:1:1: the file starts with the control character U+001B"],
        ),
        (
            "Latin-1",
            b"listen: []\n# caf\xe9\n".to_vec(),
            &[
                "FILE:2:6: the file is not UTF-8: byte 0xE9",
                "save it as UTF-8",
            ],
        ),
        (
            "UTF-16",
            [
                &[0xFFu8, 0xFE][..],
                &"listen: []\n"
                    .encode_utf16()
                    .flat_map(u16::to_le_bytes)
                    .collect::<Vec<u8>>(),
            ]
            .concat(),
            &["the file is UTF-16", "save it as UTF-8"],
        ),
    ];
    for (what, bytes, sentences) in cases {
        let (code, _, err) = check(&bytes);
        assert_eq!(code, 1, "{what}: {err}");
        for s in sentences {
            assert!(err.contains(s), "{what}: missing {s:?} in:\n{err}");
        }
        assert!(err.contains("FILE:"), "{what}: no position:\n{err}");
        assert!(
            !err.contains("budget") && !err.contains("Budget") && !err.contains("from_str"),
            "{what}: the parser's internals shown:\n{err}"
        );
    }
}

fn json_problems(stdout: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(stdout).expect("stdout is one JSON value");
    v.as_array().expect("a JSON array").clone()
}

/// #19: `--format json` prints one JSON array on stdout, one object per problem with its
/// file, line, column, severity and message; the same problems as the human format.
#[test]
fn json_format_has_every_problem_with_its_fields() {
    let yaml = b"listen: [\"0.0.0.0:8080\"]\norigins:\n  ent: { servers: [\"127.0.0.1:1\"], read_timeout: 30x }\nroutes:\n  - { name: a, origin: ent, typo: 1 }\n  - { name: b, origin: nope }\n";
    let (code, human_out, human) = check(yaml);
    assert_eq!(code, 1);
    assert!(human_out.is_empty(), "{human_out}");
    let (code, out, _) = check_with(yaml, &["--format", "json"], &[]);
    assert_eq!(code, 1, "{out}");
    let problems = json_problems(&out);
    let human_lines: Vec<&str> = human
        .lines()
        .filter(|l| l.starts_with("FILE:") && !l.starts_with("FILE: "))
        .collect();
    assert_eq!(problems.len(), human_lines.len(), "{out}\n{human}");
    assert!(problems.len() >= 3, "{out}");
    for (p, h) in problems.iter().zip(&human_lines) {
        let file = p["file"].as_str().expect("file");
        assert!(file.ends_with("policy.yaml"), "{p}");
        let line = p["line"].as_u64().expect("line");
        let col = p["column"].as_u64().expect("column");
        assert_eq!(p["severity"], "error", "{p}");
        let msg = p["message"].as_str().expect("message");
        assert_eq!(*h, format!("FILE:{line}:{col}: {msg}"), "{p}");
    }
    // A valid file: an empty array, exit 0.
    let (code, out, _) = check_with(
        b"listen: [\"0.0.0.0:8080\"]\norigins:\n  ent: { servers: [\"127.0.0.1:1\"] }\nroutes: [{ name: ent, origin: ent }]\n",
        &["--format", "json"],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    assert!(json_problems(&out).is_empty(), "{out}");
}

/// #19: a config repository's CI checks a policy without the production secrets:
/// `--skip-secrets` turns a missing secret (ticket keys from a file or a variable, the
/// admin token, the TLS pair) into a warning and exits 0, and still fails on a real error
/// or on a secret that is there but wrong.
#[test]
fn skip_secrets_warns_for_missing_secrets_and_still_fails_on_errors() {
    let policy = |extra: &str| {
        format!(
            "listen: [\"0.0.0.0:8080\"]
admin: {{ listen: \"127.0.0.1:9090\", token_file: /nonexistent/admin.token }}
tls: {{ listen: [\"0.0.0.0:8443\"], cert_file: /nonexistent/cert.pem, key_file: /nonexistent/key.pem }}
waiting_rooms:
  ent: {{ active_users: 10, new_users_per_minute: 60, secret_file: /nonexistent/ticket.key }}
  exams: {{ active_users: 10, new_users_per_minute: 60, secret_env: ECLUSE_CHECK_UNSET_KEYS }}
origins:
  ent: {{ servers: [\"127.0.0.1:1\"]{extra} }}
routes:
  - {{ name: exams, match: {{ path_prefix: /exams }}, origin: ent, waiting_room: exams }}
  - {{ name: ent, origin: ent, waiting_room: ent }}
"
        )
    };
    let secrets = [
        ("2:", "admin.token_file: cannot read `/nonexistent/admin.token`"),
        ("3:", "tls.cert_file: cannot read"),
        ("3:", "tls.key_file: cannot read"),
        ("5:", "waiting_rooms.ent.secret_file: cannot read `/nonexistent/ticket.key`"),
        ("6:", "waiting_rooms.exams.secret_env: environment variable `ECLUSE_CHECK_UNSET_KEYS` is not set"),
    ];
    // Without the flag: errors, as always.
    let (code, _, err) = check_with(policy("").as_bytes(), &[], &[]);
    assert_eq!(code, 1, "{err}");
    for (line, s) in secrets {
        assert!(
            err.contains(&format!("FILE:{line}")) && err.contains(s),
            "missing {s:?}:\n{err}"
        );
    }
    assert!(!err.contains("warning"), "{err}");
    // With it: warnings, exit 0.
    let (code, _, err) = check_with(policy("").as_bytes(), &["--skip-secrets"], &[]);
    assert_eq!(code, 0, "{err}");
    for (line, s) in secrets {
        let hit = err.lines().any(|l| {
            l.starts_with(&format!("FILE:{line}")) && l.contains(": warning: ") && l.contains(s)
        });
        assert!(hit, "no warning {s:?}:\n{err}");
    }
    assert!(err.contains("ok (") && err.contains("5 warnings"), "{err}");
    // JSON says which are warnings.
    let (code, out, _) = check_with(
        policy("").as_bytes(),
        &["--skip-secrets", "--format", "json"],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    let problems = json_problems(&out);
    assert_eq!(problems.len(), 5, "{out}");
    assert!(problems.iter().all(|p| p["severity"] == "warning"), "{out}");
    // A real error still fails, with the warnings beside it.
    let (code, _, err) = check_with(
        policy(", read_timeout: 30x").as_bytes(),
        &["--skip-secrets"],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("origins.ent.read_timeout: `30x`"), "{err}");
    assert!(err.contains(": warning: "), "{err}");
    // A secret that is there but wrong is an error, flag or not.
    let (code, _, err) = check_with(
        policy("").as_bytes(),
        &["--skip-secrets"],
        &[("ECLUSE_CHECK_UNSET_KEYS", "k1:short")],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("waiting_rooms.exams.secret_env: keys in $ECLUSE_CHECK_UNSET_KEYS"),
        "{err}"
    );
}

#[test]
fn pages_time_zone_branding_and_templates_are_checked_with_their_file() {
    let dir = TempDir::new("check-pages");
    std::fs::write(
        dir.path().join("broken.j2"),
        "{% extends \"layout\" %}{% block content %}{{ t.title | nosuchfilter }}{% endblock %}",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("fine.j2"),
        "{% extends \"layout\" %}{% block content %}<h1>{{ t.title }}</h1>{% endblock %}",
    )
    .expect("write");
    let run = |pages: &str| {
        let f = dir.path().join("policy.yaml");
        std::fs::write(
            &f,
            format!("listen: [\"0.0.0.0:8080\"]\norigins:\n  ent: {{ servers: [\"127.0.0.1:1\"] }}\nroutes: [{{ name: ent, origin: ent }}]\npages:\n{pages}"),
        )
        .expect("write");
        let out = Command::new(bin())
            .arg("check")
            .arg(&f)
            .output()
            .expect("run");
        let err =
            String::from_utf8_lossy(&out.stderr).replace(&dir.path().display().to_string(), "DIR");
        (out.status.code().unwrap_or(-1), err)
    };
    let (code, err) = run("  time_zone: America/Cayenne\n  brand: { name: Mon ENT, logo_url: /logo.svg, help_url: \"https://aide.example.fr/\", accent: \"#7a1f5c\", accent_dark: \"#ffb3d9\" }\n  templates: { bad_request: fine.j2 }\n");
    assert_eq!(code, 0, "{err}");
    let (code, err) = run("  time_zone: Europe/Pariss\n  brand: { accent: \"#ffff00\", accent_dark: \"#1d4f91\", help_url: \"javascript:alert(1)\" }\n  templates: { rate_limited: broken.j2, shed: missing.j2 }\n");
    assert_eq!(code, 1, "{err}");
    for want in [
        "DIR/policy.yaml:6:14: pages.time_zone: unknown time zone `Europe/Pariss`",
        "pages.brand.accent: `#ffff00` has a contrast of",
        "pages.brand.accent_dark: `#1d4f91` has a contrast of",
        "pages.brand.help_url: `javascript:alert(1)` must start with",
        "pages.templates.shed: cannot read `DIR/missing.j2`",
        "pages.templates.rate_limited: template `DIR/broken.j2` (page `rate_limited`)",
        "nosuchfilter",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}
