//! The `Cookie` reader (`policy::cookies`: cache credentials, their identity for
//! `cache::auth`, waiting-room tickets, priority classes, rate-limit keys): on any headers
//! and any cookie name it never panics, and
//! - a value it returns is a piece of one of the headers, holding no `;`, `,`, space, tab
//!   or `"`;
//! - a request it reads as anonymous (only ecluse's own cookies, name from the first line)
//!   holds nothing a lenient backend (splitting on `;`, `,` and whitespace) could read as
//!   another cookie, and has no credential items; any other request has some.
//!
//! Input: the cookie name on the first line, then one `Cookie` header value per line.
#![no_main]

use ecluse::policy::cookies::{credential_items, lenient_tokens, only_own, value_of};
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
    let values = || h.get_all(http::header::COOKIE).iter().map(|v| v.as_bytes());
    let own = [name.as_ref()];
    let anonymous = only_own(values(), &own);
    assert_eq!(anonymous, credential_items(values(), &own).is_empty());
    if anonymous {
        for t in values().flat_map(lenient_tokens) {
            let rest = t.strip_prefix(name.as_bytes()).and_then(|r| r.strip_prefix(b"="));
            assert!(
                rest.is_some_and(|r| !r.contains(&b'=') && !r.contains(&b'"')),
                "anonymous, yet a lenient backend reads {:?}",
                String::from_utf8_lossy(t)
            );
        }
    }
    let Some(v) = value_of(values(), &name) else { return };
    assert!(
        !v.contains([';', ',', ' ', '\t', '"']),
        "a value a lenient backend splits: {v:?}"
    );
    let inside = h.get_all(http::header::COOKIE).iter().any(|hv| {
        let b = hv.as_bytes().as_ptr_range();
        let r = v.as_bytes().as_ptr_range();
        b.start <= r.start && r.end <= b.end
    });
    assert!(inside, "the value is not a piece of a header: {v:?}");
});
