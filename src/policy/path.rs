//! One canonical path per request (issue #17, class 2).
//!
//! Routes, rate-limit keys, the waiting room's paths, feature gates, cache keys and purges
//! all compare paths byte for byte. A backend does not: it percent-decodes, resolves dot
//! segments, merges slashes, and (Java) strips `;` parameters before it routes. Any
//! spelling ecluse reads differently from the ENT is a way around a policy, so the proxy
//! computes, once and before any phase, the one form every decision uses and the ENT
//! receives ([`canonical_target`]); everything downstream reads that form.
//!
//! The canonical form gives every byte of the path exactly one spelling:
//!
//! | byte (raw or `%XX`)                                     | canonical                    |
//! |---------------------------------------------------------|------------------------------|
//! | unreserved (`A-Z a-z 0-9 - . _ ~`), sub-delims but `;`, `:`, `@` | the raw byte (`%76` → `v`, `%2e` → `.`) |
//! | `/` raw                                                 | `/` (a separator)            |
//! | `%2F`, `%5C`, raw `\`                                   | [`EscapedSlashes`] policy    |
//! | raw `;`                                                 | [`PathParams`] policy        |
//! | `%00`–`%1F`, `%7F`                                      | refused (400)                |
//! | anything else (`%25`, `%3F`, `%23`, `%3B`, `%20`, `{`, non-ASCII…) | `%XX`, upper-case hex |
//!
//! then repeated slashes are merged (option, on by default) and dot segments removed (RFC
//! 3986 §5.2.4, after the decoding, so `%2e%2e` is `..`). Decoding is done once: `%252e`
//! is the three bytes `%2e`, kept as `%252e`, never `.`.
//!
//! Why more than RFC 3986's §6.2.2 (which decodes only unreserved characters): lenient
//! backends decode every escape, so a prefix holding a sub-delim (`/a+b/`) would be
//! dodged by `/a%2Bb/` if `%2B` stayed as it is. Only the bytes whose decoding changes the
//! structure of the URL (`/`, `\`, `?`, `#`, `%`, `;`) or that may not appear raw stay
//! encoded.
//!
//! The query is left as sent (`%3F` in the path never becomes a query, and nothing
//! after `?` changes the path), except that bytes which may not appear raw in a URL
//! (controls, space, non-ASCII) are percent-encoded, as in the path: what is forwarded
//! and logged is always ASCII. A fragment is dropped (it is never sent, pingora
//! drops it too). An absolute-form target (`GET http://host/visio HTTP/1.1`) is reduced to
//! its path and query and its authority returned; `*` (`OPTIONS *`) is passed through;
//! anything else not starting with `/` is refused.

use std::borrow::Cow;

/// What `%2F`, `%5C` and a raw `\` become. Envoy's `path_with_escaped_slashes_action` is
/// the model (its `UNESCAPE_AND_REDIRECT` is left out: a redirect is one more round trip
/// for a spelling no browser makes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// 400 (default): a backend that decodes `%2F` into a separator would read a
    /// different path than the one every policy matched.
    #[default]
    Reject,
    /// Kept encoded (`%2F`, `%5C`; a raw `\` becomes `%5C`): for a backend known to treat
    /// them as data (a file name holding `/`). Unsafe in front of one that decodes them.
    Keep,
    /// Decoded into `/` before slashes are merged and dot segments removed, so
    /// `/a%2F..%2Fvisio` is `/visio` for ecluse as for the backend.
    Decode,
}

/// What a raw `;` in the path becomes (`/visio;jsessionid=1/room`). Java servlet
/// containers strip `;params` from every segment before routing, so `/..;/visio` is
/// `/visio` to Tomcat; other backends read `;` as an ordinary character.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathParams {
    /// 400 (default; Spring Security's firewall does the same): no `;` spelling can mean
    /// one thing to ecluse and another to the backend.
    #[default]
    Reject,
    /// Removed from each segment before dot segments are resolved, as Tomcat does; the
    /// ENT receives the path without them (a `;jsessionid=` in the URL is lost).
    Strip,
    /// An ordinary character (`%3B` and `;` stay distinct): only for a backend that does
    /// not strip path parameters.
    Keep,
}

/// The normalization options (`server.paths`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathPolicy {
    /// Merge `//` into `/` (default true): most backends do, so `//visio` is `/visio`.
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
    pub path_params: PathParams,
    /// The ENT reads paths case-insensitively (IIS, many Windows-hosted or PHP backends):
    /// the canonical path itself is case-folded ([`fold_case`]), so the cache stores one
    /// object per resource, purges reach every spelling and the ENT receives the folded
    /// form. Off (default), the canonical path keeps its case (`/Files/a` and `/files/a`
    /// are two resources of a case-sensitive ENT) and only the policy decisions fold it
    /// ([`policy_path`]).
    pub case_insensitive: bool,
}

impl PathPolicy {
    /// Every policy `server.paths` can express (36): for exhaustive tests and fuzzing.
    pub fn all() -> impl Iterator<Item = PathPolicy> {
        [true, false].into_iter().flat_map(|merge_slashes| {
            [
                EscapedSlashes::Reject,
                EscapedSlashes::Keep,
                EscapedSlashes::Decode,
            ]
            .into_iter()
            .flat_map(move |escaped_slashes| {
                [PathParams::Reject, PathParams::Strip, PathParams::Keep]
                    .into_iter()
                    .flat_map(move |path_params| {
                        [false, true]
                            .into_iter()
                            .map(move |case_insensitive| PathPolicy {
                                merge_slashes,
                                escaped_slashes,
                                path_params,
                                case_insensitive,
                            })
                    })
            })
        })
    }
}

impl Default for PathPolicy {
    fn default() -> Self {
        PathPolicy {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
            path_params: PathParams::Reject,
            case_insensitive: false,
        }
    }
}

/// Why a request-target has no canonical form. Each is answered 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("`%` at byte {at} is not followed by two hex digits")]
    BadEscape { at: usize },
    #[error("a control character (0x{byte:02X}) in the path")]
    Control { byte: u8 },
    #[error(
        "an encoded slash or a backslash in the path (`server.paths.escaped_slashes: reject`)"
    )]
    EscapedSlash,
    #[error("a `;` parameter in the path (`server.paths.path_params: reject`)")]
    PathParam,
    #[error("an overlong UTF-8 encoding in the path (0x{lead:02X} 0x{next:02X})")]
    Overlong { lead: u8, next: u8 },
    #[error("the request target is neither a path starting with `/`, an absolute URL, nor `*`")]
    NotAPath,
    #[error("a double-encoded escape in the path (`%25` then two hex digits, at byte {at})")]
    DoubleEncoded { at: usize },
    #[error("a path segment of only dots and spaces (`...`, `..%20`) or an NTFS stream (`::$DATA`): a Windows backend reads it as `.` or `..`")]
    DotsAndSpaces,
    #[error("an 8.3 short name (`SECRET~1`) or a character Windows reads as ASCII (fullwidth `／`, `＼`, `．`, letters; best-fit `¥`) in the path (`server.paths.case_insensitive: true`)")]
    WindowsName,
}

impl PathError {
    /// The access log's `decision` for the 400.
    pub fn code(&self) -> &'static str {
        match self {
            PathError::BadEscape { .. } => "bad_path_escape",
            PathError::Control { .. } => "bad_path_control",
            PathError::EscapedSlash => "bad_path_escaped_slash",
            PathError::PathParam => "bad_path_param",
            PathError::Overlong { .. } => "bad_path_overlong",
            PathError::NotAPath => "bad_path_form",
            PathError::DoubleEncoded { .. } => "bad_path_double_encoded",
            PathError::DotsAndSpaces => "bad_path_dots_and_spaces",
            PathError::WindowsName => "bad_path_windows_name",
        }
    }
}

/// A request-target in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// Origin-form path and query: `path_and_query` is what every decision reads and the
    /// ENT receives; borrowed when the target was canonical already (the common case
    /// allocates nothing).
    Path {
        path_and_query: Cow<'a, [u8]>,
        /// The authority of an absolute-form target (`http://AUTHORITY/...`).
        authority: Option<&'a [u8]>,
    },
    /// `*` (asterisk-form, `OPTIONS *`): no path, matches no route prefix.
    Asterisk,
}

impl Target<'_> {
    /// Whether the target must be rewritten (it differs from what was received).
    pub fn rewritten(&self) -> bool {
        matches!(
            self,
            Target::Path {
                path_and_query: Cow::Owned(_),
                ..
            } | Target::Path {
                authority: Some(_),
                ..
            }
        )
    }
}

/// The canonical form of a request-target as received on the request line (or HTTP/2
/// `:path`), under `policy`. Pure; never panics on any input.
pub fn canonical_target<'a>(
    target: &'a [u8],
    policy: &PathPolicy,
) -> Result<Target<'a>, PathError> {
    // A fragment is never part of the request-target (RFC 9112 §3.2): dropped, as pingora
    // drops it.
    let target = match target.iter().position(|&b| b == b'#') {
        Some(i) => &target[..i],
        None => target,
    };
    if target == b"*" {
        return Ok(Target::Asterisk);
    }
    let (pq, authority) = match target.first() {
        Some(b'/') => (target, None),
        _ => absolute_form(target).ok_or(PathError::NotAPath)?,
    };
    let (path, query) = match pq.iter().position(|&b| b == b'?') {
        Some(i) => (&pq[..i], Some(&pq[i..])),
        None => (pq, None),
    };
    let path: &[u8] = if path.is_empty() { b"/" } else { path };
    let canon = canonical_path(path, policy)?;
    let raw_query = |b: &u8| *b <= b' ' || *b >= 0x7f;
    let query_clean = query.is_none_or(|q| !q.iter().any(raw_query));
    let path_and_query = match (canon, query) {
        // Origin-form and canonical already: the target as received.
        (Cow::Borrowed(_), _) if authority.is_none() && query_clean => Cow::Borrowed(pq),
        (c, q) => {
            let mut v = c.into_owned();
            for &b in q.unwrap_or_default() {
                if raw_query(&b) {
                    v.extend_from_slice(format!("%{b:02X}").as_bytes());
                } else {
                    v.push(b);
                }
            }
            Cow::Owned(v)
        }
    };
    Ok(Target::Path {
        path_and_query,
        authority,
    })
}

/// `scheme://authority[/path][?query]` with an http(s) scheme → (path and query, authority).
/// The path may be empty (`http://host?q` is `/?q`).
fn absolute_form(target: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let rest =
        strip_prefix_ci(target, b"http://").or_else(|| strip_prefix_ci(target, b"https://"))?;
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let (authority, pq) = rest.split_at(end);
    if authority.is_empty() {
        return None;
    }
    Some((pq, Some(authority)))
}

fn strip_prefix_ci<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

/// A byte that stands for itself in a canonical path: unreserved, sub-delims but `;`,
/// `:` and `@` (RFC 3986 `pchar` less `;` and escapes). `/` is handled apart.
#[inline]
fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
        )
}

#[inline]
fn control(b: u8) -> bool {
    b < 0x20 || b == 0x7F
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_escaped(out: &mut Vec<u8>, b: u8) {
    out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
}

/// Whether `path` is certainly canonical already: only plain bytes and single slashes
/// (no `%`, no `;`, no `\`), and no `.`/`..` segment. Most requests take this exit.
fn already_canonical(path: &[u8], policy: &PathPolicy) -> bool {
    if path.first() != Some(&b'/') {
        return false;
    }
    let mut prev = 0u8;
    for &b in path {
        if b == b'/' {
            if prev == b'/' && policy.merge_slashes {
                return false;
            }
        } else if !plain(b) || (policy.case_insensitive && b.is_ascii_uppercase()) {
            return false;
        }
        prev = b;
    }
    !path
        .split(|&b| b == b'/')
        .any(|seg| seg == b"." || seg == b"..")
}

/// The canonical form of a path (no query, no fragment; starts with `/` or is refused).
/// Borrowed when `path` is canonical already.
pub fn canonical_path<'a>(path: &'a [u8], policy: &PathPolicy) -> Result<Cow<'a, [u8]>, PathError> {
    let c = canonical_path_spelled(path, policy)?;
    if policy.case_insensitive {
        windows_names(&c)?;
    }
    Ok(c)
}

/// In front of a Windows ENT (`case_insensitive`), refuse the names Windows reads as
/// another one: a canonical path is ASCII, but Windows still maps
///
/// - an 8.3 short name (`/SECRET~1/` is `/secretfolder/` to NTFS, and IIS serves it):
///   a segment whose name before its first `.` ends in `~` and digits;
/// - a character it (or the .NET, Java or Python code behind IIS) reads as ASCII: NFKC
///   (`%EF%BC%8F`, U+FF0F, is `/`; U+FF0E `.`, U+FF3C `\`, fullwidth letters) or its
///   best-fit conversion to the ANSI code page (`¥` is `\` in Japanese, `Ā` is `A`)
///   ([`super::windows_lookalikes`]).
///
/// Either would let `/visio` be spelled past its route, so both are a 400 rather than a
/// mapping (no mapping is exact: which short name a folder has depends on the disk).
/// Elsewhere they are only other names (a case-sensitive, non-Windows ENT reads
/// `/ＶＩＳＩＯ/` and `/SECRET~1/` as files of their own) and pass as usual.
fn windows_names(canonical: &[u8]) -> Result<(), PathError> {
    for seg in canonical.split(|&b| b == b'/') {
        let base = seg.split(|&b| b == b'.').next().unwrap_or_default();
        if let Some(t) = base.iter().rposition(|&b| b == b'~') {
            let digits = &base[t + 1..];
            if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) {
                return Err(PathError::WindowsName);
            }
        }
    }
    // The runs of escaped bytes above 0x7F, decoded: each one's characters.
    let mut run = Vec::new();
    let mut i = 0;
    while i <= canonical.len() {
        let byte = match canonical.get(i..i + 3) {
            Some([b'%', h, l]) => match (hex(*h), hex(*l)) {
                (Some(h), Some(l)) if h >= 8 => Some((h << 4) | l),
                _ => None,
            },
            _ => None,
        };
        match byte {
            Some(b) => {
                run.push(b);
                i += 3;
            }
            None => {
                if !run.is_empty() {
                    if String::from_utf8_lossy(&run)
                        .chars()
                        .any(super::windows_lookalikes::is_lookalike)
                    {
                        return Err(PathError::WindowsName);
                    }
                    run.clear();
                }
                i += 1;
            }
        }
    }
    Ok(())
}

/// [`canonical_path`] without the Windows names check.
fn canonical_path_spelled<'a>(
    path: &'a [u8],
    policy: &PathPolicy,
) -> Result<Cow<'a, [u8]>, PathError> {
    if path.first() != Some(&b'/') {
        return Err(PathError::NotAPath);
    }
    if already_canonical(path, policy) {
        return Ok(Cow::Borrowed(path));
    }
    // 1. One spelling per byte.
    let mut out = Vec::with_capacity(path.len() + 8);
    // The previous decoded byte above 0x7F, for the overlong check.
    let mut prev_high: Option<u8> = None;
    let mut i = 0;
    while i < path.len() {
        let raw = path[i];
        let (b, escaped) = if raw == b'%' {
            let v = match (
                path.get(i + 1).copied().and_then(hex),
                path.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => (h << 4) | l,
                _ => return Err(PathError::BadEscape { at: i }),
            };

            i += 3;
            (v, true)
        } else {
            i += 1;
            (raw, false)
        };
        if b >= 0x80 {
            // An overlong UTF-8 form of an ASCII byte (`%C0%AE` is `.` to an old
            // decoder) is refused; other bytes above 0x7F (UTF-8, or Latin-1 file
            // names) are kept encoded.
            if let Some(lead) = prev_high {
                let over = matches!(
                    (lead, b),
                    (0xC0 | 0xC1, 0x80..=0xBF) | (0xE0, 0x80..=0x9F) | (0xF0, 0x80..=0x8F)
                );
                if over {
                    return Err(PathError::Overlong { lead, next: b });
                }
            }
            prev_high = Some(b);
            push_escaped(&mut out, b);
            continue;
        }
        prev_high = None;
        if control(b) {
            return Err(PathError::Control { byte: b });
        }
        match b {
            b'/' if !escaped => out.push(b'/'),
            b'/' | b'\\' => match policy.escaped_slashes {
                EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                EscapedSlashes::Keep => push_escaped(&mut out, b),
                EscapedSlashes::Decode => out.push(b'/'),
            },
            b';' if !escaped => match policy.path_params {
                PathParams::Reject => return Err(PathError::PathParam),
                // Marked, removed below once segments are known.
                PathParams::Strip | PathParams::Keep => out.push(b';'),
            },
            b if plain(b) => out.push(b),
            b => push_escaped(&mut out, b),
        }
    }
    // `%252e` (or `%25%32%65`) is `%2e` once decoded and `.` to a backend that decodes
    // twice (IIS, some frameworks, a second proxy): no single meaning, so refused, as
    // IIS's `allowDoubleEscaping=false` does. Checked on the decoded-once form, so every
    // spelling of it is caught and a canonical path never holds one.
    if let Some(at) = out
        .windows(5)
        .position(|w| w[..3] == *b"%25" && hex(w[3]).is_some() && hex(w[4]).is_some())
    {
        return Err(PathError::DoubleEncoded { at });
    }
    // 2. Path parameters: `;…` up to the end of each segment, before dot segments (so
    // `/..;x/` is `/../`, as Tomcat reads it).
    if policy.path_params == PathParams::Strip {
        let mut kept = Vec::with_capacity(out.len());
        let mut in_param = false;
        for &b in &out {
            match b {
                b'/' => {
                    in_param = false;
                    kept.push(b);
                }
                b';' => in_param = true,
                _ if in_param => {}
                _ => kept.push(b),
            }
        }
        out = kept;
    }
    // 3. Repeated slashes.
    if policy.merge_slashes {
        out.dedup_by(|a, b| *a == b'/' && *b == b'/');
    }
    // 4. Dot segments.
    let out = remove_dot_segments(&out);
    // 5. Case, for an ENT that ignores it: one spelling for the cache and the ENT too.
    if policy.case_insensitive {
        if let Cow::Owned(folded) = fold_case(&out) {
            return Ok(Cow::Owned(folded));
        }
    }
    Ok(Cow::Owned(out))
}

/// The non-ASCII letters whose simple case mapping is an ASCII letter, in their canonical
/// (escaped UTF-8) spelling: Java's `equalsIgnoreCase` and .NET's `OrdinalIgnoreCase`
/// read `/viſio` (U+017F) as `/VISIO`, and a Unicode lower-casing reads the Kelvin sign
/// (U+212A) as `k`; İ (U+0130) and ı (U+0131) are `i` to Java.
const UNICODE_FOLDS: [(&[u8], u8); 4] = [
    (b"%C4%B0", b'i'),
    (b"%C4%B1", b'i'),
    (b"%C5%BF", b's'),
    (b"%E2%84%AA", b'k'),
];

/// A canonical path with ASCII letters lower-cased and [`UNICODE_FOLDS`] replaced by
/// their ASCII letter; escapes stay as they are (`%C3%89` is not `%c3%a9`). Borrowed when
/// nothing changes. Idempotent; the result is still canonical.
pub fn fold_case(path: &[u8]) -> Cow<'_, [u8]> {
    let needs = |i: usize, b: u8| {
        b.is_ascii_uppercase()
            || (b == b'%' && UNICODE_FOLDS.iter().any(|(s, _)| path[i..].starts_with(s)))
    };
    // Escapes' hex digits are upper-case letters too: skip them when looking.
    let mut i = 0;
    let mut first = None;
    while i < path.len() {
        if needs(i, path[i]) {
            first = Some(i);
            break;
        }
        i += if path[i] == b'%' { 3 } else { 1 };
    }
    let Some(start) = first else {
        return Cow::Borrowed(path);
    };
    let mut out = Vec::with_capacity(path.len());
    out.extend_from_slice(&path[..start]);
    let mut i = start;
    while i < path.len() {
        let b = path[i];
        if b == b'%' {
            if let Some((s, l)) = UNICODE_FOLDS.iter().find(|(s, _)| path[i..].starts_with(s)) {
                out.push(*l);
                i += s.len();
            } else {
                let end = (i + 3).min(path.len());
                out.extend_from_slice(&path[i..end]);
                i = end;
            }
        } else {
            out.push(b.to_ascii_lowercase());
            i += 1;
        }
    }
    Cow::Owned(out)
}

/// The form of a canonical path every policy decision compares (route prefixes,
/// `inside_paths`, class `path_prefixes`, the signals' URL key): what the most lenient
/// backend routes on, so no spelling of a protected path gets a less protected route.
///
/// 1. Case folded ([`fold_case`]): IIS and case-insensitive routers serve `/VISIO/room`
///    as `/visio/room`. (A case-sensitive ENT reads `/VISIO/` as another resource, most
///    often a 404; giving it the policy of `/visio/` protects it no less.)
/// 2. Trailing dots and spaces of each segment dropped (`/visio./room`,
///    `/visio%20/room`): Windows ignores them in file and directory names; so is an NTFS
///    stream suffix (a segment holding `:$`, cut at its first `:`:
///    `/visio::$INDEX_ALLOCATION/room` is `/visio/room` to IIS). A segment of
///    only dots and spaces other than `.` and `..` (`...`, `..%20`) has no one reading
///    and is refused.
/// 3. Each declared front controller (`server.paths.front_controllers`, canonical and
///    folded), when followed by `/`, is dropped from the front: a PHP ENT routes
///    `/index.php/visio/room` by its PATH_INFO, `/visio/room`.
///
/// Borrowed (no allocation) when the path is its own key, the common case.
pub fn policy_path<'a>(
    canonical: &'a [u8],
    front_controllers: &[String],
) -> Result<Cow<'a, [u8]>, PathError> {
    let mut key = fold_case(canonical);
    let stream = |seg: &[u8]| seg.windows(2).any(|w| w == b":$");
    if key
        .split(|&b| b == b'/')
        .any(|seg| seg.ends_with(b".") || seg.ends_with(b"%20") || stream(seg))
    {
        let mut out = Vec::with_capacity(key.len());
        for (i, seg) in key.split(|&b| b == b'/').enumerate() {
            if i > 0 {
                out.push(b'/');
            }
            let mut s = seg;
            // An NTFS stream (`visio::$INDEX_ALLOCATION`, `a.php::$DATA`) names the
            // directory or file itself to IIS.
            if stream(s) {
                if let Some(i) = s.iter().position(|&b| b == b':') {
                    s = &s[..i];
                }
            }
            loop {
                if let Some(r) = s.strip_suffix(b".") {
                    s = r;
                } else if let Some(r) = s.strip_suffix(b"%20") {
                    s = r;
                } else {
                    break;
                }
            }
            if s.is_empty() && !seg.is_empty() {
                // `.` and `..` are gone from a canonical path; what is left (`...`,
                // `.%20`) is `.` or `..` to Windows, or a name to others.
                return Err(PathError::DotsAndSpaces);
            }
            out.extend_from_slice(s);
        }
        key = Cow::Owned(out);
    }
    loop {
        let next = front_controllers.iter().find_map(|fc| {
            key.strip_prefix(fc.as_bytes())
                .filter(|rest| rest.first() == Some(&b'/'))
                .map(<[u8]>::len)
        });
        let Some(rest) = next else { break };
        let cut = key.len() - rest;
        key = match key {
            Cow::Borrowed(b) => Cow::Borrowed(&b[cut..]),
            Cow::Owned(v) => Cow::Owned(v[cut..].to_vec()),
        };
    }
    Ok(key)
}

/// A path prefix from the config in the form [`policy_path`] compares: its key, except
/// that front controllers are left in (a prefix naming one means it).
pub fn policy_prefix(canonical: &str) -> Result<String, PathError> {
    let key = policy_path(canonical.as_bytes(), &[])?;
    Ok(String::from_utf8_lossy(&key).into_owned())
}

/// RFC 3986 §5.2.4 on an absolute path (starts with `/`); never goes above the root.
fn remove_dot_segments(path: &[u8]) -> Vec<u8> {
    // Segments after the leading `/`.
    let mut segs: Vec<&[u8]> = Vec::new();
    let mut parts = path[1..].split(|&b| b == b'/').peekable();
    // A path ending in `.` or `..` ends with a slash once they are resolved
    // (`/a/..` → `/`, `/a/.` → `/a/`).
    let mut trailing = false;
    while let Some(seg) = parts.next() {
        let last = parts.peek().is_none();
        match seg {
            b"." => trailing = last,
            b".." => {
                segs.pop();
                trailing = last;
            }
            s => {
                segs.push(s);
                trailing = false;
            }
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for s in &segs {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if trailing || out.is_empty() {
        out.push(b'/');
    }
    out
}

/// The canonical form of a path prefix written in the config or given to the admin API
/// (a route's `path_prefix`, `inside_paths`, a purge prefix): `Ok` only when the prefix
/// starts with `/` and normalizes cleanly. A prefix is normalized as a path, so
/// `/a/../b` is `/b`.
pub fn canonical_prefix(prefix: &str, policy: &PathPolicy) -> Result<String, PathError> {
    let c = canonical_path(prefix.as_bytes(), policy)?;
    // Only ASCII comes out of canonical_path (everything else is `%XX`).
    Ok(String::from_utf8_lossy(&c).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(p: &str) -> Result<String, PathError> {
        canon_with(p, &PathPolicy::default())
    }

    fn canon_with(p: &str, pol: &PathPolicy) -> Result<String, PathError> {
        match canonical_target(p.as_bytes(), pol)? {
            Target::Path { path_and_query, .. } => {
                Ok(String::from_utf8(path_and_query.into_owned()).expect("ascii"))
            }
            Target::Asterisk => Ok("*".into()),
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_upper_cased() {
        assert_eq!(canon("/%76isio").unwrap(), "/visio");
        assert_eq!(canon("/%56%49%53%49%4f").unwrap(), "/VISIO");
        assert_eq!(canon("/a%2bb/%7e").unwrap(), "/a+b/~");
        assert_eq!(
            canon("/a%3fb%23c%25d%3be%20").unwrap(),
            "/a%3Fb%23c%25d%3Be%20"
        );
        assert_eq!(canon("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(canon("/{x}|^").unwrap(), "/%7Bx%7D%7C%5E");
        // Decoded once `%252e` is `%2e`, and `.` to a backend decoding twice: refused.
        assert!(matches!(
            canon("/a/%252e%252e/visio"),
            Err(PathError::DoubleEncoded { .. })
        ));
    }

    #[test]
    fn raw_non_ascii_and_non_utf8_are_encoded() {
        let t = canonical_target(b"/caf\xc3\xa9/\xff", &PathPolicy::default()).unwrap();
        assert_eq!(
            t,
            Target::Path {
                path_and_query: Cow::Owned(b"/caf%C3%A9/%FF".to_vec()),
                authority: None
            }
        );
        assert_eq!(
            canon("/%e9t%e9").unwrap(),
            "/%E9t%E9",
            "Latin-1 file names pass"
        );
    }

    #[test]
    fn dot_segments_and_slashes() {
        assert_eq!(canon("/x/../visio").unwrap(), "/visio");
        assert_eq!(canon("/x/%2e%2e/visio").unwrap(), "/visio");
        assert_eq!(canon("/x/.%2E/visio").unwrap(), "/visio");
        assert_eq!(canon("/./visio/./room/.").unwrap(), "/visio/room/");
        assert_eq!(canon("/../../visio").unwrap(), "/visio");
        assert_eq!(canon("/visio/..").unwrap(), "/");
        assert_eq!(canon("//visio").unwrap(), "/visio");
        assert_eq!(canon("/visio//room///x").unwrap(), "/visio/room/x");
        assert_eq!(canon("/a//../visio").unwrap(), "/visio");
        assert_eq!(canon("/").unwrap(), "/");
        assert_eq!(canon("/...").unwrap(), "/...");
        let keep = PathPolicy {
            merge_slashes: false,
            ..PathPolicy::default()
        };
        assert_eq!(canon_with("//visio", &keep).unwrap(), "//visio");
        assert_eq!(canon_with("/a//../b", &keep).unwrap(), "/a/b");
    }

    #[test]
    fn escaped_slashes_follow_the_policy() {
        for p in [
            "/visio%2Fx",
            "/visio%2fx",
            "/visio%5Cx",
            "/visio\\x",
            "/a%2F..%2Fvisio",
        ] {
            assert_eq!(canon(p), Err(PathError::EscapedSlash), "{p}");
        }
        let keep = PathPolicy {
            escaped_slashes: EscapedSlashes::Keep,
            ..PathPolicy::default()
        };
        assert_eq!(canon_with("/a%2fb%5c\\c", &keep).unwrap(), "/a%2Fb%5C%5Cc");
        assert_eq!(canon_with("/a%2F..%2Fb", &keep).unwrap(), "/a%2F..%2Fb");
        let decode = PathPolicy {
            escaped_slashes: EscapedSlashes::Decode,
            ..PathPolicy::default()
        };
        assert_eq!(canon_with("/a%2F..%2Fvisio", &decode).unwrap(), "/visio");
        assert_eq!(canon_with("/x\\..\\visio", &decode).unwrap(), "/visio");
        assert_eq!(canon_with("/%2F%2Fvisio", &decode).unwrap(), "/visio");
    }

    #[test]
    fn invalid_escapes_controls_and_overlong_are_refused() {
        for p in ["/%252e%252e/visio", "/a/%252F", "/%2541", "/x%25%32%65"] {
            assert!(
                matches!(canon(p), Err(PathError::DoubleEncoded { .. })),
                "{p}: {:?}",
                canon(p)
            );
        }
        // A lone `%25` (a percent sign in a name) is kept, encoded, and is canonical.
        for p in ["/100%25", "/a%25b", "/%25zz"] {
            let c = canon(p).expect(p);
            assert_eq!(canon(&c).expect("canonical"), c, "{p}");
        }
        for p in ["/%zz", "/%4", "/a%", "/%g0", "/%%30"] {
            assert!(matches!(canon(p), Err(PathError::BadEscape { .. })), "{p}");
        }
        for p in ["/a%00b", "/%0a", "/%7f", "/%1F"] {
            assert!(matches!(canon(p), Err(PathError::Control { .. })), "{p}");
        }
        for p in [
            "/%c0%ae%c0%ae/visio",
            "/%C1%81",
            "/%e0%80%ae",
            "/%f0%80%80%ae",
            // Overlong `/`.
            "/x%c0%af..%c0%afvisio",
            "/x/%e0%80%af/visio",
        ] {
            assert!(matches!(canon(p), Err(PathError::Overlong { .. })), "{p}");
        }
    }

    #[test]
    fn path_params_follow_the_policy() {
        assert_eq!(canon("/visio;x=1/room"), Err(PathError::PathParam));
        assert_eq!(canon("/..;/visio"), Err(PathError::PathParam));
        // An encoded `;` is data, never a parameter.
        assert_eq!(canon("/a%3Bb").unwrap(), "/a%3Bb");
        let strip = PathPolicy {
            path_params: PathParams::Strip,
            ..PathPolicy::default()
        };
        assert_eq!(
            canon_with("/visio;x=1/room", &strip).unwrap(),
            "/visio/room"
        );
        assert_eq!(canon_with("/..;/visio", &strip).unwrap(), "/visio");
        assert_eq!(
            canon_with("/;x/visio;jsessionid=A", &strip).unwrap(),
            "/visio"
        );
        assert_eq!(canon_with("/a%3Bb;c", &strip).unwrap(), "/a%3Bb");
        let keep = PathPolicy {
            path_params: PathParams::Keep,
            ..PathPolicy::default()
        };
        assert_eq!(
            canon_with("/visio;x=1/room", &keep).unwrap(),
            "/visio;x=1/room"
        );
    }

    #[test]
    fn a_query_is_forwarded_in_ascii() {
        let p = PathPolicy::default();
        match canonical_target(b"/a?x=caf\xc3\xa9 b\x01", &p) {
            Ok(Target::Path { path_and_query, .. }) => {
                assert_eq!(&*path_and_query, b"/a?x=caf%C3%A9%20b%01")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn target_forms_and_query() {
        assert_eq!(canon("*").unwrap(), "*");
        assert_eq!(canon("visio"), Err(PathError::NotAPath));
        assert_eq!(canon(""), Err(PathError::NotAPath));
        assert_eq!(canon("?x=1"), Err(PathError::NotAPath));
        assert_eq!(canon("ftp://h/visio"), Err(PathError::NotAPath));
        assert_eq!(canon("http:///visio"), Err(PathError::NotAPath));
        match canonical_target(
            b"HTTP://ent.fr:80/x/../%76isio?a=%2F#f",
            &PathPolicy::default(),
        )
        .unwrap()
        {
            Target::Path {
                path_and_query,
                authority,
            } => {
                assert_eq!(&*path_and_query, b"/visio?a=%2F");
                assert_eq!(authority, Some(&b"ent.fr:80"[..]));
            }
            t => panic!("{t:?}"),
        }
        assert_eq!(canon("https://ent.fr?q").unwrap(), "/?q");
        // The query is left as sent; `%3F` in the path stays in the path.
        assert_eq!(
            canon("/%76isio?x=%76&y=../..").unwrap(),
            "/visio?x=%76&y=../.."
        );
        assert_eq!(canon("/a%3F/b?c").unwrap(), "/a%3F/b?c");
        assert_eq!(canon("/visio#frag").unwrap(), "/visio");
    }

    #[test]
    fn canonical_targets_are_borrowed() {
        let t = canonical_target(b"/files/assignments/a.pdf?v=1", &PathPolicy::default()).unwrap();
        assert!(!t.rewritten());
        assert!(canonical_target(b"/files//a", &PathPolicy::default())
            .unwrap()
            .rewritten());
        assert!(
            canonical_target(b"http://h/files/a", &PathPolicy::default())
                .unwrap()
                .rewritten()
        );
    }

    #[test]
    fn the_status_path_is_canonical_under_every_policy() {
        // conn_guard/ and fast_status.rs answer `/.ecluse/queue/status` below pingora without normalizing:
        // that is only the same decision if the path is its own canonical form.
        for pol in PathPolicy::all() {
            let p = crate::proxy::STATUS_PATH.as_bytes();
            assert_eq!(canonical_path(p, &pol).unwrap(), Cow::Borrowed(p));
        }
    }

    fn key(p: &str, fcs: &[&str]) -> Result<String, PathError> {
        let c = canon(p)?;
        let fcs: Vec<String> = fcs.iter().map(|s| s.to_string()).collect();
        policy_path(c.as_bytes(), &fcs).map(|k| String::from_utf8_lossy(&k).into_owned())
    }

    #[test]
    fn every_case_spelling_has_one_policy_path() {
        for p in [
            "/visio/room",
            "/VISIO/room",
            "/Visio/Room",
            "/vIsIo/ROOM",
            "/%56%49%53%49%4F/room",
            "/%56isio/room",
            // Letters only Java's or .NET's case-insensitive comparison reads as ASCII.
            "/vi%C5%BFio/room",
            "/v%C4%B0sio/room",
            "/v%c4%b1sio/room",
        ] {
            assert_eq!(key(p, &[]).unwrap(), "/visio/room", "{p}");
        }
        assert_eq!(key("/files/%E2%84%AA.pdf", &[]).unwrap(), "/files/k.pdf");
        // Escapes are not letters: their hex digits keep their case; other non-ASCII
        // letters are not folded (no backend reads `É` as an ASCII letter).
        assert_eq!(key("/Caf%C3%89", &[]).unwrap(), "/caf%C3%89");
        assert_eq!(key("/a%3Fb", &[]).unwrap(), "/a%3Fb");
        // The canonical path keeps the case unless the ENT is declared case-insensitive.
        assert_eq!(canon("/Files/A.pdf").unwrap(), "/Files/A.pdf");
        let ci = PathPolicy {
            case_insensitive: true,
            ..PathPolicy::default()
        };
        assert_eq!(
            canon_with("/Files/A.pdf?Q=X", &ci).unwrap(),
            "/files/a.pdf?Q=X"
        );
        assert_eq!(
            canon_with("/%46iles/vi%c5%bfio", &ci).unwrap(),
            "/files/visio"
        );
        assert_eq!(
            canon_with("/caf%c3%a9%C3%89", &ci).unwrap(),
            "/caf%C3%A9%C3%89"
        );
        assert!(!canonical_target(b"/files/a", &ci).unwrap().rewritten());
        assert!(canonical_target(b"/Files/a", &ci).unwrap().rewritten());
    }

    #[test]
    fn windows_names_are_refused_in_front_of_a_case_insensitive_ent() {
        let ci = PathPolicy {
            case_insensitive: true,
            ..PathPolicy::default()
        };
        for p in [
            // 8.3 short names, any case, with or without an extension, any number.
            "/SECRET~1/",
            "/secret~1/x",
            "/visio/ROOM~12.HTM",
            "/a/VISIO~1",
            "/%53ECRET%7E1/",
            "/x~0123456",
            // Fullwidth `/`, `.`, `\`, letters; small and other forms that NFKC reads as
            // ASCII; best-fit `\` and `/`.
            "/visio%EF%BC%8Froom",
            "/%EF%BC%8E%EF%BC%8E/visio",
            "/visio%EF%BC%BCroom",
            "/%EF%BD%96isio/room",
            "/%EF%BC%B6%EF%BC%A9%EF%BC%B3%EF%BC%A9%EF%BC%AF/room",
            "/visio%EF%B9%A8room",
            "/visio%E2%80%A4%E2%80%A4",
            "/a%C2%A0b",
            "/%C2%A5..%C2%A5visio",
            "/visio%E2%88%95room",
            "/visio%E2%81%84room",
            "/%C4%80dmin",
            "/%C5%82ogin",
            "/%EF%AC%81les",
            "/%F0%9D%90%AFisio",
            "/visio%E2%84%A2",
        ] {
            assert_eq!(
                canon_with(p, &ci),
                Err(PathError::WindowsName),
                "{p}: {:?}",
                canon_with(p, &ci)
            );
            // A case-sensitive, non-Windows ENT reads them as names of their own.
            assert!(canon(p).is_ok(), "{p}");
        }
        // What is not one: `~` without digits, digits without `~`, a `~1` in the
        // extension only, French letters, quotes and the euro sign of Windows-1252.
        for p in [
            "/~user/",
            "/a~b/",
            "/a~/",
            "/v1/",
            "/a.b~1/",
            "/%C3%A9l%C3%A8ve/",
            "/c%C5%93ur/",
            "/l%E2%80%99%C3%A9cole",
            "/prix-%E2%82%AC",
            "/%E4%B8%AD%E6%96%87",
        ] {
            assert!(canon_with(p, &ci).is_ok(), "{p}: {:?}", canon_with(p, &ci));
        }
    }

    #[test]
    fn trailing_dots_and_spaces_of_a_segment_are_dropped_for_policies() {
        for p in [
            "/visio./room",
            "/visio../room",
            "/visio%20/room",
            "/visio.%20./room",
            "/VISIO%2E/room",
            "/visio/room.",
            "/visio::$INDEX_ALLOCATION/room",
            "/visio:$i30:$index_allocation/room",
            "/visio/room::$DATA",
            "/visio::%24data/room",
        ] {
            let k = key(p, &[]).unwrap();
            assert!(k == "/visio/room" || k == "/visio/room/", "{p}: {k}");
        }
        // A segment only of dots and spaces is `.` or `..` to Windows: refused.
        for p in [
            "/x/.../visio",
            "/x/..%20/visio",
            "/x/.%20/visio",
            "/%20/visio",
            "/...",
        ] {
            assert_eq!(key(p, &[]), Err(PathError::DotsAndSpaces), "{p}");
        }
        // Dots inside a name are left alone.
        assert_eq!(key("/files/a.b.pdf", &[]).unwrap(), "/files/a.b.pdf");
        assert_eq!(key("/.well-known/x", &[]).unwrap(), "/.well-known/x");
        // A `:` without `$` is a name (`Special:Search`); `::$…` alone is refused.
        assert_eq!(
            key("/wiki/Special:Search", &[]).unwrap(),
            "/wiki/special:search"
        );
        assert_eq!(key("/x/::$DATA", &[]), Err(PathError::DotsAndSpaces));
    }

    #[test]
    fn front_controllers_are_skipped_for_policies() {
        let fc = ["/index.php", "/app.php"];
        for p in [
            "/index.php/visio/room",
            "/INDEX.PHP/visio/room",
            "/index.php./visio/room",
            "/index.php/index.php/visio/room",
            "/app.php/index.php/Visio/room",
            "/%69ndex.php//visio/room",
        ] {
            assert_eq!(key(p, &fc).unwrap(), "/visio/room", "{p}");
        }
        // The script itself, a longer name and a path without controller are unchanged.
        assert_eq!(key("/index.php", &fc).unwrap(), "/index.php");
        assert_eq!(key("/index.php?x", &fc).unwrap(), "/index.php?x");
        assert_eq!(key("/index.phpx/visio", &fc).unwrap(), "/index.phpx/visio");
        assert_eq!(
            key("/visio/index.php/x", &fc).unwrap(),
            "/visio/index.php/x"
        );
        assert_eq!(key("/index.php/visio", &[]).unwrap(), "/index.php/visio");
        assert!(matches!(
            policy_path(b"/visio/room", &["/index.php".into()]),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn prefixes() {
        let d = PathPolicy::default();
        assert_eq!(canonical_prefix("/visio", &d).unwrap(), "/visio");
        assert_eq!(canonical_prefix("/files/", &d).unwrap(), "/files/");
        assert_eq!(canonical_prefix("/%76isio", &d).unwrap(), "/visio");
        assert_eq!(canonical_prefix("/a/../b/", &d).unwrap(), "/b/");
        assert!(canonical_prefix("visio", &d).is_err());
    }
}
