//! Waiting-room tickets: a student's place lives in an HMAC-SHA256-signed cookie, so the
//! server keeps O(1) state per room however many students wait.
//!
//! Cookie value: `base64url(payload) "." base64url(mac)`, where the payload is
//! `v1|kid|room|class|state|ticket|issued|seen|bucket` (times in unix seconds) and the MAC
//! covers the payload bytes. Several keys can verify (rotation: add the new key, make it
//! the signing one, drop the old one after the longest ticket lifetime); one signs.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest cookie value we even try to decode (a real one is ~120 bytes).
pub const MAX_COOKIE_LEN: usize = 512;

/// Where the holder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketState {
    /// Holding a place in the queue.
    Waiting,
    /// Admitted: may use the inside of the room.
    Admitted,
}

/// The signed content of a waiting-room cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub room: String,
    /// Priority class index in the room (0 = the default queue).
    pub class: u8,
    pub state: TicketState,
    /// Place in the class's queue (also the session number once admitted).
    pub number: u64,
    /// When the ticket was first issued (unix s).
    pub issued: u64,
    /// Last poll (waiting) or last request (admitted), unix s.
    pub seen: u64,
    /// Activity bucket the admitted session was last counted in.
    pub bucket: u64,
}

/// Why a cookie was not accepted. Every variant means: queue the client fresh.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketError {
    #[error("ticket cookie is malformed")]
    Malformed,
    #[error("ticket is signed with unknown key id `{0}`")]
    UnknownKey(String),
    #[error("ticket signature does not match")]
    BadSignature,
    #[error("ticket is for room `{0}`")]
    OtherRoom(String),
}

/// A signing key with its id.
#[derive(Clone)]
pub struct Key {
    pub id: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({}, <redacted>)", self.id)
    }
}

/// The keys of a room: the first signs, all verify.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<Key>,
    /// Each key's HMAC state, already keyed (`keyed[i]` for `keys[i]`): every ticket
    /// opened or sealed clones one instead of hashing the key's pads again (two SHA-256
    /// blocks of the four a 60-byte ticket costs).
    keyed: Vec<HmacSha256>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").field("keys", &self.keys).finish()
    }
}

impl Keyring {
    /// Parse a key file or variable: one `KID:SECRET` per line (SECRET: at least 32 bytes
    /// of text, e.g. `openssl rand -hex 32`); `#` comments and blank lines ignored. The
    /// first key signs.
    pub fn parse(text: &str) -> Result<Keyring, String> {
        let mut keys: Vec<Key> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((id, secret)) = line.split_once(':') else {
                return Err(format!("line {}: expected `KID:SECRET`", n + 1));
            };
            let id = id.trim();
            if id.is_empty()
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "line {}: key id must be letters, digits, `-` or `_`",
                    n + 1
                ));
            }
            let secret = secret.trim();
            if secret.len() < 32 {
                return Err(format!(
                    "line {}: the secret of key `{id}` is shorter than 32 characters (use `openssl rand -hex 32`)",
                    n + 1
                ));
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(format!("line {}: key id `{id}` is listed twice", n + 1));
            }
            keys.push(Key {
                id: id.to_string(),
                secret: secret.as_bytes().to_vec(),
            });
        }
        if keys.is_empty() {
            return Err("no key: expected at least one `KID:SECRET` line".into());
        }
        let keyed = keys.iter().map(Self::keyed).collect();
        Ok(Keyring { keys, keyed })
    }

    pub fn signing_key_id(&self) -> &str {
        &self.keys[0].id
    }

    /// A 64-bit value derived from the signing key for `label` (HMAC-SHA256): the same on
    /// every node given the same keys, unguessable without them.
    pub fn derive_u64(&self, label: &str) -> u64 {
        let tag = self.mac(0, label.as_bytes()).finalize().into_bytes();
        let mut b = [0u8; 8];
        b.copy_from_slice(&tag[..8]);
        u64::from_le_bytes(b)
    }

    /// One short fingerprint per key for `label` (HMAC-SHA256, 8 bytes in hex): tells
    /// whether state saved under some keys belongs with these, without revealing them.
    pub fn fingerprints(&self, label: &str) -> Vec<String> {
        (0..self.keys.len())
            .map(|i| hex::encode(&self.mac(i, label.as_bytes()).finalize().into_bytes()[..8]))
            .collect()
    }

    fn keyed(key: &Key) -> HmacSha256 {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for HMAC.
        match HmacSha256::new_from_slice(&key.secret) {
            Ok(m) => m,
            Err(_) => unreachable_hmac(),
        }
    }

    /// The MAC of `payload` under key number `i`.
    fn mac(&self, i: usize, payload: &[u8]) -> HmacSha256 {
        let mut m = self.keyed[i].clone();
        m.update(payload);
        m
    }

    /// Encode and sign a ticket with the signing key.
    pub fn seal(&self, t: &Ticket) -> String {
        let mut out = String::with_capacity(160);
        self.seal_into(t, &mut out);
        out
    }

    /// [`Self::seal`], appended to `out`.
    pub fn seal_into(&self, t: &Ticket, out: &mut String) {
        let key = &self.keys[0];
        // `v1|kid|room|class|state|ticket|issued|seen|bucket`
        let mut payload = String::with_capacity(48 + key.id.len() + t.room.len());
        payload.push_str("v1|");
        payload.push_str(&key.id);
        payload.push('|');
        payload.push_str(&t.room);
        payload.push('|');
        let mut digits = itoa::Buffer::new();
        payload.push_str(digits.format(t.class));
        payload.push_str(match t.state {
            TicketState::Waiting => "|w|",
            TicketState::Admitted => "|a|",
        });
        for (i, n) in [t.number, t.issued, t.seen, t.bucket]
            .into_iter()
            .enumerate()
        {
            if i > 0 {
                payload.push('|');
            }
            payload.push_str(digits.format(n));
        }
        let tag = self.mac(0, payload.as_bytes()).finalize().into_bytes();
        B64.encode_string(payload.as_bytes(), out);
        out.push('.');
        B64.encode_string(tag, out);
    }

    /// Verify and decode a cookie value for `room`. Constant-time MAC check; never
    /// panics on any input.
    pub fn open(&self, value: &str, room: &str) -> Result<Ticket, TicketError> {
        if value.len() > MAX_COOKIE_LEN {
            return Err(TicketError::Malformed);
        }
        let (p64, m64) = value.split_once('.').ok_or(TicketError::Malformed)?;
        // Decoded on the stack: at most 3/4 of MAX_COOKIE_LEN bytes each.
        let mut payload = [0u8; MAX_COOKIE_LEN];
        let mut tag = [0u8; MAX_COOKIE_LEN];
        let n = B64
            .decode_slice(p64, &mut payload)
            .map_err(|_| TicketError::Malformed)?;
        let payload = &payload[..n];
        let n = B64
            .decode_slice(m64, &mut tag)
            .map_err(|_| TicketError::Malformed)?;
        let tag = &tag[..n];
        let text = std::str::from_utf8(payload).map_err(|_| TicketError::Malformed)?;
        // `text.split('|')` into exactly nine fields, the bars found with memchr.
        let mut f = [""; 9];
        let mut n = 0;
        let mut start = 0;
        let bars = memchr::memchr_iter(b'|', payload);
        for end in bars.chain(std::iter::once(payload.len())) {
            let slot = f.get_mut(n).ok_or(TicketError::Malformed)?;
            *slot = &text[start..end];
            n += 1;
            start = end + 1;
        }
        if n != 9 || f[0] != "v1" {
            return Err(TicketError::Malformed);
        }
        let i = self
            .keys
            .iter()
            .position(|k| k.id == f[1])
            .ok_or_else(|| TicketError::UnknownKey(f[1].chars().take(32).collect()))?;
        self.mac(i, payload)
            .verify_slice(tag)
            .map_err(|_| TicketError::BadSignature)?;
        if f[2] != room {
            return Err(TicketError::OtherRoom(f[2].chars().take(64).collect()));
        }
        let num = |s: &str| s.parse::<u64>().map_err(|_| TicketError::Malformed);
        Ok(Ticket {
            room: f[2].to_string(),
            class: f[3].parse::<u8>().map_err(|_| TicketError::Malformed)?,
            state: match f[4] {
                "w" => TicketState::Waiting,
                "a" => TicketState::Admitted,
                _ => return Err(TicketError::Malformed),
            },
            number: num(f[5])?,
            issued: num(f[6])?,
            seen: num(f[7])?,
            bucket: num(f[8])?,
        })
    }
}

#[cold]
fn unreachable_hmac() -> ! {
    // HMAC takes keys of any length: this cannot happen.
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ring() -> Keyring {
        Keyring::parse("# rotation\nk2:0123456789abcdef0123456789abcdef\nk1:fedcba9876543210fedcba9876543210\n")
            .expect("keys")
    }

    fn ticket() -> Ticket {
        Ticket {
            room: "ent".into(),
            class: 0,
            state: TicketState::Waiting,
            number: 42,
            issued: 1_700_000_000,
            seen: 1_700_000_010,
            bucket: 0,
        }
    }

    #[test]
    fn round_trip_and_rotation() {
        let r = ring();
        let c = r.seal(&ticket());
        assert_eq!(r.open(&c, "ent"), Ok(ticket()));
        // A ticket signed by the old key still verifies while the old key is listed.
        let old = Keyring::parse("k1:fedcba9876543210fedcba9876543210").expect("k");
        assert_eq!(r.open(&old.seal(&ticket()), "ent"), Ok(ticket()));
        // ...and not once it is dropped.
        let new_only = Keyring::parse("k2:0123456789abcdef0123456789abcdef").expect("k");
        assert_eq!(
            new_only.open(&old.seal(&ticket()), "ent"),
            Err(TicketError::UnknownKey("k1".into()))
        );
    }

    #[test]
    fn sealed_bytes_are_the_documented_format_under_a_fresh_hmac() {
        // The payload written without the formatter, MACed with the cached keyed state,
        // is byte for byte `format!` under an HMAC keyed from the secret.
        let r = ring();
        for t in [
            ticket(),
            Ticket {
                room: "salle-b".into(),
                class: 255,
                state: TicketState::Admitted,
                number: 0,
                issued: u64::MAX,
                seen: 10,
                bucket: 1_234_567_890_123,
            },
        ] {
            let payload = format!(
                "v1|k2|{}|{}|{}|{}|{}|{}|{}",
                t.room,
                t.class,
                if t.state == TicketState::Waiting {
                    "w"
                } else {
                    "a"
                },
                t.number,
                t.issued,
                t.seen,
                t.bucket
            );
            let mut m = HmacSha256::new_from_slice(b"0123456789abcdef0123456789abcdef")
                .expect("any key length");
            m.update(payload.as_bytes());
            let want = format!(
                "{}.{}",
                B64.encode(&payload),
                B64.encode(m.finalize().into_bytes())
            );
            assert_eq!(r.seal(&t), want);
            let mut out = String::from("x=");
            r.seal_into(&t, &mut out);
            assert_eq!(out, format!("x={want}"));
            assert_eq!(r.open(&want, &t.room), Ok(t));
        }
    }

    #[test]
    fn forged_altered_other_room() {
        let r = ring();
        let c = r.seal(&ticket());
        assert_eq!(
            r.open(&c, "autre"),
            Err(TicketError::OtherRoom("ent".into()))
        );
        // Move oneself to the front: change the number, keep the old MAC.
        let (p, m) = c.split_once('.').expect("dot");
        let text = String::from_utf8(B64.decode(p).expect("b64")).expect("utf8");
        let forged = B64.encode(text.replace("|42|", "|1|"));
        assert_eq!(
            r.open(&format!("{forged}.{m}"), "ent"),
            Err(TicketError::BadSignature)
        );
        // Signed with a key we don't know under a known id.
        let evil = Keyring::parse("k2:this-is-not-the-real-secret-0000000").expect("k");
        assert_eq!(
            r.open(&evil.seal(&ticket()), "ent"),
            Err(TicketError::BadSignature)
        );
        for bad in [
            "",
            ".",
            "abc",
            "a.b.c",
            &"x".repeat(10_000),
            "djE.",
            "%%%.%%%",
        ] {
            assert!(r.open(bad, "ent").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keyring_errors() {
        assert!(Keyring::parse("").is_err());
        assert!(Keyring::parse("k1:short").is_err());
        assert!(Keyring::parse("nocolon").is_err());
        assert!(Keyring::parse("k 1:0123456789abcdef0123456789abcdef").is_err());
        assert!(Keyring::parse(
            "k1:0123456789abcdef0123456789abcdef\nk1:0123456789abcdef0123456789abcdef"
        )
        .is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_cookies_never_panic(s in ".{0,600}") {
            let _ = ring().open(&s, "ent");
        }

        #[test]
        fn any_single_byte_change_is_rejected(pos in 0usize..200, byte in 0u8..=255) {
            let r = ring();
            let c = r.seal(&ticket());
            let mut b = c.into_bytes();
            let i = pos % b.len();
            prop_assume!(b[i] != byte);
            b[i] = byte;
            if let Ok(s) = String::from_utf8(b) {
                // Base64 without padding can decode two spellings of the last char to
                // the same bytes; only accept a success if the ticket is unchanged.
                if let Ok(t) = r.open(&s, "ent") {
                    prop_assert_eq!(t, ticket());
                }
            }
        }
    }
}
