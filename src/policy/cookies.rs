//! The one reader of the `Cookie` header, for every decision ecluse takes on cookies:
//! whether a request carries credentials (cache), what identifies them (`cache::auth`),
//! and the value of one cookie (waiting-room tickets, priority classes, rate-limit keys).
//!
//! Read conservatively. Backends disagree on how to split a `Cookie` header: RFC 6265
//! says `; `, but lenient parsers (Python's `http.cookies`, aiohttp's, many frameworks')
//! also split on `,` and whitespace, and accept quotes and spaces around `=`. A request
//! ecluse judged anonymous but that the ENT reads as a pupil's (`Cookie:
//! ecluse_room_ent=T session=bob`, `Cookie: x=1,session=bob`) would be personalised by
//! the ENT and stored for everyone. So a request is anonymous only when every piece of
//! every `Cookie` line is exactly one of ecluse's own cookies, in the exact form ecluse
//! itself writes (`name=` then base64url and `.`): no other name, no case variant, no
//! quotes, no whitespace or comma inside a piece, nothing that is not a `name=value`
//! pair. Everything else counts as credentials. Ambiguity never makes a request
//! anonymous. Empty pieces (`a=1;;`, a blank line) hold nothing any parser could read
//! and are skipped.

/// One `;`-separated piece of a `Cookie` field value, without the optional whitespace
/// around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'h> {
    /// `name=value` in RFC 6265's grammar: a token name, then cookie-octets (optionally
    /// in double quotes, which `value` keeps).
    Pair { name: &'h [u8], value: &'h [u8] },
    /// Anything else: a lenient parser may read it in ways ecluse does not.
    Malformed(&'h [u8]),
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 6265 `cookie-octet`: visible ASCII but `"`, `,`, `;` and `\` (so no whitespace).
fn is_cookie_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}

/// The alphabet of the values ecluse writes in its own cookies (base64url and `.`).
fn is_own_value_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn parse_piece(p: &[u8]) -> Piece<'_> {
    let Some(eq) = p.iter().position(|&b| b == b'=') else {
        return Piece::Malformed(p);
    };
    let (name, value) = (&p[..eq], &p[eq + 1..]);
    let inner = match value {
        [b'"', inner @ .., b'"'] => inner,
        v => v,
    };
    if !name.is_empty()
        && name.iter().all(|&b| is_tchar(b))
        && inner.iter().all(|&b| is_cookie_octet(b))
    {
        Piece::Pair { name, value }
    } else {
        Piece::Malformed(p)
    }
}

/// The non-empty pieces of one `Cookie` field value.
pub fn pieces(v: &[u8]) -> impl Iterator<Item = Piece<'_>> {
    v.split(|&b| b == b';')
        .map(trim_ows)
        .filter(|p| !p.is_empty())
        .map(parse_piece)
}

/// Whether `piece` is one of ecluse's own cookies (`own`: their exact names), in the form
/// ecluse writes them.
fn is_own(piece: &Piece<'_>, own: &[&str]) -> bool {
    match piece {
        Piece::Pair { name, value } => {
            own.iter().any(|o| o.as_bytes() == *name) && value.iter().all(|&b| is_own_value_byte(b))
        }
        Piece::Malformed(_) => false,
    }
}

/// Whether these `Cookie` field values hold nothing but ecluse's own cookies (`own`),
/// each exactly as ecluse writes it. Any other content, however a backend might split it,
/// makes the answer `false`.
pub fn only_own<'h>(values: impl IntoIterator<Item = &'h [u8]>, own: &[&str]) -> bool {
    values
        .into_iter()
        .all(|v| pieces(v).all(|p| is_own(&p, own)))
}

/// What identifies the credentials in these `Cookie` field values: each cookie that is not
/// one of ecluse's own (`name=value` as sent), and a field value holding anything
/// malformed whole (its every byte then counts, ecluse's cookies included: what a lenient
/// backend makes of it cannot be told apart). Empty exactly when [`only_own`].
pub fn credential_items<'h>(
    values: impl IntoIterator<Item = &'h [u8]>,
    own: &[&str],
) -> Vec<&'h [u8]> {
    let mut items = Vec::new();
    for v in values {
        if pieces(v).any(|p| matches!(p, Piece::Malformed(_))) {
            items.push(trim_ows(v));
            continue;
        }
        for p in pieces(v) {
            if let Piece::Pair { name, value } = p {
                if !is_own(&p, own) {
                    // The piece as sent: `name=value` (both are slices of `v`, contiguous).
                    let start = name.as_ptr() as usize - v.as_ptr() as usize;
                    let end = value.as_ptr() as usize - v.as_ptr() as usize + value.len();
                    items.push(&v[start..end]);
                }
            }
        }
    }
    items
}

/// The value of cookie `name` (exact name; first well-formed occurrence; surrounding
/// double quotes removed). A field value that is not visible ASCII is skipped whole, and
/// a malformed piece never yields a value.
pub fn value_of<'h>(values: impl IntoIterator<Item = &'h [u8]>, name: &str) -> Option<&'h str> {
    for v in values {
        if !v.iter().all(|&b| (32..127).contains(&b) || b == b'\t') {
            continue;
        }
        for p in pieces(v) {
            if let Piece::Pair { name: n, value } = p {
                if n == name.as_bytes() {
                    let value = match value {
                        [b'"', inner @ .., b'"'] => inner,
                        v => v,
                    };
                    return std::str::from_utf8(value).ok();
                }
            }
        }
    }
    None
}

/// How a lenient backend splits a `Cookie` field value: on `;`, `,` and whitespace (the
/// reading ecluse must never be more trusting than). For tests and fuzzing.
pub fn lenient_tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b';' || b == b',' || b.is_ascii_whitespace())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: &[&str] = &["ecluse_room_ent"];

    fn anon(v: &[&str]) -> bool {
        only_own(v.iter().map(|s| s.as_bytes()), OWN)
    }

    #[test]
    fn only_ecluse_cookies_in_ecluse_form_are_anonymous() {
        assert!(anon(&[]));
        assert!(anon(&[""]));
        assert!(anon(&[" ; "]), "nothing any parser could read");
        assert!(anon(&["ecluse_room_ent=djF8azE.QUJD-_"]));
        assert!(anon(&[
            "ecluse_room_ent=a; ecluse_room_ent=b",
            "ecluse_room_ent=c"
        ]));
        assert!(anon(&["ecluse_room_ent="]));
        for v in [
            "ecluse_room_ent=abc; JSESSIONID=42",
            // Lenient splits: whitespace, comma, tab.
            "ecluse_room_ent=abc  session=bob",
            "ecluse_room_ent=abc session=bob",
            "x=1,session=bob",
            "ecluse_room_ent=abc,session=bob",
            "ecluse_room_ent=abc\tsession=bob",
            // Not ecluse's form: quotes, `=` inside, spaces around `=`, case variants.
            "ecluse_room_ent=\"abc\"",
            "ecluse_room_ent=\"abc session=bob\"",
            "ecluse_room_ent=abc=session=bob",
            "ecluse_room_ent =abc",
            "ecluse_room_ent= abc",
            "ECLUSE_ROOM_ENT=abc",
            "Ecluse_room_ent=abc",
            // Not pairs at all.
            "session",
            "=bob",
            "ecluse_room_ent",
            "ecluse_room_ent=abc; garbage",
            "\u{7f}",
        ] {
            assert!(!anon(&[v]), "{v:?} read as anonymous");
        }
        // A second `Cookie` line counts as much as the first.
        assert!(!anon(&["ecluse_room_ent=abc", "session=bob"]));
        assert!(!only_own([&b"ecluse_room_ent=\xe9"[..]], OWN));
    }

    #[test]
    fn credential_items_identify_what_is_not_ecluses() {
        let items = |v: &[&'static str]| credential_items(v.iter().map(|s| s.as_bytes()), OWN);
        assert!(items(&["ecluse_room_ent=abc; ;"]).is_empty());
        assert_eq!(
            items(&["ecluse_room_ent=abc; JSESSIONID=42 ; lang=\"fr\""]),
            vec![&b"JSESSIONID=42"[..], b"lang=\"fr\""]
        );
        // Malformed: the whole line, ecluse's cookie included.
        assert_eq!(
            items(&["ecluse_room_ent=abc session=bob", "lang=fr"]),
            vec![&b"ecluse_room_ent=abc session=bob"[..], b"lang=fr"]
        );
        // Every non-anonymous input has items (so its grants differ from anonymous ones).
        for v in [
            "ECLUSE_ROOM_ENT=abc",
            "ecluse_room_ent=\"a\"",
            "x",
            "a=1,b=2",
        ] {
            assert!(!items(&[v]).is_empty(), "{v:?}");
        }
    }

    #[test]
    fn value_of_reads_well_formed_pairs_only() {
        let v = |vals: &[&'static [u8]], n: &str| value_of(vals.iter().copied(), n);
        assert_eq!(
            v(&[b"a=1; ENTSESSION=abc ; b=\"q\"", b"c=3"], "ENTSESSION"),
            Some("abc")
        );
        assert_eq!(v(&[b"a=1; b=\"q\""], "b"), Some("q"));
        assert_eq!(v(&[b"a=1", b"c=3"], "c"), Some("3"));
        assert_eq!(v(&[b";;=;==; x"], "x"), None);
        assert_eq!(v(&[b"t=\xe9; a=1", b"a=2"], "a"), Some("2"));
        // A piece a lenient parser splits differently gives no value at all.
        assert_eq!(v(&[b"room=T1 session=bob"], "room"), None);
        assert_eq!(v(&[b"x=1,room=T1"], "room"), None);
        assert_eq!(v(&[b"room =T1"], "room"), None);
        assert_eq!(v(&[b"junk here; room=T1"], "room"), Some("T1"));
    }

    #[test]
    fn lenient_tokens_split_like_python() {
        let t: Vec<&[u8]> = lenient_tokens(b"a=1; b=2,c=3\td=4  e").collect();
        assert_eq!(t, vec![&b"a=1"[..], b"b=2", b"c=3", b"d=4", b"e"]);
    }
}
