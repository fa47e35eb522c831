//! Request hygiene (`src/proxy/hygiene.rs`): the first check on every request head.
//!
//! That module is private to the proxy, and its file only holds pure functions over
//! `http`/`pingora-http` types, so this target compiles the very same source file in with
//! `#[path]` instead of widening the crate's API. The head is parsed the way
//! pingora-core 0.9 does it (httparse, 256 fields, `Content-Length` dropped when
//! `Transfer-Encoding` is present), then checked with the raw bytes, as the proxy does.
//!
//! Properties: never panics; a refusal is one of the documented statuses; a head that
//! passes has neither both framing headers nor a bare LF.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/proxy/hygiene.rs"]
mod hygiene;

/// The host syntax check hygiene calls as `crate::policy::host` (public in the crate).
mod policy {
    pub use ecluse::policy::host;
}

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::Version;
use libfuzzer_sys::fuzz_target;
use pingora_http::RequestHeader;

fn parse(data: &[u8]) -> Option<(RequestHeader, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(n) = req.parse(data).ok()? else {
        return None;
    };
    let mut h = RequestHeader::build(
        req.method.unwrap_or(""),
        req.path.unwrap_or("").as_bytes(),
        Some(req.headers.len()),
    )
    .ok()?;
    h.set_version(match req.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_09,
    });
    for f in req.headers.iter() {
        let v = http::HeaderValue::from_bytes(f.value).ok()?;
        h.append_header(f.name.to_string(), v).ok()?;
    }
    if h.headers.contains_key(TRANSFER_ENCODING) && h.headers.contains_key(CONTENT_LENGTH) {
        h.remove_header(&CONTENT_LENGTH);
    }
    Some((h, n))
}

fuzz_target!(|data: &[u8]| {
    let Some((req, n)) = parse(data) else { return };
    let raw = &data[..n];
    match hygiene::check_request(&req, Some(raw), &hygiene::Limits::default()) {
        Err(r) => assert!(
            matches!(r.status, 400 | 414 | 431 | 501),
            "unexpected status {r:?}"
        ),
        Ok(()) => {
            let lower = raw.to_ascii_lowercase();
            let has = |name: &[u8]| {
                lower
                    .split(|b| *b == b'\n')
                    .skip(1)
                    .any(|l| l.starts_with(name) && l.get(name.len()) == Some(&b':'))
            };
            assert!(
                !(has(b"content-length") && has(b"transfer-encoding")),
                "passed with both framing headers"
            );
            let bare_lf = raw
                .iter()
                .enumerate()
                .any(|(i, b)| *b == b'\n' && (i == 0 || raw[i - 1] != b'\r'));
            assert!(!bare_lf, "passed with a bare LF");
        }
    }
    // HTTP/2-style (no raw head) must not panic either.
    let _ = hygiene::check_request(&req, None, &hygiene::Limits::default());
});
