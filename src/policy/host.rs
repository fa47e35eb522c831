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

/// Which ports a request's host may name: the scheme's default (80 for http, 443 for
/// https), the port the connection reached, the ports ecluse listens on for that scheme,
/// and the public ports ops declare (`server.public_ports`, a balancer on another port).
///
/// Why: the port is part of what the ENT receives (`Host`, `X-Forwarded-Host`), and an
/// ENT that builds absolute links from `Host` writes it into pages. A port no client of
/// this deployment can use (`ent.fr:1234`) is a request for another server (RFC 9110
/// §15.5.20, 421 Misdirected Request); the ports that stay are bounded and part of the
/// cache key, so a page built for one never answers another.
#[derive(Debug, Clone, Copy)]
pub struct Ports<'a> {
    /// The scheme's default port: spelled away.
    pub default: u16,
    /// The local port of the connection, when known.
    pub local: Option<u16>,
    /// ecluse's listeners for this scheme (port 0, picked at bind time, never matches:
    /// `local` covers it).
    pub listening: &'a [std::net::SocketAddr],
    /// The port a trusted proxy's `X-Forwarded-Port` says the client reached.
    pub forwarded: Option<u16>,
    /// `server.public_ports`.
    pub public: &'a [u16],
    /// Any port: ecluse's own warm request (token checked), keyed under the host ops
    /// named (`POST /admin/cache/warm`), whatever listener it came through.
    pub any: bool,
}

impl Ports<'_> {
    /// Whether a host naming `port` is for this deployment.
    pub fn allows(&self, port: u16) -> bool {
        port != 0
            && (self.any
                || port == self.default
                || self.local == Some(port)
                || self.forwarded == Some(port)
                || self.listening.iter().any(|a| a.port() == port)
                || self.public.contains(&port))
    }
}

/// Why a host is not admitted: a bad spelling (400) or a port that is not this
/// deployment's (421).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Bad(HostError),
    #[error("port {port} is not a port of this server")]
    Misdirected { port: u16 },
}

impl Refusal {
    /// The access log's decision.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Bad(_) => "bad_host",
            Refusal::Misdirected { .. } => "misdirected_host",
        }
    }
}

/// Check a host value and spell it once, for `ports`: `Err(Misdirected)` when it names a
/// port that is not this deployment's. Pure; never panics.
pub fn admit(value: &[u8], ports: &Ports) -> Result<String, Refusal> {
    let a = parse(value).map_err(Refusal::Bad)?;
    match a.port {
        Some(port) if !ports.allows(port) => Err(Refusal::Misdirected { port }),
        _ => Ok(a.spelled(ports.default)),
    }
}

/// The port a host names, or the scheme's default (443 for https, else 80) when it
/// names none or cannot be read: what `X-Forwarded-Port` says to the ENT.
pub fn port_of(host: &[u8], https: bool) -> u16 {
    let default = if https { 443 } else { 80 };
    parse(host).ok().and_then(|a| a.port).unwrap_or(default)
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

    #[test]
    fn only_this_deployments_ports_are_admitted() {
        let public = [8443u16];
        let listening: [std::net::SocketAddr; 2] = [
            "127.0.0.1:0".parse().expect("addr"),
            "127.0.0.1:8080".parse().expect("addr"),
        ];
        let ports = Ports {
            default: 80,
            local: Some(18080),
            listening: &listening,
            forwarded: None,
            public: &public,
            any: false,
        };
        let admit = |v: &str| admit(v.as_bytes(), &ports);
        // The default port is spelled away, however it is written.
        for v in [
            "ent.fr",
            "ent.fr:80",
            "ent.fr:080",
            "ent.fr:00080",
            "ent.fr:",
            "ENT.fr.:80",
        ] {
            assert_eq!(admit(v).as_deref(), Ok("ent.fr"), "{v}");
        }
        assert_eq!(admit("[::1]:80").as_deref(), Ok("[::1]"));
        // The ports of this deployment stay, spelled once.
        assert_eq!(admit("ENT.fr:18080").as_deref(), Ok("ent.fr:18080"));
        assert_eq!(admit("ent.fr:08080").as_deref(), Ok("ent.fr:8080"));
        assert_eq!(admit("ent.fr.:8443").as_deref(), Ok("ent.fr:8443"));
        assert_eq!(admit("[::1]:8443").as_deref(), Ok("[::1]:8443"));
        // Any other port is another server's: 421, whatever its spelling.
        for (v, port) in [
            ("ent.fr:1234", 1234),
            ("ent.fr:01234", 1234),
            ("ent.fr:443", 443),
            ("ent.fr:0", 0),
            ("ent.fr:00000", 0),
            ("[::1]:81", 81),
            ("127.0.0.1:65535", 65535),
        ] {
            assert_eq!(admit(v), Err(Refusal::Misdirected { port }), "{v}");
        }
        // A port that is no port stays a bad host (400), not a misdirected one.
        for v in ["ent.fr:65536", "ent.fr:1234x", "ent.fr:+80", "ent.fr::80"] {
            assert!(matches!(admit(v), Err(Refusal::Bad(_))), "{v}");
        }
        // Over https the default is 443, and 80 is another server's.
        let tls = Ports {
            default: 443,
            local: Some(8443),
            listening: &[],
            forwarded: None,
            public: &[],
            any: false,
        };
        assert_eq!(super::admit(b"ent.fr:443", &tls).as_deref(), Ok("ent.fr"));
        assert_eq!(
            super::admit(b"ent.fr:80", &tls),
            Err(Refusal::Misdirected { port: 80 })
        );
        assert_eq!(port_of(b"ent.fr", true), 443);
        assert_eq!(port_of(b"ent.fr", false), 80);
        assert_eq!(port_of(b"ent.fr:8443", false), 8443);
        assert_eq!(port_of(b"[::1]:8080", true), 8080);
    }
}
