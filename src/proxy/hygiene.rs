//! Request hygiene at the edge: refuse, before any other phase, an HTTP request whose
//! framing or syntax a downstream parser could read differently from ours.
//!
//! pingora-core 0.9.1 (`protocols/http/v1/server.rs`, httparse with its default config)
//! already answers 400 and closes for: differing or malformed `Content-Length`, a final
//! transfer coding other than `chunked`, `Transfer-Encoding` on HTTP/1.0, obs-fold,
//! whitespace before the colon, bare CR, NUL and other controls in field lines, two
//! `Host` fields, more than 256 fields, a head over 1 MiB. What it lets through, and
//! this module refuses:
//!
//! | request                                            | pingora 0.9.1                        | here |
//! |----------------------------------------------------|--------------------------------------|------|
//! | `Content-Length` and `Transfer-Encoding`           | drops CL, forwards chunked           | 400  |
//! | `Content-Length: 5, 5` / two identical CL lines    | forwards the list as sent            | 400  |
//! | a coding besides `chunked` (`gzip, chunked`)       | forwards as plain `chunked` (!)      | 501  |
//! | `chunked` applied twice                            | forwards                             | 400  |
//! | bare LF line endings                               | accepts (httparse), re-serialises    | 400  |
//! | HTTP/1.1 without `Host`                            | forwards                             | 400  |
//! | `Host` (or an absolute-form authority) that is no host: spaces, `%`, `,`, `/`, a bad port (`policy::host`) | forwards | 400 |
//! | HTTP/1.0 POST/PUT/PATCH without `Content-Length`   | forwards as body-less                | 400  |
//! | request line over `max_request_line`               | forwards up to ~64 KiB               | 414  |
//! | header section over `max_header_bytes`             | forwards up to 1 MiB                 | 431  |
//! | more than `max_headers` fields                     | forwards up to 256                   | 431  |
//!
//! The checks pingora already makes are repeated on the raw head where that is cheap, so a
//! more lenient pingora (its `patched_http1` feature parses with `parse_unchecked`, or a
//! future httparse config) cannot silently reopen them.
//!
//! This file only holds pure functions. `ProxyHttp::request_filter` (src/proxy/request.rs)
//! calls [`check_request`] first, before the in-flight gauge, routing or anything else; a
//! refusal is answered with its status, `Connection: close`, and keep-alive off (whatever
//! follows the head on that connection is unframed, so it is never read). Pipelined
//! requests are then answered in order (RFC 9112 §9.3.2; pingora's default closes after
//! the first).
//!
//! `ctx.config` stays `None` on that path, so `logging` neither decrements the in-flight
//! gauge (never incremented) nor attributes the request to a route.

use http::header::{HeaderName, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{Method, Version};
use pingora_http::RequestHeader;

/// The parsed request head the checks read: pingora's [`RequestHeader`], or the fields of
/// a status poll parsed below pingora (`fast_status.rs`), checked by the same rules without
/// building a header map.
pub trait Head {
    fn method(&self) -> &Method;
    fn version(&self) -> Version;
    /// The request-target as the request line carries it.
    fn raw_target(&self) -> &[u8];
    /// The values of the fields named `name`, in order.
    fn values<'s>(&'s self, name: &HeaderName) -> impl Iterator<Item = &'s [u8]>;
    /// Every field, in order.
    fn fields(&self) -> impl Iterator<Item = (&str, &[u8])>;
    fn field_count(&self) -> usize;
}

impl Head for RequestHeader {
    fn method(&self) -> &Method {
        &self.method
    }
    fn version(&self) -> Version {
        self.version
    }
    fn raw_target(&self) -> &[u8] {
        self.raw_path()
    }
    fn values<'s>(&'s self, name: &HeaderName) -> impl Iterator<Item = &'s [u8]> {
        self.headers.get_all(name).into_iter().map(|v| v.as_bytes())
    }
    fn fields(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes()))
    }
    fn field_count(&self) -> usize {
        self.headers.len()
    }
}

/// Why a request is refused: the status to answer (always with `Connection: close`) and a
/// stable snake_case code for the access log's `decision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub reason: &'static str,
}

const fn reject(status: u16, reason: &'static str) -> Reject {
    Reject { status, reason }
}

/// Size limits on the request head. pingora's own are fixed (1 MiB head, 256 fields) and
/// answer 400; these answer 414/431 well below them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request line, without its CRLF (`GET /path?query HTTP/1.1`) → 414 above it.
    pub max_request_line: usize,
    /// All field lines together, CRLFs included, without the request line and the final
    /// blank line → 431 above it.
    pub max_header_bytes: usize,
    /// Number of field lines → 431 above it.
    pub max_headers: usize,
}

impl Default for Limits {
    /// 8 KiB request line (nginx's `large_client_header_buffers`, Apache's
    /// `LimitRequestLine`), 64 KiB of fields (room for an ENT's SSO cookies), 100 fields
    /// (Apache's `LimitRequestFields`, hyper's default).
    fn default() -> Self {
        Limits {
            max_request_line: 8 * 1024,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
        }
    }
}

/// Check one request head. `raw_head` is the head as received on HTTP/1.x
/// (`session.as_http1().map(|h| h.get_headers_raw_bytes())`: request line, field lines
/// and the blank line, before pingora drops or merges anything); `None` for HTTP/2 and
/// subrequests, where only the parsed header is checked.
pub fn check_request(
    req: &impl Head,
    raw_head: Option<&[u8]>,
    limits: &Limits,
) -> Result<(), Reject> {
    let raw = match raw_head {
        Some(raw) => Some(check_raw_head(raw, limits)?),
        None => None,
    };
    if raw.is_none() {
        check_parsed_limits(req, limits)?;
    }

    // RFC 9112 §6.1: both is a smuggling attempt or a broken client; pingora removes
    // Content-Length before we see the header, so the raw head is what tells.
    let has_te = req.values(&TRANSFER_ENCODING).next().is_some()
        || raw.as_ref().is_some_and(|r| r.transfer_encoding);
    let has_cl = req.values(&CONTENT_LENGTH).next().is_some()
        || raw.as_ref().is_some_and(|r| r.content_length);
    if has_te && has_cl {
        return Err(reject(400, "content_length_and_transfer_encoding"));
    }
    check_content_length(req)?;
    if has_te {
        if req.version() == Version::HTTP_10 {
            // RFC 9112 §6.1: faulty framing.
            return Err(reject(400, "transfer_encoding_on_http10"));
        }
        check_transfer_encoding(req)?;
    }

    // RFC 9112 §3.2: exactly one Host in HTTP/1.1 (HTTP/1.0 may omit it; HTTP/2 uses
    // :authority).
    let hosts = req.values(&HOST).count();
    if hosts > 1 {
        return Err(reject(400, "duplicate_host"));
    }
    if hosts == 0 && req.version() == Version::HTTP_11 {
        return Err(reject(400, "missing_host"));
    }
    // RFC 9110 §7.2: the host's syntax (`policy::host`): no userinfo, spaces, escapes or
    // bad port ever reaches a route, the cache key or the ENT. The authority of an
    // absolute-form target is checked alike: it is the request's host (RFC 9112 §3.2.2).
    // An empty `Host` stays allowed (RFC 9112 §3.2: a target without authority); it
    // names no host, so no host route takes it.
    if let Some(h) = req.values(&HOST).next().filter(|h| !h.is_empty()) {
        crate::policy::host::parse(h).map_err(|_| reject(400, "bad_host"))?;
    }
    if let Some(a) = absolute_authority(req.raw_target()) {
        crate::policy::host::parse(a).map_err(|_| reject(400, "bad_host"))?;
    }

    // RFC 1945 §7.2.2 / §8.3: an HTTP/1.0 request with a body must carry a valid
    // Content-Length, and a server that cannot determine the length should answer 400.
    // Without it we cannot tell "no body" from "unframed body", so we do not guess.
    if req.version() == Version::HTTP_10
        && !has_cl
        && matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH)
    {
        return Err(reject(400, "http10_body_without_length"));
    }
    Ok(())
}

/// The authority of an absolute-form target (`http://AUTHORITY/...`), if it is one.
pub fn absolute_authority(target: &[u8]) -> Option<&[u8]> {
    let lower = |n: usize| target.get(..n).map(<[u8]>::to_ascii_lowercase);
    let rest = if lower(7).as_deref() == Some(b"http://") {
        &target[7..]
    } else if lower(8).as_deref() == Some(b"https://") {
        &target[8..]
    } else {
        return None;
    };
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Whether a refusal is about the host: answered with ecluse's bad-request page (HTML or
/// JSON), not an empty 400, so a browser or an ENT's API client shows what went wrong.
pub fn is_host_problem(r: &Reject) -> bool {
    matches!(r.reason, "missing_host" | "duplicate_host" | "bad_host")
}

/// Check the request's host against this deployment's ports and rewrite it into its one
/// spelling (`policy::host::admit`), where every later reader finds it: the `Host` header
/// over HTTP/1; over HTTP/2 the URI's authority (`:authority`, from which pingora writes
/// the `Host` an HTTP/1 ENT receives) and a `Host` beside it, which must name the same
/// host. So the route, the cache key, the access log and the ENT read one spelling over
/// HTTP/1 and HTTP/2 alike. `Err`: 400 (bad or conflicting host) or 421 (a port that is
/// not this deployment's), with the access log's decision.
pub fn spell_host(
    req: &mut RequestHeader,
    ports: &crate::policy::host::Ports,
) -> Result<(), Reject> {
    use crate::policy::host::{admit, Refusal};
    let refuse = |r: Refusal| match r {
        Refusal::Bad(_) => reject(400, r.code()),
        Refusal::Misdirected { .. } => reject(421, r.code()),
    };
    let bad = || reject(400, "bad_host");
    if let Some(a) = req
        .uri
        .authority()
        .filter(|_| req.version == Version::HTTP_2)
    {
        let one = admit(a.as_str().as_bytes(), ports).map_err(refuse)?;
        let mut hosts = req.headers.get_all(HOST).iter();
        if let Some(h) = hosts.next() {
            if hosts.next().is_some() {
                return Err(reject(400, "duplicate_host"));
            }
            // RFC 9113 §8.3.1: a `Host` naming another host than `:authority` (port
            // included) is malformed.
            if admit(h.as_bytes(), ports).map_err(refuse)? != one {
                return Err(reject(400, "host_mismatch"));
            }
        }
        if a.as_str() != one {
            let mut parts = req.uri.clone().into_parts();
            parts.authority =
                Some(http::uri::Authority::try_from(one.as_str()).map_err(|_| bad())?);
            let uri = http::Uri::from_parts(parts).map_err(|_| bad())?;
            req.set_uri(uri);
        }
        if req.headers.contains_key(HOST) {
            req.insert_header(HOST, one.as_str()).map_err(|_| bad())?;
        }
        return Ok(());
    }
    let Some(h) = req.headers.get(HOST).filter(|h| !h.is_empty()) else {
        // HTTP/1.0 without a host, or an empty one: nothing to spell (`check_request`
        // refuses a missing one on HTTP/1.1).
        return Ok(());
    };
    let one = admit(h.as_bytes(), ports).map_err(refuse)?;
    if one.as_bytes() != h.as_bytes() {
        req.insert_header(HOST, one.as_str()).map_err(|_| bad())?;
    }
    Ok(())
}

/// What the raw head says that the parsed header may no longer show.
struct RawFacts {
    content_length: bool,
    transfer_encoding: bool,
}

fn check_raw_head(raw: &[u8], limits: &Limits) -> Result<RawFacts, Reject> {
    // Line endings first: with bare CR or LF ruled out, "\r\n" splits lines exactly.
    // (Only the CR, LF and NUL bytes are visited, first to last.)
    for i in memchr::memchr3_iter(b'\n', b'\r', 0, raw) {
        match raw[i] {
            b'\n' if i == 0 || raw[i - 1] != b'\r' => return Err(reject(400, "bare_lf")),
            b'\r' if raw.get(i + 1) != Some(&b'\n') => return Err(reject(400, "bare_cr")),
            0 => return Err(reject(400, "nul_byte")),
            _ => {}
        }
    }
    // `raw.split(|&b| b == b'\n')`, each line found with memchr.
    let mut rest = Some(raw);
    let mut lines = std::iter::from_fn(move || {
        let r = rest?;
        Some(match memchr::memchr(b'\n', r) {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                &r[..i]
            }
            None => {
                rest = None;
                r
            }
        })
    })
    .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    if request_line.len() > limits.max_request_line {
        return Err(reject(414, "request_line_too_long"));
    }
    let mut facts = RawFacts {
        content_length: false,
        transfer_encoding: false,
    };
    let (mut count, mut bytes) = (0usize, 0usize);
    for line in lines {
        if line.is_empty() {
            // The blank line ending the head (or the empty tail after it).
            break;
        }
        count += 1;
        bytes += line.len() + 2;
        if count > limits.max_headers {
            return Err(reject(431, "too_many_headers"));
        }
        if bytes > limits.max_header_bytes {
            return Err(reject(431, "header_too_large"));
        }
        if matches!(line[0], b' ' | b'\t') {
            // RFC 9112 §5.2.
            return Err(reject(400, "obs_fold"));
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            return Err(reject(400, "field_without_colon"));
        };
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            // RFC 9112 §5.1: no whitespace between name and colon (and a token name).
            return Err(reject(400, "bad_field_name"));
        }
        // Every byte looked at (no early exit), so that the loop vectorises.
        let control = line[colon + 1..]
            .iter()
            .fold(false, |c, &b| c | (b < 0x20 && b != b'\t') | (b == 0x7f));
        if control {
            return Err(reject(400, "control_in_field_value"));
        }
        facts.content_length |= name.eq_ignore_ascii_case(b"content-length");
        facts.transfer_encoding |= name.eq_ignore_ascii_case(b"transfer-encoding");
    }
    Ok(facts)
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

/// [`is_tchar`] for every byte.
const TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        i += 1;
    }
    t
};

/// The same limits from the parsed header, for requests without a raw head (HTTP/2): the
/// sizes are counted as the HTTP/1.1 serialisation of the header would be.
fn check_parsed_limits(req: &impl Head, limits: &Limits) -> Result<(), Reject> {
    // "METHOD SP target SP HTTP/1.1"
    let line = req.method().as_str().len() + 1 + req.raw_target().len() + 9;
    if line > limits.max_request_line {
        return Err(reject(414, "request_line_too_long"));
    }
    if req.field_count() > limits.max_headers {
        return Err(reject(431, "too_many_headers"));
    }
    let bytes: usize = req.fields().map(|(k, v)| k.len() + 2 + v.len() + 2).sum();
    if bytes > limits.max_header_bytes {
        return Err(reject(431, "header_too_large"));
    }
    Ok(())
}

/// Exactly one `Content-Length` field whose value is `1*DIGIT` (RFC 9110 §8.6). Identical
/// duplicates and lists are refused rather than collapsed: an edge must not forward a
/// framing field the next hop may read differently.
fn check_content_length(req: &impl Head) -> Result<(), Reject> {
    let name = CONTENT_LENGTH;
    let mut values = req.values(&name);
    let Some(v) = values.next() else {
        return Ok(());
    };
    if values.next().is_some() {
        return Err(reject(400, "duplicate_content_length"));
    }
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        // 19 digits always fit in a u64; more is either padding or a lie.
        return Err(reject(400, "bad_content_length"));
    }
    Ok(())
}

/// RFC 9112 §6.1/§7: `chunked` must be the final coding and appear once; ecluse implements
/// no other transfer coding and, rather than forward a coding the origin will probably not
/// decode either, answers 501 ("A server that receives a request message with a transfer
/// coding it does not understand SHOULD respond with 501").
fn check_transfer_encoding(req: &impl Head) -> Result<(), Reject> {
    let mut chunked = 0usize;
    let mut last_is_chunked = false;
    let mut other = false;
    for value in req.values(&TRANSFER_ENCODING) {
        for token in value.split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.is_empty() {
                return Err(reject(400, "empty_transfer_coding"));
            }
            last_is_chunked = token.eq_ignore_ascii_case(b"chunked");
            if last_is_chunked {
                chunked += 1;
            } else {
                other = true;
            }
        }
    }
    if !last_is_chunked {
        return Err(reject(400, "transfer_encoding_not_chunked_final"));
    }
    if chunked > 1 {
        return Err(reject(400, "chunked_twice"));
    }
    if other {
        return Err(reject(501, "transfer_coding_not_implemented"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parsed header built the way pingora builds it, plus the raw head it came from.
    fn parse(raw: &str) -> (RequestHeader, Vec<u8>) {
        let mut lines = raw.split("\r\n");
        let mut first = lines.next().unwrap().split(' ');
        let method = first.next().unwrap();
        let path = first.next().unwrap();
        let version = first.next().unwrap();
        let mut req = RequestHeader::build(method, path.as_bytes(), None).unwrap();
        req.set_version(if version == "HTTP/1.0" {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        });
        for l in lines.take_while(|l| !l.is_empty()) {
            let (k, v) = l.split_once(':').unwrap();
            req.append_header(k.trim().to_string(), v.trim()).unwrap();
        }
        (req, raw.as_bytes().to_vec())
    }

    fn check(raw: &str) -> Result<(), Reject> {
        let (req, bytes) = parse(raw);
        check_request(&req, Some(&bytes), &Limits::default())
    }

    fn status(raw: &str) -> u16 {
        check(raw).err().map_or(200, |r| r.status)
    }

    #[test]
    fn tchar_is_rfc9110_token_char() {
        let listed = b"!#$%&'*+-.^_`|~";
        for b in 0..=255u8 {
            let want = b.is_ascii_alphanumeric() || listed.contains(&b);
            assert_eq!(is_tchar(b), want, "byte {b:#04x}");
        }
    }

    #[test]
    fn ordinary_requests_pass() {
        for raw in [
            "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /a?b=c HTTP/1.1\r\nHost: x:8080\r\nAccept: */*\r\nCookie: a=b\r\n\r\n",
            "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
            "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n",
            // HTTP/1.1 POST without a length has an empty body (RFC 9112 §6.3).
            "POST /a HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "POST /a HTTP/1.0\r\nContent-Length: 3\r\n\r\n",
            "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX-Tab:\ta\tb\r\nX-Obs-Text: caf\u{e9}\r\n\r\n",
        ] {
            assert_eq!(check(raw), Ok(()), "{raw:?}");
        }
    }

    #[test]
    fn content_length_with_transfer_encoding_is_400_even_after_pingora_drops_cl() {
        let raw =
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (mut req, bytes) = parse(raw);
        assert_eq!(
            check_request(&req, Some(&bytes), &Limits::default()),
            Err(reject(400, "content_length_and_transfer_encoding"))
        );
        // What pingora hands to request_filter: CL already removed.
        req.remove_header(&CONTENT_LENGTH);
        assert_eq!(
            check_request(&req, Some(&bytes), &Limits::default()),
            Err(reject(400, "content_length_and_transfer_encoding"))
        );
        // Header names are case-insensitive, order does not matter.
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\ncontent-LENGTH: 0\r\n\r\n"),
            400
        );
        // Without the raw head (HTTP/2), the parsed header still tells when both remain.
        let (req, _) = parse(raw);
        assert!(check_request(&req, None, &Limits::default()).is_err());
    }

    #[test]
    fn content_length_must_be_one_field_of_digits() {
        for v in [
            "1,2",
            "5, 5",
            "+5",
            "-1",
            "abc",
            "0x5",
            "5 5",
            "",
            "99999999999999999999",
        ] {
            let raw = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {v}\r\n\r\n");
            assert_eq!(status(&raw), 400, "{v:?}");
        }
        assert_eq!(
            check("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            Err(reject(400, "duplicate_content_length"))
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1234567890123456789\r\n\r\n"),
            200
        );
    }

    #[test]
    fn transfer_encoding_is_plain_chunked_or_refused() {
        let te = |v: &str| {
            check(&format!(
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {v}\r\n\r\n"
            ))
        };
        assert_eq!(te("chunked"), Ok(()));
        assert_eq!(te("CHUNKED"), Ok(()));
        assert_eq!(te("gzip").unwrap_err().status, 400);
        assert_eq!(te("chunked, gzip").unwrap_err().status, 400);
        assert_eq!(te("identity").unwrap_err().status, 400);
        assert_eq!(te("xchunked").unwrap_err().status, 400);
        assert_eq!(te("chunked;x=1").unwrap_err().status, 400);
        assert_eq!(te("chunked,").unwrap_err().status, 400);
        assert_eq!(te(", chunked").unwrap_err().status, 400);
        assert_eq!(te("chunked, chunked"), Err(reject(400, "chunked_twice")));
        assert_eq!(
            te("gzip, chunked"),
            Err(reject(501, "transfer_coding_not_implemented"))
        );
        assert_eq!(te("deflate ,chunked").unwrap_err().status, 501);
        // Across several field lines, the last coding of the last line is final.
        let two = |a: &str, b: &str| {
            status(&format!(
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {a}\r\nTransfer-Encoding: {b}\r\n\r\n"
            ))
        };
        assert_eq!(two("gzip", "chunked"), 501);
        assert_eq!(two("chunked", "gzip"), 400);
        assert_eq!(two("chunked", "chunked"), 400);
        assert_eq!(
            check("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(reject(400, "transfer_encoding_on_http10"))
        );
    }

    #[test]
    fn raw_line_syntax() {
        let cases = [
            ("GET / HTTP/1.1\nHost: x\n\n", "bare_lf"),
            ("GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", "bare_lf"),
            ("GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", "bare_cr"),
            ("GET / HTTP/1.1\r\nHost: x\r\nX: a\r\r\n\r\n", "bare_cr"),
            ("GET / HTTP/1.1\r\nHost: x\r\nX: a\0b\r\n\r\n", "nul_byte"),
            (
                "GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
                "obs_fold",
            ),
            (
                "GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n\tb\r\n\r\n",
                "obs_fold",
            ),
            ("GET / HTTP/1.1\r\n Host: x\r\n\r\n", "obs_fold"),
            ("GET / HTTP/1.1\r\nHost : x\r\n\r\n", "bad_field_name"),
            ("GET / HTTP/1.1\r\nHost\t: x\r\n\r\n", "bad_field_name"),
            ("GET / HTTP/1.1\r\nHo st: x\r\n\r\n", "bad_field_name"),
            ("GET / HTTP/1.1\r\n: x\r\nHost: x\r\n\r\n", "bad_field_name"),
            (
                "GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n",
                "field_without_colon",
            ),
            (
                "GET / HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n",
                "control_in_field_value",
            ),
            (
                "GET / HTTP/1.1\r\nHost: x\r\nX: a\x7fb\r\n\r\n",
                "control_in_field_value",
            ),
        ];
        for (raw, reason) in cases {
            // The raw checks alone: these heads need not be buildable into a RequestHeader.
            let req = RequestHeader::build("GET", b"/", None).unwrap();
            let mut req = req;
            req.insert_header("host", "x").unwrap();
            assert_eq!(
                check_request(&req, Some(raw.as_bytes()), &Limits::default()),
                Err(reject(400, reason)),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn host_rules() {
        assert_eq!(
            check("GET / HTTP/1.1\r\n\r\n"),
            Err(reject(400, "missing_host"))
        );
        assert_eq!(
            check("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Err(reject(400, "duplicate_host"))
        );
        assert_eq!(check("GET / HTTP/1.0\r\n\r\n"), Ok(()));
        // An empty Host is valid (RFC 9112 §3.2: a target without authority).
        assert_eq!(check("GET / HTTP/1.1\r\nHost:\r\n\r\n"), Ok(()));
        // HTTP/2 carries :authority; a request without Host is fine there.
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.set_version(Version::HTTP_2);
        assert_eq!(check_request(&req, None, &Limits::default()), Ok(()));
    }

    #[test]
    fn http10_body_methods_need_a_length() {
        for m in ["POST", "PUT", "PATCH"] {
            assert_eq!(
                check(&format!("{m} /a HTTP/1.0\r\nHost: x\r\n\r\n")),
                Err(reject(400, "http10_body_without_length")),
                "{m}"
            );
            assert_eq!(
                check(&format!(
                    "{m} /a HTTP/1.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                )),
                Ok(())
            );
        }
        assert_eq!(check("DELETE /a HTTP/1.0\r\n\r\n"), Ok(()));
    }

    #[test]
    fn limits_answer_414_and_431() {
        let l = Limits {
            max_request_line: 100,
            max_header_bytes: 200,
            max_headers: 5,
        };
        let run = |raw: &str| {
            let (req, bytes) = parse(raw);
            let with_raw = check_request(&req, Some(&bytes), &l);
            let parsed_only = check_request(&req, None, &l);
            assert_eq!(
                with_raw.map_err(|r| r.status),
                parsed_only.map_err(|r| r.status),
                "{raw:?}"
            );
            with_raw
        };
        // "GET /aaa… HTTP/1.1" of exactly 100 bytes passes, 101 does not.
        let path = |n: usize| format!("/{}", "a".repeat(n - 1));
        let at = format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", path(100 - 13));
        assert_eq!(run(&at), Ok(()));
        let over = format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", path(101 - 13));
        assert_eq!(run(&over), Err(reject(414, "request_line_too_long")));

        let fields = |n: usize| {
            let mut r = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
            for i in 1..n {
                r.push_str(&format!("X-{i}: v\r\n"));
            }
            r + "\r\n"
        };
        assert_eq!(run(&fields(5)), Ok(()));
        assert_eq!(run(&fields(6)), Err(reject(431, "too_many_headers")));

        // "Host: x\r\n" is 9 bytes; one more field of 191 bytes reaches exactly 200.
        let big = |n: usize| format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n", "v".repeat(n));
        assert_eq!(run(&big(191 - 5)), Ok(()));
        assert_eq!(run(&big(192 - 5)), Err(reject(431, "header_too_large")));
    }

    #[test]
    fn the_host_must_be_one_well_formed_host() {
        for h in [
            "ent.fr",
            "ENT.fr.",
            "ent.fr:80",
            "ent.fr:",
            "127.0.0.1:8080",
            "[::1]:443",
        ] {
            let raw = format!("GET / HTTP/1.1\r\nHost: {h}\r\n\r\n");
            assert_eq!(check(&raw), Ok(()), "{h}");
        }
        for h in [
            "user@ent.fr",
            "ent.fr@evil.fr",
            "ent fr",
            "ent.fr:8o",
            "ent.fr:99999",
            "ent.fr:80:80",
            "ent%2efr",
            "ent.fr/x",
            "[::1",
            "ent.fr,evil.fr",
        ] {
            let raw = format!("GET / HTTP/1.1\r\nHost: {h}\r\n\r\n");
            assert_eq!(check(&raw), Err(reject(400, "bad_host")), "{h:?}");
        }
        // The authority of an absolute-form target is the request's host: checked alike.
        for t in [
            "http://user@ent.fr/x",
            "http://ent.fr@evil.fr/",
            "HTTP://ent.fr:99999/",
        ] {
            let raw = format!("GET {t} HTTP/1.1\r\nHost: ent.fr\r\n\r\n");
            assert_eq!(check(&raw), Err(reject(400, "bad_host")), "{t}");
        }
        assert_eq!(
            absolute_authority(b"HTTPS://Ent.fr:443/x?y"),
            Some(&b"Ent.fr:443"[..])
        );
        assert_eq!(absolute_authority(b"/x"), None);
    }

    #[test]
    fn limits_come_before_syntax() {
        // A huge request line is a 414 whatever else is wrong with the head.
        let raw = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(9000));
        assert_eq!(status(&raw), 414);
    }

    #[test]
    fn default_limits_fit_real_browsers() {
        let mut raw = String::from("GET /ent/portail?x=1 HTTP/1.1\r\nHost: ent.example\r\n");
        raw.push_str(&format!("Cookie: {}\r\n", "a".repeat(8000)));
        raw.push_str("User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n");
        raw.push_str("Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n");
        for i in 0..40 {
            raw.push_str(&format!("X-Custom-{i}: value\r\n"));
        }
        raw.push_str("\r\n");
        assert_eq!(check(&raw), Ok(()));
    }
}
