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
