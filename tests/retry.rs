//! Retry safety against an origin that drops requests arriving on reused connections.

mod common;

use common::*;
use ecluse::demo::{DemoOrigin, Fault, OriginOptions};

fn yaml(origin: std::net::SocketAddr) -> String {
    format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
server: {{ threads: 1 }}
access_log: {{ enabled: false }}
origins:
  ent:
    servers: ["{origin}"]
    health_check: {{ disabled: true }}
    passive: {{ max_failures: 0 }}
routes:
  - {{ name: ent, origin: ent }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_is_retried_after_reused_connection_dies_upload_is_not_replayed() {
    let origin = DemoOrigin::start(
        "127.0.0.1:0".parse().expect("addr"),
        OriginOptions::default(),
    )
    .await
    .expect("origin");
    origin.set_fault(Fault::DropReusedRequests);
    let e = Ecluse::start(&yaml(origin.addr()));
    let c = client();

    // 1st GET opens a fresh upstream connection, which ecluse pools.
    assert_eq!(
        c.get(e.url("/healthz")).send().await.expect("req").status(),
        200
    );
    // 2nd GET goes out on the pooled connection; the origin drops it. GET is idempotent
    // and carries no body: ecluse retries on a new connection and the client sees 200.
    let r = c.get(e.url("/healthz")).send().await.expect("req");
    assert_eq!(
        r.status(),
        200,
        "a GET on a dead pooled connection must be retried"
    );
    assert!(e.metric("ecluse_origin_retries_total", &[("origin", "ent")]) >= 1.0);

    // Now an upload on the (again) pooled connection: the origin reads the whole body,
    // records it, and drops the connection. Replaying it would store it twice.
    let body = b"exam paper, final version".to_vec();
    let r = c
        .post(e.url("/files/upload"))
        .body(body.clone())
        .send()
        .await
        .expect("req");
    assert_eq!(
        r.status(),
        502,
        "an upload must not be replayed; the client learns it failed"
    );
    let ups = origin.stats().uploads();
    let total: usize = ups.iter().map(|u| u.count).sum();
    assert_eq!(
        total, 1,
        "the origin received the upload exactly once: {ups:?}"
    );

    // With faults off, an upload goes through once.
    origin.set_fault(Fault::None);
    let r = c
        .post(e.url("/files/upload"))
        .body(b"second".to_vec())
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 201);
    let total: usize = origin.stats().uploads().iter().map(|u| u.count).sum();
    assert_eq!(total, 2);
}
