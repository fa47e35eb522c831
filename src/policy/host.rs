//! The request's host: one syntax check and one spelling (issue #17).
//!
//! The host picks the route (`match.hosts`), keys the cache and is what the ENT receives
//! (`Host`, `X-Forwarded-Host`), and many ENTs build absolute URLs from it. A spelling
//! ecluse reads differently from the ENT (or from the cache) is a way around a host-based
//! route, or into a shared cache entry. So a `Host` (or `:authority`, or the authority of
//! an absolute-form target) is accepted only in the syntax of RFC 9110 §7.2 / RFC 3986
//! §3.2.2, narrowed to what browsers send, and then spelled once:
//!
//! - a name of letters, digits, `-`, `_` and `.`, at most 253 bytes, or an IPv6 literal
//!   in brackets (hex digits, `:` and `.`); no userinfo (`user@`), no spaces, no
//!   percent-encoding, no other byte (a name with `%`, `,` or `/` is no host a browser
//!   sends, and backends read such values each their own way);
//! - an optional port of 1 to 5 digits, at most 65535 (an empty port, `ent.fr:`, is no
//!   port, RFC 3986 §6.2.3);
//! - spelled lower-case, without the root label's trailing dot (`ENT.fr.` is `ent.fr`)
//!   and without the scheme's default port (`ent.fr:443` over https is `ent.fr`).

/// Why a host value is refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("an empty host")]
    Empty,
    #[error("a byte no host name holds (0x{byte:02X})")]
    BadByte { byte: u8 },
    #[error("a host name longer than 253 bytes")]
    TooLong,
    #[error("a port that is not 1 to 5 digits up to 65535")]
    BadPort,
    #[error("an IPv6 literal that is not hex digits, `:` and `.` in brackets")]
    BadLiteral,
}

/// A host as received, checked: `name` lower-case without trailing dot (an IPv6 literal
/// keeps its brackets), and its port if one was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    pub name: String,
    pub port: Option<u16>,
}

impl Authority {
    /// The one spelling: `name`, then `:port` unless it is `default_port` (80 for http,
    /// 443 for https).
    pub fn spelled(&self, default_port: u16) -> String {
        match self.port {
            Some(p) if p != default_port => format!("{}:{p}", self.name),
            _ => self.name.clone(),
        }
    }
}

/// Check a `Host` value (or `:authority`, or the authority of an absolute-form target).
/// Pure; never panics.
pub fn parse(value: &[u8]) -> Result<Authority, HostError> {
    if value.is_empty() {
        return Err(HostError::Empty);
    }
    let (name, port) = if value[0] == b'[' {
        let close = value
            .iter()
            .position(|&b| b == b']')
            .ok_or(HostError::BadLiteral)?;
        let inner = &value[1..close];
        if inner.is_empty()
            || !inner
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            || !inner.contains(&b':')
        {
            return Err(HostError::BadLiteral);
        }
        let rest = &value[close + 1..];
        let port = match rest.first() {
            None => None,
            Some(b':') => Some(&rest[1..]),
            Some(&byte) => return Err(HostError::BadByte { byte }),
        };
        (&value[..=close], port)
    } else {
        match value.iter().position(|&b| b == b':') {
            Some(i) => (&value[..i], Some(&value[i + 1..])),
            None => (value, None),
        }
    };
    let port = match port {
        None | Some(b"") => None,
        Some(p) => {
            if p.len() > 5 || !p.iter().all(u8::is_ascii_digit) {
                return Err(HostError::BadPort);
            }
            let v: u32 = p.iter().fold(0u32, |a, &d| a * 10 + u32::from(d - b'0'));
            Some(u16::try_from(v).map_err(|_| HostError::BadPort)?)
        }
    };
    if name.first() == Some(&b'[') {
        return Ok(Authority {
            name: String::from_utf8_lossy(name).to_ascii_lowercase(),
            port,
        });
    }
    if let Some(&byte) = name
        .iter()
        .find(|&&b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
    {
        return Err(HostError::BadByte { byte });
    }
    // `ent.fr.` (with the root label) is `ent.fr` to DNS and to every vhost.
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || name.starts_with(b".") || name.windows(2).any(|w| w == b"..") {
        return Err(HostError::Empty);
    }
    if name.len() > 253 {
        return Err(HostError::TooLong);
    }
    Ok(Authority {
        name: String::from_utf8_lossy(name).to_ascii_lowercase(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spelled(v: &str, default_port: u16) -> Result<String, HostError> {
        parse(v.as_bytes()).map(|a| a.spelled(default_port))
    }

    #[test]
    fn one_spelling_per_host() {
        for v in [
            "ent.fr",
            "ENT.FR",
            "Ent.Fr.",
            "ent.fr:80",
            "ent.fr.:80",
            "ENT.fr:",
            "ent.fr:00080",
        ] {
            assert_eq!(spelled(v, 80).as_deref(), Ok("ent.fr"), "{v}");
        }
        assert_eq!(spelled("ent.fr:443", 443).as_deref(), Ok("ent.fr"));
        assert_eq!(spelled("ent.fr:443", 80).as_deref(), Ok("ent.fr:443"));
        assert_eq!(spelled("ENT.fr:8080", 80).as_deref(), Ok("ent.fr:8080"));
        assert_eq!(
            spelled("127.0.0.1:8080", 80).as_deref(),
            Ok("127.0.0.1:8080")
        );
        assert_eq!(spelled("[::1]:80", 80).as_deref(), Ok("[::1]"));
        assert_eq!(
            spelled("[FE80::1]:8443", 443).as_deref(),
            Ok("[fe80::1]:8443")
        );
        assert_eq!(spelled("my_host", 80).as_deref(), Ok("my_host"));
    }

    #[test]
    fn bad_spellings_are_refused() {
        for v in [
            "",
            ":80",
            ".",
            "..",
            "ent..fr",
            ".ent.fr",
            "ent fr",
            " ent.fr",
            "ent.fr ",
            "ent.fr\t",
            "user@ent.fr",
            "user:pw@ent.fr",
            "ent.fr@evil.fr",
            "ent.fr/x",
            "ent.fr\\x",
            "ent%2efr",
            "ent.fr,evil.fr",
            "ent.fr;x",
            "ent.fr:80:80",
            "ent.fr:8o",
            "ent.fr:-1",
            "ent.fr:65536",
            "ent.fr:123456",
            "ent.fr: 80",
            "[::1",
            "[]",
            "[::1]x",
            "[::1]:x",
            "[v1.x]",
            "[::1%25eth0]",
            "é.fr",
            "ent.fr\0",
            "ent.fr\r",
            "ent\x7f.fr",
        ] {
            assert!(
                parse(v.as_bytes()).is_err(),
                "{v:?}: {:?}",
                parse(v.as_bytes())
            );
        }
        assert_eq!(parse(&[b'a'; 254]), Err(HostError::TooLong));
        assert!(parse(&[b'a'; 253]).is_ok());
    }
}
