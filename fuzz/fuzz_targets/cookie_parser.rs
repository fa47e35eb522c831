//! The `Cookie` header parser (`policy::classes::cookie`, used for waiting-room tickets,
//! priority classes and rate-limit keys): on any headers and any cookie name it never
//! panics, and what it returns is a piece of one of the headers, holding no `;`.
//!
//! Input: the cookie name on the first line, then one `Cookie` header value per line.
#![no_main]

use ecluse::policy::classes::cookie;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|b| *b == b'\n');
    let Some(name) = lines.next() else { return };
    let name = String::from_utf8_lossy(name);
    let mut h = http::HeaderMap::new();
    for line in lines.take(16) {
        if let Ok(v) = http::HeaderValue::from_bytes(line) {
            h.append(http::header::COOKIE, v);
        }
    }
    let Some(v) = cookie(&h, &name) else { return };
    assert!(!v.contains(';'), "a value spans pairs: {v:?}");
    assert!(
        !name.contains(';') && !name.contains('=') && name.trim() == name,
        "name {name:?} cannot appear in a pair, yet matched {v:?}"
    );
    let inside = h.get_all(http::header::COOKIE).iter().any(|hv| {
        let b = hv.as_bytes().as_ptr_range();
        let r = v.as_bytes().as_ptr_range();
        b.start <= r.start && r.end <= b.end
    });
    assert!(inside, "the value is not a piece of a header: {v:?}");
});
