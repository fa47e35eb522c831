//! Request ids: one per request, so a pupil's complaint ("it said 502 at 8:03, code …")
//! can be followed from the page to the access log and to the ENT's own logs.
//!
//! An `X-Request-Id` is believed only from a trusted proxy (`server.forwarding`
//! `trusted_proxies`: the load balancer in front already named the request), and only when
//! it is one short value of safe characters: it is written into the access log, pages and
//! headers, so a value that could break a log line, a page or a header is never kept.
//! Anything else gets a fresh UUIDv7 (time-ordered: ids sort by arrival in logs).

/// The header carrying the id, both ways.
pub const HEADER: &str = "x-request-id";

/// Longest id accepted from a trusted proxy (a UUID is 36; AWS and Heroku ids fit).
pub const MAX_LEN: usize = 128;

/// Whether `value` may be kept as an id: 1 to [`MAX_LEN`] bytes of ASCII letters, digits
/// and `-._:@+=/` (UUIDs, ULIDs, base64, `host:counter` forms); no space, quote, angle
/// bracket, `&`, `;`, `%`, `\`, control byte or non-ASCII byte.
pub fn acceptable(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= MAX_LEN
        && value.iter().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'-' | b'.' | b'_' | b':' | b'@' | b'+' | b'=' | b'/')
        })
}

/// A new id: a UUIDv7 in its hyphenated form.
pub fn generate() -> String {
    uuid::Uuid::now_v7().hyphenated().to_string()
}

/// The id of a request: the one value the request carries when the peer is trusted and
/// the value is [`acceptable`], else a new one. Several `X-Request-Id` fields are one
/// ambiguous value: replaced.
pub fn decide<'a>(trusted_peer: bool, mut values: impl Iterator<Item = &'a [u8]>) -> String {
    if trusted_peer {
        if let (Some(v), None) = (values.next(), values.next()) {
            if acceptable(v) {
                // `acceptable` allows ASCII only.
                return String::from_utf8_lossy(v).into_owned();
            }
        }
    }
    generate()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_valid_value_is_kept() {
        let v: &[u8] = b"lb-7f3a:0001";
        assert_eq!(decide(true, [v].into_iter()), "lb-7f3a:0001");
    }

    #[test]
    fn untrusted_value_is_replaced() {
        let v: &[u8] = b"chosen-by-client";
        let id = decide(false, [v].into_iter());
        assert_ne!(id, "chosen-by-client");
        assert!(uuid::Uuid::parse_str(&id).is_ok_and(|u| u.get_version_num() == 7));
    }

    #[test]
    fn unsafe_or_ambiguous_values_are_replaced() {
        let long = vec![b'a'; MAX_LEN + 1];
        let bad: [&[u8]; 8] = [
            b"",
            b"a b",
            b"<script>",
            b"a\"b",
            b"a\r\nx-evil: 1",
            "é".as_bytes(),
            b"a;b",
            &long,
        ];
        for v in bad {
            let id = decide(true, [v].into_iter());
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{v:?} kept as {id}");
        }
        let two: [&[u8]; 2] = [b"a", b"b"];
        assert!(uuid::Uuid::parse_str(&decide(true, two.into_iter())).is_ok());
        assert!(acceptable(&[b'a'; MAX_LEN]));
    }

    #[test]
    fn generated_ids_differ() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert!(acceptable(a.as_bytes()));
    }
}
