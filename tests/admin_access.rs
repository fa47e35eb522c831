//! The admin API is closed by default (issue #17, class 5): without `admin.token_file`
//! its mutating endpoints answer only on a loopback listener; anything else is refused by
//! `ecluse check`, `ecluse run` and a live reload, unless ops opt out loudly.

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn policy(admin: &str) -> String {
    format!(
        "listen: [\"127.0.0.1:0\"]\nadmin: {admin}\naccess_log: {{ enabled: false }}\norigins:\n  ent: {{ servers: [\"127.0.0.1:1\"] }}\nroutes:\n  - {{ name: all, origin: ent }}\n"
    )
}

/// `ecluse check` on `yaml` (with `files` beside it): exit code and stderr, the file's
/// path shown as FILE.
fn check(yaml: &str, files: &[(&str, &[u8])]) -> (i32, String) {
    let dir = TempDir::new("admin-check");
    for (n, c) in files {
        std::fs::write(dir.path().join(n), c).expect("write");
    }
    let f = dir.path().join("policy.yaml");
    std::fs::write(&f, yaml).expect("write");
    let out = Command::new(bin())
        .arg("check")
        .arg(&f)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr)
        .replace(&f.display().to_string(), "FILE")
        .replace(&dir.path().display().to_string(), "DIR");
    (out.status.code().unwrap_or(-1), err)
}

/// `ecluse run` on `yaml`, expected to refuse: exit code and stderr.
fn run_refused(yaml: &str, files: &[(&str, &[u8])]) -> (i32, String) {
    let dir = TempDir::new("admin-run");
    for (n, c) in files {
        std::fs::write(dir.path().join(n), c).expect("write");
    }
    let f = dir.path().join("policy.yaml");
    std::fs::write(&f, yaml).expect("write");
    let mut child = Command::new(bin())
        .args(["run", "--config"])
        .arg(&f)
        .env("TMPDIR", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + DEADLINE;
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ecluse run started with an open admin API: {yaml}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let err = String::from_utf8_lossy(&out.stderr).replace(&f.display().to_string(), "FILE");
    (out.status.code().unwrap_or(-1), err)
}

#[test]
fn only_loopback_admin_listeners_may_go_without_a_token() {
    for listen in [
        "127.0.0.1:9090",
        "127.0.0.2:9090",
        "[::1]:9090",
        "[::ffff:127.0.0.1]:9090",
    ] {
        let (code, err) = check(&policy(&format!("{{ listen: \"{listen}\" }}")), &[]);
        assert_eq!(code, 0, "{listen}: {err}");
    }
    // No `admin:` at all: 127.0.0.1:9090.
    let yaml = policy("{}").replace("admin: {}\n", "");
    assert_eq!(check(&yaml, &[]).0, 0);

    for listen in [
        "0.0.0.0:9090",
        "[::]:9090",
        "192.0.2.10:9090",
        "[2001:db8::1]:9090",
        // IPv4-compatible (deprecated), not IPv4-mapped: a real IPv6 address.
        "[::127.0.0.1]:9090",
    ] {
        let yaml = policy(&format!("{{ listen: \"{listen}\" }}"));
        let (code, err) = check(&yaml, &[]);
        assert_eq!(code, 1, "{listen}: {err}");
        assert!(
            err.contains("FILE:2:18: admin.listen: the admin listener")
                && err.contains("is not a loopback address")
                && err.contains("insecure_open_admin_network"),
            "{listen}: {err}"
        );
        let (code, err) = run_refused(&yaml, &[]);
        assert_ne!(code, 0, "{listen}");
        assert!(err.contains("is not a loopback address"), "{listen}: {err}");
        assert!(err.contains("not starting"), "{listen}: {err}");
    }
}

#[test]
fn a_host_name_is_not_a_listen_address() {
    let (code, err) = check(&policy("{ listen: \"localhost:9090\" }"), &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("FILE:2:18: admin.listen: `localhost:9090` is not a listen address")
            && err.contains("`localhost` is a host name: write its IP"),
        "{err}"
    );
}

#[test]
fn token_files_that_are_empty_unreadable_or_not_one_word_are_refused() {
    let admin = "{ listen: \"0.0.0.0:9090\", token_file: admin.token }";
    let cases: [(&[u8], &str); 4] = [
        (b"", "admin.token_file: `DIR/admin.token` is empty"),
        (b"\n  \n", "admin.token_file: `DIR/admin.token` is empty"),
        (
            b"0123456789abcdef 0123456789abcdef\n",
            "holds spaces, line breaks or non-ASCII bytes",
        ),
        (b"short\n", "is shorter than 16 characters"),
    ];
    for (contents, want) in cases {
        let (code, err) = check(&policy(admin), &[("admin.token", contents)]);
        assert_eq!(code, 1, "{contents:?}: {err}");
        assert!(err.contains(want), "{contents:?}: {err}");
        // One problem: the listener is not reported again for a token that is there.
        assert_eq!(err.matches("FILE:2:").count(), 1, "{err}");
    }
    let (code, err) = check(&policy(admin), &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("admin.token_file: cannot read `DIR/admin.token`"),
        "{err}"
    );
    let (code, err) = check(&policy(admin), &[("admin.token", TOKEN.as_bytes())]);
    assert_eq!(code, 0, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opt_out_runs_and_says_so_at_every_start() {
    let yaml = policy("{ listen: \"0.0.0.0:0\", insecure_open_admin_network: true }");
    assert_eq!(check(&yaml, &[]).0, 0);
    for _ in 0..2 {
        let e = Ecluse::start(&yaml);
        let admin = std::net::SocketAddr::from(([127, 0, 0, 1], e.admin.port()));
        eventually("the INSECURE warning", DEADLINE, async || {
            e.stderr_text()
                .contains("INSECURE: the admin API on 0.0.0.0:")
        })
        .await;
        let r = client()
            .post(format!("http://{admin}/admin/reload"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_without_a_token_still_steers_and_an_open_one_never_starts() {
    let e = Ecluse::start(&policy("{ listen: \"127.0.0.1:0\" }"));
    let r = client()
        .post(e.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!e.stderr_text().contains("INSECURE"));
    let (code, err) = run_refused(&policy("{ listen: \"0.0.0.0:0\" }"), &[]);
    assert_ne!(code, 0);
    assert!(err.contains("is not a loopback address"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_cannot_drop_the_token_of_a_listener_that_stays_open() {
    let yaml = policy("{ listen: \"0.0.0.0:0\", token_file: admin.token }");
    let e = Ecluse::start_with(&yaml, &[("admin.token", TOKEN.as_bytes())], |_| {});
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], e.admin.port()));
    let c = client();
    let reload = || {
        c.post(format!("http://{admin}/admin/reload"))
            .bearer_auth(TOKEN)
            .send()
    };
    // The file now says loopback and no token; the listener stays on 0.0.0.0 until a
    // restart, so the reload is refused and the token still guards it.
    e.write_config(&policy("{ listen: \"127.0.0.1:0\" }"));
    let r = reload().await.unwrap();
    assert_eq!(r.status(), 422);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("this process still listens on `0.0.0.0:") && body.contains("restart"),
        "{body}"
    );
    let r = c
        .post(format!("http://{admin}/admin/level"))
        .json(&serde_json::json!({ "level": null }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The same file with the opt-out is accepted (and warned about).
    e.write_config(&policy(
        "{ listen: \"127.0.0.1:0\", insecure_open_admin_network: true }",
    ));
    let r = reload().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    eventually("the INSECURE warning on reload", DEADLINE, async || {
        e.stderr_text().contains("INSECURE: reload")
    })
    .await;
}

/// With a token configured, everything on the admin listener but `/metrics`, `/healthz`
/// and `/readyz` needs it: the state (rooms, node ids, origin addresses) included, any
/// method, any spelling, any endpoint added later; the token opens each of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_only_metrics_and_probes_are_open() {
    let e = Ecluse::start_with(
        &policy("{ listen: \"127.0.0.1:0\", token_file: admin.token }"),
        &[("admin.token", TOKEN.as_bytes())],
        |_| {},
    );
    let c = client();
    for path in ["/metrics", "/healthz", "/readyz"] {
        eventually(path, DEADLINE, async || {
            c.get(e.admin_url(path))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
    }
    let guarded = [
        ("GET", "/admin/state"),
        ("GET", "/admin/state?x=1"),
        ("HEAD", "/admin/state"),
        ("GET", "/admin//state"),
        ("GET", "/admin/./state"),
        ("GET", "/%61dmin/state"),
        ("GET", "/metrics/../admin/state"),
        ("GET", "/admin/"),
        ("GET", "/admin/reload"),
        ("POST", "/admin/reload"),
        ("POST", "/admin/level"),
        ("POST", "/admin/features/x"),
        ("POST", "/admin/rooms/ent/pause"),
        ("POST", "/admin/cache/purge"),
        ("POST", "/admin/cache/warm"),
        ("DELETE", "/admin/state"),
        ("GET", "/admin/added-later"),
        ("GET", "/state"),
    ];
    for (method, path) in guarded {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let r = c
            .request(m.clone(), e.admin_url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{method} {path} without the token");
        assert!(
            r.headers().contains_key("www-authenticate"),
            "{method} {path}"
        );
        let body = r.text().await.unwrap();
        assert!(!body.contains("\"rooms\""), "{method} {path}: {body}");
        let r = c
            .request(m, e.admin_url(path))
            .bearer_auth(format!("{TOKEN}x"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{method} {path} with a wrong token");
    }
    let r = c
        .get(e.admin_url("/admin/state"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let state: serde_json::Value = r.json().await.unwrap();
    assert!(state["origins"].is_array(), "{state}");
}

/// Without a token the admin trusts loopback peers, and a browser on the ops machine is
/// one: a page of another site must not steer it, neither by posting across sites
/// (`Origin`, `Sec-Fetch-Site`) nor through a DNS name rebound to 127.0.0.1 (`Host`).
/// curl, which sends neither, still steers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokenless_admin_refuses_other_sites_and_rebound_names() {
    let e = Ecluse::start(&policy("{ listen: \"127.0.0.1:0\" }"));
    let url = e.admin_url("/admin/reload");
    let own = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("authority")
        .to_string();
    let cases: [(&str, &[(&str, &str)]); 6] = [
        ("cross-site fetch", &[("origin", "http://evil.example")]),
        ("opaque origin", &[("origin", "null")]),
        ("sec-fetch-site", &[("sec-fetch-site", "cross-site")]),
        ("same-site", &[("sec-fetch-site", "same-site")]),
        ("rebound name", &[("host", "evil.example")]),
        (
            "rebound name with port",
            &[("host", "127.0.0.1.evil.example:80")],
        ),
    ];
    for (what, headers) in cases {
        let mut req = client().post(&url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{what}");
        let s = client()
            .get(e.admin_url("/admin/state"))
            .header("host", "evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(s.status(), 401, "state read through a rebound name");
    }
    let r = client()
        .post(&url)
        .header("origin", format!("http://{own}"))
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a page of this listener");
    let r = client().post(&url).send().await.unwrap();
    assert_eq!(r.status(), 200, "curl");
}
